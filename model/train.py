"""Training: a tf.distribute job with a custom loop (strategy.run), checkpoints, resume, export.

    emotion train --data /tmp/fer2013-ingest --model-dir /tmp/run --epochs 30

Strategies: one-device, mirrored (all local GPUs, or --cpu-replicas N logical CPUs),
multi-worker (MultiWorkerMirroredStrategy from TF_CONFIG). Keras 3's model.fit fails
under MultiWorkerMirroredStrategy, so the loop is written out: it is the same code for
every strategy.

    DIR/checkpoints/      every epoch (and every --checkpoint-every steps, and on SIGTERM);
                          a restarted job resumes from the latest one automatically
    DIR/logs/             TensorBoard
    DIR/history.csv       one row per epoch
    DIR/plots/training_curves.png
    DIR/best.weights.h5   weights of the epoch with the best val macro-F1
    DIR/export/, DIR/metadata.json   (model.export)
    DIR/_train.json       the manifest of what training wrote (model/ownership.py): a user's
                          files under these names stop the run (--overwrite replaces them);
                          DIR/_train.lock keeps a second training out while one runs

The parts: model/config.py (TrainConfig: defaults < recipe < flags, validated once), this driver
(strategy, data checks, the run), model/train_loop.py (sizes, model state, the distributed step, the
epochs: the tf.distribute runner of model/trainer.py's interface, which the portable trainer runs too),
model/train_io.py (what training writes; a refused write is one line, exit 2) and
model/train_export.py (the best weights evaluated and exported with metadata.json).
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from model import config
from model.errors import UsageError
from model.train_loop import plural

log = logging.getLogger("emotion")


def build_parser():
    """`emotion train`'s flags (model/config.py: they hold no defaults; TrainConfig does)."""
    return config.build_parser()


def parse_args(argv) -> config.TrainConfig:
    """The run's TrainConfig: defaults, then the --config recipe, then the flags given; validated."""
    return config.from_argv(argv)


# =========================================================================== strategy


