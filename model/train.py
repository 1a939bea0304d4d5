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
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import sys
import time

import tensorflow as tf

from model.errors import UsageError
from model.augment import PRESETS
from model.files import local_copy, local_target
from model.tta import MODES as TTA_MODES

log = logging.getLogger("emotion")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emotion train", description="tf.distribute training on ingest output")
    p.add_argument("--config", default=None,
                   help="recipe: a checked-in name (model/recipes/NAME.toml, e.g. shipped, demo) or a TOML path; "
                        "flags given on the command line override it")
    p.add_argument("--data", required=True, help="ingest output folder (tfrecords/ and stats.json)")
    p.add_argument("--model-dir", required=True, help="checkpoints, logs, history, export (local or gs://)")
    p.add_argument("--epochs", type=int, default=30,
                   help="0 with --import-run: evaluate and export weights trained elsewhere")
    p.add_argument("--batch-size", type=int, default=64, help="per replica; the global batch scales with replicas")
    p.add_argument("--strategy", choices=["auto", "one-device", "mirrored", "multi-worker"], default="auto")
    p.add_argument("--cpu-replicas", type=int, default=0, help="split the CPU into N logical devices (mirrored)")
    p.add_argument("--mixed-precision", choices=["auto", "on", "off"], default="auto",
                   help="auto: float16 on GPUs, bfloat16 on CPUs with AVX512_BF16 or AMX, else float32")
    p.add_argument("--arch", default="vgg_s", help="vgg_s, vgg_xs, vgg_m or resnet_s")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--lr", type=float, default=None, help="peak LR for a global batch of 256 (sgd 0.1, adamw 2e-3)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--class-weight-power", type=float, default=0.5, help="0: no reweighting, 1: inverse frequency")
    p.add_argument("--patience", type=int, default=0, help="stop after N epochs without val macro-F1 gain (0: off)")
    p.add_argument("--steps-per-epoch", type=int, default=0, help="0: one pass over train")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps (0: per epoch)")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints and start over")
    p.add_argument("--resume", action="store_true", help="resume (the default when checkpoints exist)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files under --model-dir's training names that no training or export wrote")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--augment", choices=sorted(PRESETS), default="strong", help="augmentation preset")
    p.add_argument("--tta", choices=["auto", *TTA_MODES], default="auto",
                   help="test-time augmentation the export recommends; auto: the best on val")
    p.add_argument("--init-weights", default=None,
                   help="start from an exported model dir (or .weights.h5; 'shipped': the shipped model), "
                        "e.g. to fine-tune; ignored on resume")
    p.add_argument("--import-run", default=None,
                   help="folder written by model/train_portable.py (weights, history, run.json): evaluate and "
                        "export its weights here instead of training (implies --epochs 0)")
    p.add_argument("--teacher", default=None,
                   help="distil from this exported model dir ('shipped': the shipped model): its soft targets on "
                        "the train split are computed once into MODEL_DIR/teacher_targets.npz (model/distill.py)")
    p.add_argument("--distill-alpha", type=float, default=0.7,
                   help="weight of the teacher's soft targets in the loss (the label gets 1 - alpha)")
    p.add_argument("--distill-temperature", type=float, default=4.0, help="softmax temperature of the distillation")
    p.add_argument("--seed", type=int, default=42)
    return p


def parse_args(argv):
    from model import recipe

    p = build_parser()
    argv = list(argv if argv is not None else sys.argv[1:])
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", default=None)
    known, _ = config.parse_known_args(argv)
    recipe_values = {}
    if known.config:
        allowed = {a.dest for a in p._actions} - {"help", "config", "data", "model_dir", "overwrite"}
        try:
            recipe_values = recipe.load(known.config, allowed)
        except recipe.RecipeError as exc:
            raise UsageError(str(exc)) from None
        p.set_defaults(**recipe_values)
    args = p.parse_args(argv)
    args.recipe = recipe_values
    if args.import_run:
        args.epochs = 0
    if args.epochs < 0 or args.batch_size < 1 or (args.epochs == 0 and not args.import_run):
        raise UsageError("--epochs and --batch-size must be positive (--epochs 0 only with --import-run)")
    if not 0.0 <= args.distill_alpha <= 1.0 or args.distill_temperature <= 0:
        raise UsageError("--distill-alpha must lie in [0, 1] and --distill-temperature be positive")
    return args


