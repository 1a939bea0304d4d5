"""tf.data input: TFRecord shards written by ingest -> augmented, batched tensors.

    files -> interleave(TFRecordDataset) -> shuffle -> batch -> parse_example -> decode
          -> augment (vectorised, per batch) -> prefetch

Parsing, decoding and augmentation run on whole batches, so per-example Python/graph
overhead stays out of the way of the training step.
"""

from __future__ import annotations


import tensorflow as tf

from model.errors import UsageError
from model import augment as augmentation
from model.files import read_json_object
from schemas import FEATURES, LABELS, SCHEMA_VERSION

AUTOTUNE = tf.data.AUTOTUNE


def feature_spec() -> dict:
    dtypes = {"bytes": tf.string, "int64": tf.int64}
    return {name: tf.io.FixedLenFeature([], dtypes[kind]) for name, (kind, _) in FEATURES.items()}


def read_stats(data_dir: str) -> dict:
    """DATA/stats.json of an ingest output, after the schema and label checks; UsageError (one line)
    when --data is not an ingest output this code can read."""
    root = data_dir.rstrip("/")
    path = f"{root}/stats.json"
    if not tf.io.gfile.exists(path):
        if not tf.io.gfile.exists(root):
            raise UsageError(f"--data {data_dir} does not exist")
        raise UsageError(f"--data {data_dir} has no stats.json: not an emotion ingest output (run emotion ingest "
                         f"and pass its --output)")
    try:
        stats = read_json_object(path, "an ingest summary")
    except ValueError as exc:
        raise UsageError(f"{exc}: re-run emotion ingest") from None
    if stats.get("schema_version") != SCHEMA_VERSION:
        raise UsageError(
            f"--data {data_dir} was written with schema version {stats.get('schema_version')}, this code reads "
            f"{SCHEMA_VERSION}: re-run emotion ingest with this version"
        )
    if tuple(stats.get("labels", ())) != LABELS:
        raise UsageError(f"--data {data_dir} has labels {stats.get('labels')}, this code expects {list(LABELS)}: "
                         f"re-run emotion ingest with this version")
    for key, kind in (("image_size", int), ("written", dict), ("written_per_split", dict)):
        if not isinstance(stats.get(key), kind):
            raise UsageError(f"{path} has no valid {key}: not an emotion ingest summary; re-run emotion ingest")
    return stats


def split_files(data_dir: str, split: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(f"{data_dir.rstrip('/')}/tfrecords/{split}-*-of-*.tfrecord"))
    if not files:
        raise UsageError(f"no {split} TFRecords under {data_dir.rstrip('/')}/tfrecords: re-run emotion ingest")
    return files


def decode_batch(serialized: tf.Tensor, image_size: int) -> dict:
    parsed = tf.io.parse_example(serialized, feature_spec())
    pixels = tf.io.decode_raw(parsed["image/raw"], tf.uint8)
    pixels = tf.reshape(pixels, [-1, image_size, image_size, 1])
    return {
        "pixels": tf.cast(pixels, tf.float32),
        "label": tf.cast(parsed["label/index"], tf.int32),
        "uri": parsed["source/uri"],
        "sha256": parsed["image/sha256"],
    }


# --------------------------------------------------------------------------- augmentation


def augment_batch(pixels: tf.Tensor, seed: tf.Tensor, preset: str) -> tf.Tensor:
    """model.augment.augment on one batch, its random draws taken from a stateless seed."""
    batch = tf.shape(pixels)[0]
    draws_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    draws = tf.random.stateless_uniform([batch, augmentation.NUM_DRAWS], draws_seed)
    noise = tf.random.stateless_uniform(tf.shape(pixels), noise_seed, 0.0, 255.0)
    return augmentation.augment(pixels, draws, noise, **augmentation.PRESETS[preset])


# --------------------------------------------------------------------------- datasets


def train_dataset(files: list[str], image_size: int, batch_size: int, seed: int = 0,
                  input_context: tf.distribute.InputContext | None = None, augment_images: bool = True,
                  augment_preset: str = "strong", targets=None,
                  shuffle_buffer: int = 16384) -> tf.data.Dataset:
    """An endless, shuffled, augmented dataset of (pixels, label) batches for one input pipeline;
    (pixels, label, teacher log-probabilities) when `targets` (a `distill.TargetLookup`) is given.

    With several input pipelines (multi-worker), files are sharded when there are enough
    of them, otherwise records are.
    """
    ds = tf.data.Dataset.from_tensor_slices(files)
    if input_context and input_context.num_input_pipelines > 1:
        if len(files) >= input_context.num_input_pipelines:
            ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
            record_shard = False
        else:
            record_shard = True
    else:
        record_shard = False
    ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), 8)),
                       num_parallel_calls=AUTOTUNE, deterministic=False)
    if record_shard:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda s: decode_batch(s, image_size), num_parallel_calls=AUTOTUNE)

    def to_example(batch, i):
        pixels = batch["pixels"]
        if augment_images:
            pixels = augment_batch(pixels, tf.stack([tf.cast(seed, tf.int64), i]), augment_preset)
        if targets is None:
            return pixels, batch["label"]
        return pixels, batch["label"], targets(batch["sha256"])

    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter())).map(to_example, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def eval_dataset(files: list[str], image_size: int, batch_size: int = 256) -> tf.data.Dataset:
    """Every record once, in file order: dicts with pixels, label, uri, sha256."""
    ds = tf.data.TFRecordDataset(files).batch(batch_size)
    return ds.map(lambda s: decode_batch(s, image_size), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)
