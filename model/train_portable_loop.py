"""The portable trainer's fit (`python -m model.train_portable train`, model/train_portable.py): the recipe's
network trained on the arrays file on any Keras 3 backend, with `emotion train`'s loss (distillation
included), schedule and augmentation; the epoch with the best val macro-F1 kept in --out
(best.weights.h5, history.csv, run.json), written through the gate under --out's lock.

The model, its starting weights, the loss and each epoch's row are model/trainer.py's (RUNNER: this
module's Trainer), shared with `emotion train`'s tf.distribute runner; the fit is Keras' own.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time

import numpy as np

from model import config, gate
from model.config import TrainConfig
from model.errors import UsageError
from model.trainer import (
    EpochEnd,
    Loss,
    Trainer,
    improves,
    init_record,
    patience_spent,
    source_version,
    teacher_log_probs_valid,
)
from schemas import LABELS

OUT_FILES = ("best.weights.h5", "history.csv", "run.json")  # what `train` writes in --out
OUT_LOCK = "_portable.lock"


def macro_f1(model, pixels: np.ndarray, labels: np.ndarray, batch_size: int = 1024) -> tuple[float, float]:
    """(accuracy, macro-F1) of the model's argmax (no TTA, as `emotion train` selects epochs)."""
    from model import metrics

    logits = model.predict(pixels, batch_size=batch_size, verbose=0)
    summary = metrics.summarize(metrics.confusion(labels, np.argmax(logits, -1)))
    return summary["accuracy"], summary["macro_f1"]


def teacher_targets(cfg: TrainConfig, arrays: dict, info: dict, arrays_path: str) -> np.ndarray | None:
    """The teacher's log-probabilities per train row when the recipe distils (None otherwise), after
    checking the arrays file holds them, for the teacher the recipe names when its metadata is at hand."""
    if not cfg.teacher:
        return None
    held = info.get("teacher")
    if "train_teacher_log_probs" not in arrays or not held:
        raise UsageError(f"the recipe distils from {cfg.teacher}, and {arrays_path} holds no teacher targets: "
                         f"write it with export-arrays --teacher {cfg.teacher}")
    wanted = source_version(cfg.teacher)
    if wanted is not None and wanted != held["teacher"]:
        raise UsageError(f"the recipe distils from {cfg.teacher} ({wanted}); {arrays_path} holds the targets of "
                         f"{held['teacher']}: write it again with export-arrays --teacher {cfg.teacher}")
    targets = arrays["train_teacher_log_probs"].astype(np.float32)
    if not teacher_log_probs_valid(targets, len(arrays["train_labels"])):
        raise UsageError(f"{arrays_path}: train_teacher_log_probs is not one finite row per train image")
    return targets


def loss_and_accuracy(cfg: TrainConfig, num_classes: int):
    """The loss of both trainers (model/trainer.Loss) as a Keras loss, with the accuracy metric. y_true
    packs, per example: the one-hot label, its class weight, then (distilling) the teacher's
    log-probabilities (packed_targets)."""
    import keras
    from keras import ops

    per_example: Loss = RUNNER.loss(cfg)

    def loss(y_true, logits):
        teacher = y_true[:, num_classes + 1:] if per_example.distils else None
        return per_example(logits, y_true[:, :num_classes], y_true[:, num_classes], teacher)

    def accuracy(y_true, logits):
        return ops.cast(ops.equal(ops.argmax(y_true[:, :num_classes], -1), ops.argmax(logits, -1)), "float32")

    return loss, keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