# =========================================================================== strategy


def make_strategy(args) -> tf.distribute.Strategy:
    """Picks the distribution strategy; must run before TensorFlow touches any device."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    name = args.strategy
    if name == "auto":
        if len(tf_config.get("cluster", {}).get("worker", [])) + len(tf_config.get("cluster", {}).get("chief", [])) > 1:
            name = "multi-worker"
        elif tf.config.list_physical_devices("GPU") or args.cpu_replicas > 1:
            name = "mirrored"
        else:
            name = "one-device"
    if args.cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpu_replicas)
    gpus = tf.config.list_physical_devices("GPU")
    if name == "multi-worker":
        if not tf_config:
            raise ValueError("--strategy multi-worker needs TF_CONFIG (cluster and task)")
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


def import_run(run_dir: str, best_weights: str, history_path: str) -> tuple[dict, list[dict]]:
    """Copies a portable run's weights and history into this model dir; returns (run.json, history rows)."""
    run_dir = run_dir.rstrip("/")
    for name in ("best.weights.h5", "history.csv", "run.json"):
        if not tf.io.gfile.exists(f"{run_dir}/{name}"):
            raise UsageError(f"--import-run {run_dir} has no {name}: not a model/train_portable.py output")
    tf.io.gfile.makedirs(os.path.dirname(best_weights))
    tf.io.gfile.copy(f"{run_dir}/best.weights.h5", best_weights, overwrite=True)
    tf.io.gfile.copy(f"{run_dir}/history.csv", history_path, overwrite=True)
    with tf.io.gfile.GFile(f"{run_dir}/run.json") as f:
        info = json.load(f)
    with tf.io.gfile.GFile(history_path) as f:
        history = list(csv.DictReader(f))
    return info, history


def init_from(model, source: str) -> None:
    """Loads weights from an exported model directory (its model.keras) or a .weights.h5 file."""
    from model import resolve_model_dir
    from model.export import ModelError, load

    source = resolve_model_dir(source)

    if source.endswith(".weights.h5"):
        if not tf.io.gfile.exists(source):
            raise UsageError(f"--init-weights {source} does not exist")
        try:
            with local_copy(source) as local:
                model.load_weights(local)
        except Exception as exc:  # not an HDF5 file, or the weights of another architecture
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise UsageError(f"--init-weights {source} cannot be loaded into --arch {model.name} ({reason}): "
                             f"give weights saved from a {model.name}") from None
        return
    try:
        exported, _ = load(source)
    except ModelError as exc:
        raise UsageError(f"--init-weights {source}: {exc}") from None
    if [w.shape for w in exported.get_weights()] != [w.shape for w in model.get_weights()]:
        raise UsageError(f"--init-weights {source} is a {exported.name}, which does not match --arch {model.name}")
    model.set_weights(exported.get_weights())


# =========================================================================== data checks


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


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
            f"--data {data_dir}: val holds {_plural(n_val, 'image')}, fewer than the {min_eval_images(n_train):,} "
            f"needed to choose epochs next to {_plural(n_train, 'training image')}: re-run emotion ingest (it carves "
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

    args = parse_args(argv)
    stats = check_data(args.data)  # cheap, and touches no device
    with ownership.TrainingClaim(args.model_dir, overwrite=args.overwrite, chief=ownership.is_chief_task()) as claim:
        try:
            return _train(args, stats, claim)
        except tf.errors.DataLossError as exc:
            detail = (str(exc).strip().splitlines() or ["corrupted record"])[0][:160]
            raise UsageError(f"--data {args.data} holds a damaged TFRecord shard ({detail}): re-run emotion ingest") \
                from None