def make_strategy(cfg: config.TrainConfig) -> tf.distribute.Strategy:
    """Picks the distribution strategy; must run before TensorFlow touches any device."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    name = cfg.strategy
    if name == "auto":
        if len(tf_config.get("cluster", {}).get("worker", [])) + len(tf_config.get("cluster", {}).get("chief", [])) > 1:
            name = "multi-worker"
        elif tf.config.list_physical_devices("GPU") or cfg.cpu_replicas > 1:
            name = "mirrored"
        else:
            name = "one-device"
    if cfg.cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cfg.cpu_replicas)
    gpus = tf.config.list_physical_devices("GPU")
    if name == "multi-worker":
        if not tf_config:
            raise UsageError("--strategy multi-worker needs TF_CONFIG (cluster and task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")


def strategy_name(strategy) -> str:
    name = type(strategy).__name__
    return "MultiWorkerMirroredStrategy" if name == "CollectiveAllReduceStrategy" else name


def is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_dir(model_dir: str, strategy, name: str) -> str:
    """Where this worker writes `name`: the real path on the chief, a scratch path elsewhere."""
    if is_chief(strategy):
        return f"{model_dir}/{name}"
    resolver = strategy.cluster_resolver
    return f"{model_dir}/.workers/{resolver.task_type}-{resolver.task_id}/{name}"


def cpu_has_bfloat16() -> bool:
    """AVX512_BF16 or AMX: the CPU computes bfloat16 natively (Linux /proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_policy(mode: str, has_gpu: bool) -> str:
    """The Keras dtype policy for --mixed-precision: auto picks what the hardware runs fastest."""
    if mode == "off":
        return "float32"
    if has_gpu:
        return "mixed_float16"
    if mode == "on" or cpu_has_bfloat16():
        return "mixed_bfloat16"
    return "float32"


# =========================================================================== data checks


def check_data(data_dir: str) -> dict:
    """stats.json of --data, after the checks that need neither a model nor a device: an ingest output
    with train TFRecords, training images of at least two classes, and a val split (where there is one)
    large enough to choose epochs on. A UsageError (one line) names what is wrong otherwise."""
    from model import data
    from schemas import eval_split_too_small, min_eval_images

    stats = data.read_stats(data_dir)
    _check_stats(data_dir, stats)
    n_train = int(stats["written_per_split"].get("train", 0))
    n_val = int(stats["written_per_split"].get("val", 0))
    if n_train <= 0:
        raise UsageError(f"--data {data_dir} holds no training images (its stats.json counts none in train): "
                         f"re-run emotion ingest on an input with training images")
    data.split_files(data_dir, "train")
    classes = [label for label, n in stats["written"].get("train", {}).items() if int(n) > 0]
    if len(classes) < 2:
        raise UsageError(f"--data {data_dir} has training images of {len(classes)} class"
                         f"{'' if len(classes) == 1 else 'es'} ({', '.join(classes) or 'none'}); a classifier needs "
                         f"at least 2: check the class folders given to emotion ingest")
    if n_val and eval_split_too_small(n_val, n_train):
        raise UsageError(
            f"--data {data_dir}: val holds {plural(n_val, 'image')}, fewer than the {min_eval_images(n_train):,} "
            f"needed to choose epochs next to {plural(n_train, 'training image')}: re-run emotion ingest (it carves "
            f"a fresh val from train when val is this small) or pass it a larger --val-fraction")
    return stats


def _check_stats(data_dir: str, stats: dict) -> None:
    """stats.json is read back from disk: its split and class names must be this code's, its counts
    numbers, and its image_size the size of the images in the TFRecords (one record read, no device)."""
    from schemas import LABELS, SPLITS

    path = f"{data_dir.rstrip('/')}/stats.json"
    per_split, written = stats["written_per_split"], stats["written"]
    bad = [str(k) for k in [*per_split, *written] if k not in SPLITS]
    bad += [str(k) for v in written.values() if isinstance(v, dict) for k in v if k not in LABELS]
    numbers = [*per_split.values(), *(n for v in written.values() if isinstance(v, dict) for n in v.values())]
    if bad or not all(isinstance(v, dict) for v in written.values()) or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise UsageError(f"{path} has split or class names this code does not know ({', '.join(bad[:3]) or 'counts'}) "
                         f"or counts that are not numbers: a hand-edited summary; re-run emotion ingest")
    files = tf.io.gfile.glob(f"{data_dir.rstrip('/')}/tfrecords/train-*-of-*.tfrecord")
    first = next((f for f in sorted(files) if tf.io.gfile.stat(f).length > 0), None)
    if first is None:
        return
    try:
        with tf.io.gfile.GFile(first, "rb") as f:
            header = f.read(12)
            length = int.from_bytes(header[:8], "little")
            if len(header) < 12 or length > 64 << 20:
                raise ValueError("a damaged record header")
            feature = tf.train.Example.FromString(f.read(length)).features.feature
        size = (feature["image/height"].int64_list.value[0], feature["image/width"].int64_list.value[0])
    except Exception as exc:
        raise UsageError(f"{first} is not a readable TFRecord of emotion ingest ({str(exc)[:80]}): a damaged shard; "
                         f"re-run emotion ingest") from None
    if size != (stats["image_size"], stats["image_size"]):
        raise UsageError(f"{path} says image_size {stats['image_size']}, its TFRecords hold {size[0]}x{size[1]} "
                         f"images: a hand-edited summary; re-run emotion ingest")


# =========================================================================== main


def run(argv=None) -> dict:
    """Trains into --model-dir, which this run owns while it runs (model/ownership.TrainingClaim:
    one training at a time, a user's files refused); returns the exported metadata."""
    from model import ownership

    cfg = parse_args(argv)
    stats = check_data(cfg.data)  # cheap, and touches no device
    if cfg.import_run:
        check_import_run(cfg, stats)  # before anything is copied or claimed
    with ownership.TrainingClaim(cfg.model_dir, overwrite=cfg.overwrite, chief=ownership.is_chief_task()) as claim:
        try:
            return _train(cfg, stats, claim)
        except tf.errors.DataLossError as exc:
            detail = (str(exc).strip().splitlines() or ["corrupted record"])[0][:160]
            raise UsageError(f"--data {cfg.data} holds a damaged TFRecord shard ({detail}): re-run emotion ingest") \
                from None


def _train(cfg: config.TrainConfig, stats: dict, claim) -> dict:
    """The driver: strategy, plan, state, the loop, then the export on the chief."""
    strategy = make_strategy(cfg)  # before anything else touches TensorFlow's devices

    from model import train_export, train_io, train_loop

    model_dir = cfg.model_dir.rstrip("/")
    chief = is_chief(strategy)
    policy = precision_policy(cfg.mixed_precision, bool(tf.config.list_physical_devices("GPU")))
    train_loop.RUNNER.prepare(cfg, policy)
    plan = train_loop.plan_run(cfg, stats, strategy, policy)
    log.info("train: %s, %d replica(s), global batch %d, %d steps/epoch x %d epochs, arch %s%s",
             strategy_name(strategy), plan.replicas, plan.global_batch, plan.steps_per_epoch, cfg.epochs, cfg.arch,
             f", {policy}" if policy != "float32" else "")

    ckpt_dir = worker_dir(model_dir, strategy, "checkpoints")
    state = train_loop.build_state(cfg, plan, strategy, ckpt_dir)
    train_loop.restore_or_init(state, cfg, model_dir)
    # An imported run was distilled where it trained (its run.json says from what): nothing to compute here.
    teacher, lookup = (None, None) if cfg.import_run else \
        train_loop.teacher_targets(cfg, model_dir, plan.image_size, stats)
    loop = train_loop.Loop(cfg, plan, strategy, state, stats, model_dir, chief, ckpt_dir, lookup)

    history = []  # an earlier run's epochs, kept when this one resumes
    if chief and not cfg.fresh and "history.csv" not in claim.replaced:
        history = train_io.read_history(loop.history_path)
    imported = None
    if cfg.import_run:  # weights trained elsewhere: nothing to train, evaluate and export them
        imported, history = train_io.import_run(cfg.import_run, loop.best_weights, loop.history_path)
        log.info("train: imported %s (%s, %d epochs); evaluating and exporting it",
                 cfg.import_run, imported.get("device", "?"), len(history))
        teacher = train_io.imported_distillation(cfg, imported)
    previous = previous_export(model_dir, claim)  # read before the export replaces it
    result = loop.run(history)
    if not chief:
        return {}
    return train_export.export_best(cfg, plan, stats, strategy_name(strategy), result, imported, teacher, previous)


def previous_export(model_dir: str, claim) -> dict | None:
    """The metadata.json of the export this run will replace, when it is training's own and readable
    (what it records about how its weights were trained and how often test was scored carries over)."""
    from model.artifact import ModelError, read_metadata

    if "metadata.json" in claim.replaced:  # a user's file, made this run's by --overwrite: not a record
        return None
    try:
        return read_metadata(model_dir)
    except (ModelError, FileNotFoundError):
        return None


# =========================================================================== --import-run

# What a portable run's recipe must agree on with the one given here: everything that shapes the weights.
# Not compared: where a run reads and writes, how it is resumed or checkpointed, and epochs (--import-run
# sets it to 0; the recipe's own value is compared instead).
_NOT_COMPARED = ("epochs", "import_run", "init_weights", "fresh", "resume", "checkpoint_every", "strategy",
                 "cpu_replicas", "steps_per_epoch", "recipe")


def check_import_run(cfg: config.TrainConfig, stats: dict) -> None:
    """--import-run's run.json (untrusted) against --data and --config: the run must have been trained on
    this data (same fingerprint) under these recipe values; otherwise a UsageError names the first
    differences."""
    run_dir = cfg.import_run.rstrip("/")
    path = f"{run_dir}/run.json"
    if not tf.io.gfile.exists(path):
        raise UsageError(f"--import-run {run_dir} has no run.json: not a model/train_portable.py output")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            run = json.loads(f.read())
    except (ValueError, UnicodeDecodeError):
        run = None
    if not isinstance(run, dict) or not isinstance(run.get("recipe", {}), dict):
        raise UsageError(f"{path} is not a run record model/train_portable.py wrote: train the run again")
    fingerprint = stats.get("fingerprint")
    if run.get("data_fingerprint") != fingerprint:
        raise UsageError(f"--import-run {run_dir} was trained on data {str(run.get('data_fingerprint'))[:40]}, "
                         f"--data {cfg.data} is {str(fingerprint)[:40]}: import it with the ingest output it was "
                         f"trained on")
    differences = recipe_differences(cfg, run.get("recipe") or {})
    if differences:
        shown = ", ".join(f"{k} {theirs!r} there, {ours!r} here" for k, theirs, ours in differences[:3])
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise UsageError(f"--import-run {run_dir} was trained under other recipe values than --config "
                         f"{cfg.config or '(none)'} and the flags give ({shown}{more}): import it with the recipe "
                         f"it was trained with")


def recipe_differences(cfg: config.TrainConfig, run_recipe: dict) -> list[tuple[str, object, object]]:
    """(option, the run's value, ours) for each option that shapes the weights and differs; an option
    the run's recipe does not set had TrainConfig's default there."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(config.TrainConfig)}
    ours = {**{k: getattr(cfg, k) for k in config.recipe_keys()}, "epochs": cfg.recipe.get("epochs", defaults["epochs"])}
    found = []
    for key in sorted(config.recipe_keys() - set(_NOT_COMPARED) | {"epochs"}):
        theirs = run_recipe.get(key, defaults[key])
        if isinstance(theirs, int) and not isinstance(theirs, bool) and isinstance(ours[key], float):
            theirs = float(theirs)
        if theirs != ours[key]:
            found.append((key, theirs, ours[key]))
    unknown = sorted(set(run_recipe) - config.recipe_keys() - {"config"})
    found += [(key, run_recipe[key], "(no such option)") for key in unknown]
    return found