def train(cfg: TrainConfig, args, arrays: dict, info: dict) -> dict:
    """Fits the recipe's network to the arrays' train split on this Keras backend, keeping in --out the
    weights of the epoch with the best val macro-F1 (with its history.csv and run.json); returns the run
    record. `args`: the command's --arrays, --out, --seed, --steps-per-execution and --max-seconds."""
    import keras

    from model import optimization

    batch, epochs = cfg.batch_size, cfg.epochs
    x_train = arrays["train_pixels"].astype(np.float32)
    y_train = arrays["train_labels"].astype(np.int32)
    x_val, y_val = arrays["val_pixels"].astype(np.float32), arrays["val_labels"].astype(np.int32)
    size = int(info["image_size"])

    device = keras.config.backend()
    has_accelerator = device == "jax" and _jax_platform() != "cpu"
    policy = "float32" if cfg.mixed_precision == "off" else ("mixed_bfloat16" if has_accelerator else "float32")
    RUNNER.prepare(cfg, policy)

    steps_per_epoch = len(x_train) // batch
    peak = optimization.peak_lr(cfg.optimizer, cfg.lr, batch)
    y_packed = packed_targets(cfg, arrays, info, args.arrays, y_train)
    net, trainer = build_trainer(cfg, size)
    loss, accuracy = loss_and_accuracy(cfg, len(LABELS))

    def compile_for(n_epochs: int):
        schedule = optimization.WarmupCosine(peak, int(cfg.warmup_epochs * steps_per_epoch), steps_per_epoch * n_epochs)
        trainer.compile(
            optimizer=optimization.build_optimizer(cfg.optimizer, schedule, cfg.weight_decay),
            loss=loss, metrics=[accuracy], steps_per_execution=args.steps_per_execution,
        )

    started = time.time()
    if args.max_seconds:
        epochs = _epochs_that_fit(trainer, compile_for, x_train, y_packed, batch, epochs, args.max_seconds)
    compile_for(epochs)

    # ---------------------------------------------------------------- train, select on val
    out = OutFolder(args.out)
    selection = Selection(epochs=epochs, steps_per_epoch=steps_per_epoch, batch=batch, patience=cfg.patience,
                          max_seconds=args.max_seconds, started=started)
    with out:
        trainer.fit(x_train, y_packed, batch_size=batch, epochs=epochs, shuffle=True, verbose=0,
                    callbacks=[select_on_val(trainer, net, x_val, y_val, out, selection)])
        run = {
            "trainer": "model/train_portable.py", "backend": device, "device": _device_name(),
            "precision_policy": policy, "config": args.config,
            "recipe": {**cfg.recipe, **({"seed": args.seed} if args.seed is not None else {})},
            **selection.record(), "global_batch": batch, "peak_lr": peak,
            "train_seconds": round(time.time() - started, 1), "data_fingerprint": info.get("fingerprint"),
            "examples": info["examples"], "keras": keras.__version__, "command": config.command_line(),
            **({"distillation": {**info["teacher"], "alpha": cfg.distill_alpha, "temperature": cfg.distill_temperature}}
               if cfg.teacher else {}),
            **({"init_weights": init_record(cfg)} if cfg.init_weights else {}),
        }
        out.write("run.json", (json.dumps(run, indent=2) + "\n").encode())
    return run


def packed_targets(cfg: TrainConfig, arrays: dict, info: dict, arrays_path: str, y_train: np.ndarray) -> np.ndarray:
    """y_true of the loss (loss_and_accuracy), one row per train image: its one-hot label, its class weight,
    then (distilling) the teacher's log-probabilities."""
    from model import optimization

    class_w = optimization.class_weights(info["train_counts"], cfg.class_weight_power)[y_train]
    targets = teacher_targets(cfg, arrays, info, arrays_path)
    return np.concatenate([np.eye(len(LABELS), dtype=np.float32)[y_train], class_w[:, None].astype(np.float32),
                           *([targets] if targets is not None else [])], axis=1)


def build_trainer(cfg: TrainConfig, size: int):
    """(net, trainer): the recipe's architecture (from --init-weights when given), and the model `fit`
    trains: the augmentation in front of it."""
    import keras

    from model import augment

    net = RUNNER.build_model(cfg, size)
    RUNNER.initialize(net, cfg)
    trainer = keras.Sequential([keras.Input((size, size, 1)), augment.RandomAugment(cfg.augment, seed=cfg.seed), net])
    return net, trainer


@dataclasses.dataclass
class Selection:
    """The epochs as they go: each one's history row, the best val macro-F1 so far, and when to stop
    (--max-seconds spent, or --patience epochs without a gain)."""

    epochs: int
    steps_per_epoch: int
    batch: int
    patience: int
    max_seconds: float
    started: float
    history: list = dataclasses.field(default_factory=list)
    best_f1: float = -1.0
    best_epoch: int | None = None
    stopped_early: bool = False

    def record(self) -> dict:
        """run.json's fields about the epochs."""
        return {"epochs_planned": self.epochs, "epochs_run": len(self.history), "best_epoch": self.best_epoch,
                "best_val_macro_f1": self.best_f1, "stopped_early": self.stopped_early}