def _train(args, stats: dict, claim) -> dict:
    strategy = make_strategy(args)  # before anything else touches TensorFlow's devices

    import keras

    from model import archs, data, export, optimization, ownership, plots
    from model import evaluate as evaluation
    from schemas import NUM_CLASSES

    model_dir = args.model_dir.rstrip("/")
    chief = is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = args.batch_size * replicas
    gpus = tf.config.list_physical_devices("GPU")
    policy = precision_policy(args.mixed_precision, bool(gpus))
    keras.mixed_precision.set_global_policy(policy)
    mixed = policy != "float32"
    loss_scaling = policy == "mixed_float16"  # bfloat16 has float32's exponent range: no loss scaling
    keras.utils.set_random_seed(args.seed)

    image_size = int(stats["image_size"])
    train_files = data.split_files(args.data, "train")
    n_train = int(stats["written_per_split"].get("train", 0))
    if n_train < global_batch:
        raise UsageError(f"--data {args.data} holds {_plural(n_train, 'training image')}, fewer than one global batch "
                         f"of {global_batch} (--batch-size {args.batch_size} x {_plural(replicas, 'replica')}): "
                         f"lower --batch-size")
    steps_per_epoch = args.steps_per_epoch or max(1, n_train // global_batch)
    total_steps = steps_per_epoch * args.epochs
    peak_lr = optimization.peak_lr(args.optimizer, args.lr, global_batch)
    weights = tf.constant(optimization.class_weights(stats["written"].get("train", {}), args.class_weight_power))

    log.info(
        "train: %s, %d replica(s), global batch %d, %d steps/epoch x %d epochs, arch %s%s",
        strategy_name(strategy), replicas, global_batch, steps_per_epoch, args.epochs, args.arch,
        f", {policy}" if mixed else "",
    )

    # ----------------------------------------------------------------- model, optimizer, checkpoint
    with strategy.scope():
        model = archs.build(args.arch, image_size, NUM_CLASSES)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        lr_schedule = optimization.WarmupCosine(peak_lr, int(args.warmup_epochs * steps_per_epoch), total_steps)
        schedule = lambda: lr_schedule(step_var)  # noqa: E731
        optimizer = optimization.build_optimizer(args.optimizer, peak_lr, args.weight_decay)
        if loss_scaling:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        best_f1 = tf.Variable(-1.0, dtype=tf.float32, trainable=False, name="best_val_macro_f1")
        since_best = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_since_best")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var, best_f1=best_f1,
                                     since_best=since_best)
    ckpt_dir = worker_dir(model_dir, strategy, "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=2)
    chief_ckpts = tf.train.latest_checkpoint(f"{model_dir}/checkpoints")
    if chief_ckpts and not args.fresh:
        checkpoint.restore(chief_ckpts).expect_partial()
        log.info("train: resumed from %s at step %d", chief_ckpts, int(step_var.numpy()))
    else:
        if args.resume:
            log.info("train: --resume given but no checkpoint in %s/checkpoints; starting fresh", model_dir)
        if args.init_weights:
            init_from(model, args.init_weights)
            log.info("train: initialised weights from %s", args.init_weights)

    # ----------------------------------------------------------------- input
    teacher_targets = None
    if args.teacher:
        from model import distill

        tf.io.gfile.makedirs(model_dir)
        targets = distill.load_or_compute(model_dir, args.teacher, args.data, image_size, stats.get("fingerprint"))
        teacher_targets = distill.TargetLookup(targets, NUM_CLASSES)

    def dataset_fn(ctx: tf.distribute.InputContext):
        return data.train_dataset(
            train_files, image_size, ctx.get_per_replica_batch_size(global_batch),
            seed=args.seed + int(step_var.numpy()), input_context=ctx, augment_images=not args.no_augment,
            augment_preset=args.augment, targets=teacher_targets,
        )

    dist_ds = strategy.distribute_datasets_from_function(dataset_fn)
    iterator = iter(dist_ds)

    # ----------------------------------------------------------------- steps
    def step_fn(pixels, labels, soft_targets=None):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(pixels, training=True), tf.float32)
            onehot = tf.one_hot(labels, NUM_CLASSES)
            smoothed = onehot * (1.0 - args.label_smoothing) + args.label_smoothing / NUM_CLASSES
            per_example = tf.nn.softmax_cross_entropy_with_logits(smoothed, logits) * tf.gather(weights, labels)
            if soft_targets is not None:
                per_example = ((1.0 - args.distill_alpha) * per_example + args.distill_alpha
                               * distill.loss(logits, soft_targets, args.distill_temperature))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss) if loss_scaling else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        return loss, correct

    @tf.function
    def train_step(iterator):
        optimizer.learning_rate.assign(schedule())
        loss, correct = strategy.run(step_fn, args=next(iterator))
        step_var.assign_add(1)
        return (strategy.reduce("SUM", loss, axis=None), strategy.reduce("SUM", correct, axis=None))

    @tf.function
    def sync_stop(flag):
        # ReduceOp has no MAX: any worker's flag makes the sum positive.
        return strategy.reduce("SUM", strategy.run(lambda f: tf.identity(f), args=(flag,)), axis=None) > 0

    @tf.function(reduce_retracing=True)
    def predict_logits(pixels):
        return tf.cast(model(pixels, training=False), tf.float32)

    def evaluate(split: str, tta_mode: str = "none", predict=predict_logits):
        return evaluation.evaluate_split(predict, args.data, split, image_size, tta_mode)

    has_val = int(stats["written_per_split"].get("val", 0)) > 0
    has_test = int(stats["written_per_split"].get("test", 0)) > 0

    # ----------------------------------------------------------------- preemption
    stop = {"requested": False}

    def on_sigterm(signum, frame):
        stop["requested"] = True
        log.info("train: SIGTERM received; checkpointing and stopping after this step")

    signal.signal(signal.SIGTERM, on_sigterm)
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)

    # ----------------------------------------------------------------- history and logging
    history_path = f"{model_dir}/history.csv"
    history = []
    if chief and tf.io.gfile.exists(history_path) and not args.fresh and "history.csv" not in claim.replaced:
        with tf.io.gfile.GFile(history_path) as f:
            history = [row for row in csv.DictReader(f)]
        if any(not str(row.get("epoch", "")).isdigit() for row in history):
            raise UsageError(f"{history_path} is not a training history (no epoch column of numbers): move it "
                             f"away, or pass --fresh or --overwrite")
    if chief:
        tf.io.gfile.makedirs(model_dir)
    writer = tf.summary.create_file_writer(f"{model_dir}/logs/train") if chief else tf.summary.create_noop_writer()

    def save_checkpoint():
        manager.save(checkpoint_number=int(step_var.numpy()))
        if not chief and tf.io.gfile.exists(os.path.dirname(ckpt_dir)):  # a worker's scratch copy
            ownership.model_gate(f"{model_dir}/.workers").remove_tree(os.path.dirname(ckpt_dir))

    best_weights = f"{model_dir}/best.weights.h5"

    def save_best_weights():
        with local_target(best_weights) as local:  # Keras writes .h5 through a local path
            model.save_weights(local)

    # ----------------------------------------------------------------- weights trained elsewhere
    imported = None
    if args.import_run:
        imported, history = import_run(args.import_run, best_weights, history_path)
        log.info("train: imported %s (%s, %d epochs); evaluating and exporting it",
                 args.import_run, imported.get("device", "?"), len(history))

    # ----------------------------------------------------------------- the loop
    start_step = int(step_var.numpy())
    epoch = start_step // steps_per_epoch
    started = time.time()
    stopped_early = False
    while epoch < args.epochs and not stop["requested"]:
        t0 = time.time()
        loss_sum = correct_sum = 0.0
        done = 0
        first = int(step_var.numpy()) - epoch * steps_per_epoch
        for i in range(first, steps_per_epoch):
            loss, correct = train_step(iterator)
            loss_sum += float(loss)
            correct_sum += float(correct)
            done += 1
            if multi_worker:
                stop["requested"] = bool(sync_stop(tf.constant(1.0 if stop["requested"] else 0.0)).numpy())
            if stop["requested"]:
                break
            if args.checkpoint_every and int(step_var.numpy()) % args.checkpoint_every == 0:
                save_checkpoint()
            if chief and sys.stderr.isatty() and (i + 1) % 10 == 0:
                print(f"\r  epoch {epoch + 1}/{args.epochs} step {i + 1}/{steps_per_epoch} "
                      f"loss {loss_sum / done:.4f}", end="", file=sys.stderr, flush=True)
        if stop["requested"]:
            save_checkpoint()
            log.info("train: checkpoint saved at step %d; exiting for preemption", int(step_var.numpy()))
            sys.exit(143)
        elapsed = time.time() - t0
        epoch += 1
        row = {
            "epoch": epoch,
            "step": int(step_var.numpy()),
            "lr": float(schedule().numpy()),
            "loss": loss_sum / max(1, done),
            "accuracy": correct_sum / max(1, done * global_batch),
            "images_per_s": done * global_batch / max(elapsed, 1e-9),
            "epoch_seconds": elapsed,
        }
        if has_val:
            val = evaluate("val")
            row.update(val_accuracy=val["accuracy"], val_macro_f1=val["macro_f1"])
            if val["macro_f1"] > float(best_f1.numpy()):
                best_f1.assign(val["macro_f1"])
                since_best.assign(0)
                if chief:
                    save_best_weights()
            else:
                since_best.assign_add(1)
        elif chief:
            save_best_weights()  # no val split: the last epoch is the model
        save_checkpoint()
        if chief:
            history = [h for h in history if int(h["epoch"]) < epoch] + [row]
            with writer.as_default(step=epoch):
                for key, value in row.items():
                    if key not in ("epoch", "step"):
                        tf.summary.scalar(key, value)
            writer.flush()
            with tf.io.gfile.GFile(history_path, "w") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                w.writeheader()
                for h in history:
                    w.writerow({k: h.get(k, "") for k in row})
        if sys.stderr.isatty():
            print("\r", end="", file=sys.stderr)
        log.info(
            "epoch %d/%d  loss %.4f  acc %.4f%s  %.0f img/s  %.0fs",
            epoch, args.epochs, row["loss"], row["accuracy"],
            f"  val acc {row['val_accuracy']:.4f}  val macro-F1 {row['val_macro_f1']:.4f}" if has_val else "",
            row["images_per_s"], elapsed,
        )
        if args.patience and int(since_best.numpy()) >= args.patience:
            log.info("train: val macro-F1 has not improved for %d epochs; stopping early", args.patience)
            stopped_early = True
            break

    train_seconds = time.time() - started
    if not chief:
        return {}

    # ----------------------------------------------------------------- export (chief only)
    plots.training_curves(history, f"{model_dir}/plots/training_curves.png")
    # The export computes in float32 whatever precision trained it: predict and serving see one model.
    keras.mixed_precision.set_global_policy("float32")
    final = archs.build(args.arch, image_size, NUM_CLASSES)
    with local_copy(best_weights) as local:
        final.load_weights(local)

    # Final metrics are those of the exported (best) weights, not of the last step.
    @tf.function(reduce_retracing=True)
    def predict_final(pixels):
        return tf.cast(final(pixels, training=False), tf.float32)

    splits = [split for split, present in (("val", has_val), ("test", has_test)) if present]
    results = evaluation.evaluate_all(predict_final, args.data, splits, image_size)
    # Chosen on val, never on test, unless the recipe fixes it.
    recommended_tta = evaluation.best_tta(results) if args.tta == "auto" else args.tta
    best_epoch = None
    if history and has_val and all(h.get("val_macro_f1") not in (None, "") for h in history):
        best_epoch = int(max(history, key=lambda h: float(h["val_macro_f1"]))["epoch"])
    elif imported:
        best_epoch = imported.get("best_epoch")
    metadata = export.export(
        final,
        model_dir,
        {
            "arch": args.arch,
            "recommended_tta": recommended_tta,
            "training_data": {
                "path": args.data,
                "fingerprint": stats.get("fingerprint"),
                "images_per_split": stats.get("written_per_split"),
                "face_crop": stats.get("face_crop", False),
            },
            "training": {
                "strategy": strategy_name(strategy),
                "replicas": replicas,
                "global_batch": global_batch,
                "epochs_run": len(history) if imported else epoch,
                "steps": int(step_var.numpy()),
                "best_epoch": best_epoch,
                "stopped_early": stopped_early,
                "mixed_precision": policy,
                "optimizer": args.optimizer,
                "peak_lr": peak_lr,
                "seconds_this_run": round(train_seconds, 1),
                "resumed_from_step": start_step,
                **({"distillation": {"teacher": targets["teacher"], "teacher_tta": targets["teacher_tta"],
                                     "alpha": args.distill_alpha, "temperature": args.distill_temperature}}
                   if args.teacher else {}),
                **({"imported_run": imported} if imported else {}),
            },
            "recipe": {"config": args.recipe.get("config"),
                       "values": {k: v for k, v in args.recipe.items() if k != "config"}} if args.recipe else None,
            "metrics": {
                name: {k: v for k, v in m.items() if k != "confusion"} | {"confusion": m["confusion"]}
                for name, m in results.items()
            },
        },
        engine_data=args.data,
    )
    for name, m in results.items():
        log.info("train: %-15s accuracy %.4f  macro-F1 %.4f  ECE %.3f  (%d images)", name, m["accuracy"],
                 m["macro_f1"], m["ece"], m["examples"])
    log.info("train: exported %s to %s/export", metadata["model_version"], model_dir)
    return metadata
