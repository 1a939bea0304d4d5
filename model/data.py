"""tf.data input: TFRecord shards written by ingest -> augmented, batched tensors.

    files -> interleave(TFRecordDataset) -> shuffle -> batch -> parse_example -> decode
          -> augment (vectorised, per batch) -> prefetch

Parsing, decoding and augmentation run on whole batches, so per-example Python/graph
overhead stays out of the way of the training step.
"""

from __future__ import annotations

import json
import math

import numpy as np
import tensorflow as tf

from schemas import FEATURES, LABELS, NUM_CLASSES, SCHEMA_VERSION

AUTOTUNE = tf.data.AUTOTUNE


def feature_spec() -> dict:
    dtypes = {"bytes": tf.string, "int64": tf.int64}
    return {name: tf.io.FixedLenFeature([], dtypes[kind]) for name, (kind, _) in FEATURES.items()}


def read_stats(data_dir: str) -> dict:
    with tf.io.gfile.GFile(f"{data_dir.rstrip('/')}/stats.json") as f:
        stats = json.load(f)
    if stats.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{data_dir} was written with schema version {stats.get('schema_version')}, this code reads {SCHEMA_VERSION}"
        )
    if tuple(stats.get("labels", ())) != LABELS:
        raise ValueError(f"{data_dir} has labels {stats.get('labels')}, this code expects {list(LABELS)}")
    return stats


def split_files(data_dir: str, split: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(f"{data_dir.rstrip('/')}/tfrecords/{split}-*-of-*.tfrecord"))
    if not files:
        raise FileNotFoundError(f"no {split} TFRecords under {data_dir}/tfrecords")
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


# Augmentation presets: "strong" for training from scratch, "light" for fine-tuning.
AUGMENT_PRESETS = {
    "strong": dict(max_rotation=12.0, max_shift=0.1, max_zoom=0.12, brightness=25.0, contrast=0.25,
                   erase_prob=0.5, erase_max_area=0.25),
    "light": dict(max_rotation=8.0, max_shift=0.08, max_zoom=0.08, brightness=15.0, contrast=0.15,
                  erase_prob=0.25, erase_max_area=0.12),
}


def augment(pixels: tf.Tensor, seed: tf.Tensor, max_rotation: float = 12.0, max_shift: float = 0.1,
            max_zoom: float = 0.12, brightness: float = 25.0, contrast: float = 0.25, erase_prob: float = 0.5,
            erase_max_area: float = 0.25) -> tf.Tensor:
    """Random flip, rotation, shift, zoom, brightness/contrast and erasing, per image.

    pixels: (B, S, S, 1) float in [0, 255]. Stateless: the same seed gives the same batch.
    """
    batch = tf.shape(pixels)[0]
    size = tf.cast(tf.shape(pixels)[1], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 8)

    def uniform(i, lo, hi, shape=None):
        return tf.random.stateless_uniform(shape or [batch], seeds[i], lo, hi)

    flip = uniform(0, 0.0, 1.0) < 0.5
    pixels = tf.where(flip[:, None, None, None], tf.reverse(pixels, axis=[2]), pixels)

    # One affine transform per image: rotate and zoom about the centre, then shift.
    angle = uniform(1, -max_rotation, max_rotation) * (math.pi / 180.0)
    scale = uniform(2, 1.0 - max_zoom, 1.0 + max_zoom)
    tx = uniform(3, -max_shift, max_shift) * size
    ty = uniform(4, -max_shift, max_shift) * size
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    c = (size - 1.0) / 2.0
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2).
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = c - a0 * c - a1 * c - tx
    b2 = c - b0 * c - b1 * c - ty
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    pixels = tf.raw_ops.ImageProjectiveTransformV3(
        images=pixels, transforms=transforms, output_shape=tf.shape(pixels)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
    )

    # Brightness and contrast jitter.
    mean = tf.reduce_mean(pixels, axis=[1, 2, 3], keepdims=True)
    gain = uniform(5, 1.0 - contrast, 1.0 + contrast)[:, None, None, None]
    offset = uniform(6, -brightness, brightness)[:, None, None, None]
    pixels = tf.clip_by_value((pixels - mean) * gain + mean + offset, 0.0, 255.0)

    # Random erasing: one rectangle of 2-25% of the area, filled with noise, half the time.
    erase_seeds = tf.random.experimental.stateless_split(seeds[7], 5)
    e = lambda i, lo, hi: tf.random.stateless_uniform([batch], erase_seeds[i], lo, hi)  # noqa: E731
    area = e(0, 0.02, erase_max_area) * size * size
    aspect = tf.exp(e(1, math.log(0.3), math.log(3.3)))
    h = tf.minimum(tf.sqrt(area * aspect), size)
    w = tf.minimum(tf.sqrt(area / aspect), size)
    y0 = e(2, 0.0, 1.0) * (size - h)
    x0 = e(3, 0.0, 1.0) * (size - w)
    active = e(4, 0.0, 1.0) < erase_prob
    grid = tf.range(size)
    in_y = (grid[None, :] >= y0[:, None]) & (grid[None, :] < (y0 + h)[:, None])
    in_x = (grid[None, :] >= x0[:, None]) & (grid[None, :] < (x0 + w)[:, None])
    mask = in_y[:, :, None] & in_x[:, None, :] & active[:, None, None]
    noise = tf.random.stateless_uniform(tf.shape(pixels), seeds[6] + 1, 0.0, 255.0)
    return tf.where(mask[..., None], noise, pixels)


# --------------------------------------------------------------------------- datasets


def train_dataset(files: list[str], image_size: int, batch_size: int, seed: int = 0,
                  input_context: tf.distribute.InputContext | None = None, augment_images: bool = True,
                  augment_preset: str = "strong",
                  shuffle_buffer: int = 16384) -> tf.data.Dataset:
    """An endless, shuffled, augmented dataset of (pixels, label) batches for one input pipeline.

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
    if augment_images:
        counter = tf.data.Dataset.counter()
        ds = tf.data.Dataset.zip((ds, counter)).map(
            lambda b, i: (augment(b["pixels"], tf.stack([tf.cast(seed, tf.int64), i]), **AUGMENT_PRESETS[augment_preset]),
                          b["label"]),
            num_parallel_calls=AUTOTUNE,
        )
    else:
        ds = ds.map(lambda b: (b["pixels"], b["label"]), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def eval_dataset(files: list[str], image_size: int, batch_size: int = 256) -> tf.data.Dataset:
    """Every record once, in file order: dicts with pixels, label, uri, sha256."""
    ds = tf.data.TFRecordDataset(files).batch(batch_size)
    return ds.map(lambda s: decode_batch(s, image_size), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def load_arrays(files: list[str], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole (small) split as numpy arrays: (N, S, S, 1) float32 pixels and int labels."""
    xs, ys = [], []
    for batch in eval_dataset(files, image_size):
        xs.append(batch["pixels"].numpy())
        ys.append(batch["label"].numpy())
    if not xs:
        return np.zeros((0, image_size, image_size, 1), np.float32), np.zeros((0,), np.int32)
    return np.concatenate(xs), np.concatenate(ys)


def class_weights(counts: dict[str, int], power: float = 0.5) -> np.ndarray:
    """Per-class loss weights (N / (K n_c)) ** power, normalised to mean 1 over examples."""
    n = np.array([max(1, counts.get(label, 0)) for label in LABELS], np.float64)
    w = (n.sum() / (NUM_CLASSES * n)) ** power
    w *= n.sum() / (w * n).sum()
    return w.astype(np.float32)