def select_on_val(trainer, net, x_val: np.ndarray, y_val: np.ndarray, out: OutFolder, selection: Selection):
    """The Keras callback that, after each epoch, scores `net` on val, writes history.csv, keeps the best
    epoch's weights in --out, prints the epoch's line and stops the fit when `selection` says so."""
    import keras

    s = selection

    class Track(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.time() - self.t0
            acc, f1 = macro_f1(net, x_val, y_val)
            lr = float(keras.ops.convert_to_numpy(trainer.optimizer.learning_rate))
            s.history.append(EpochEnd(epoch=epoch + 1, step=(epoch + 1) * s.steps_per_epoch, lr=lr,
                                      loss=float(logs["loss"]), accuracy=float(logs["accuracy"]),
                                      images=s.steps_per_epoch * s.batch, seconds=elapsed, val=(acc, f1)).row())
            if improves(f1, s.best_f1):
                s.best_f1, s.best_epoch = f1, epoch + 1
                out.save_weights(net)
            out.write("history.csv", _history_csv(s.history))
            print(f"epoch {epoch + 1}/{s.epochs}  loss {logs['loss']:.4f}  acc {logs['accuracy']:.4f}  "
                  f"val acc {acc:.4f}  val macro-F1 {f1:.4f}  {elapsed:.1f}s", flush=True)
            if s.max_seconds and time.time() - s.started > s.max_seconds:
                print("max-seconds reached: stopping", flush=True)
                self.model.stop_training = True
            if patience_spent(s.patience, epoch + 1 - s.best_epoch):
                print(f"no val macro-F1 gain in {s.patience} epochs: stopping", flush=True)
                s.stopped_early = self.model.stop_training = True

    return Track()


class OutFolder:
    """--out, owned while `train` runs: its lock (gate.RootLock, one writer), and every file written
    whole through the gate (temporary file + rename; never through a link). Files of OUT_FILES that an
    earlier portable run did not write (its run.json says so) are a user's: refused in one line."""

    def __init__(self, path: str):
        self.root = path.rstrip("/") or path
        self.gate = gate.Gate([self.root])
        self.lock = gate.RootLock(self.root, gate.new_id("portable"), flag="--out", name=OUT_LOCK)
        self._scratch: str | None = None

    def __enter__(self) -> OutFolder:
        self.lock.acquire()
        try:
            self._check_owned()
            self._scratch = self.gate.make_temp_dir(prefix="emotion-portable-")
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._scratch:
                self.gate.remove_temp_dir(self._scratch)
        finally:
            self.lock.release()

    def _check_owned(self) -> None:
        present = [name for name in OUT_FILES if os.path.lexists(os.path.join(self.root, name))]
        if not present:
            return
        try:
            earlier = json.loads(self.gate.read_bytes(os.path.join(self.root, "run.json"), limit=1 << 20))
        except (OSError, ValueError, UnicodeDecodeError, gate.PathRefused):
            earlier = None
        if not (isinstance(earlier, dict) and earlier.get("trainer") == "model/train_portable.py"):
            raise UsageError(f"--out {self.root} already holds {', '.join(present)}, which no portable run wrote: "
                             "move them away or choose another --out")

    def write(self, name: str, data: bytes) -> None:
        self.gate.write_bytes(os.path.join(self.root, name), data)

    def save_weights(self, net) -> None:
        """Keras writes the .h5 file itself: into this run's temp folder, then whole into --out."""
        local = os.path.join(self._scratch, "best.weights.h5")
        net.save_weights(local)
        with open(local, "rb") as f:
            self.write("best.weights.h5", f.read())


RUNNER = Trainer()


def _epochs_that_fit(trainer, compile_for, x_train, y_packed, batch: int, epochs: int, max_seconds: float) -> int:
    """--max-seconds: a short probe measures the step time; the epochs are cut to what fits. The trainer's
    weights are put back as they were."""
    started = time.time()
    initial = trainer.get_weights()
    compile_for(epochs)
    probe = min(len(x_train), 40 * batch)
    fit_kw = dict(batch_size=batch, epochs=1, verbose=0, shuffle=False)
    trainer.fit(x_train[:probe], y_packed[:probe], **fit_kw)  # compiles
    t0 = time.time()
    trainer.fit(x_train[:probe], y_packed[:probe], **fit_kw)
    steps_per_epoch = len(x_train) // batch
    epoch_seconds = (time.time() - t0) / (probe // batch) * steps_per_epoch * 1.25 + 1.0  # +val, +slack
    left = max_seconds - (time.time() - started) - 30  # 30 s: recompile and saving
    fitting = max(1, int(left // epoch_seconds))
    print(f"probe: {epoch_seconds:.2f} s/epoch; {fitting} epochs fit in {left:.0f} s", flush=True)
    trainer.set_weights(initial)
    return min(epochs, fitting)


def _history_csv(rows: list[dict]) -> bytes:
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    return text.getvalue().encode()


def _jax_platform() -> str:
    import jax

    return jax.devices()[0].platform


def _device_name() -> str:
    try:
        import jax

        return str(jax.devices()[0].device_kind)
    except ImportError:
        import platform

        return platform.processor() or "cpu"
