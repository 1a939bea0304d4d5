"""Portable training: the same architectures, recipes, augmentation, loss and LR schedule as
`emotion train`, on any Keras 3 backend, from numpy arrays. It exists for accelerator machines that
have JAX but no TensorFlow; its output is imported back here by `emotion train --import-run`, which
evaluates on val, chooses the TTA on val and exports through the usual path.

    # 1. here (TensorFlow): the ingest output's train and val splits as one array file (with --teacher,
    #    the teacher's soft targets for the train split too, for a recipe that distils: fast)
    python -m model.train_portable export-arrays --data /tmp/fer-out --output /tmp/fer-arrays.npz [--teacher shipped]
    # 2. on the accelerator (no TensorFlow needed)
    KERAS_BACKEND=jax python -m model.train_portable train --arrays fer-arrays.npz --config shipped \\
        --out run/ [--max-seconds 420]
    # 3. here: evaluate on val, choose TTA on val, export (test: python -m model.evaluate --final, once)
    emotion train --config shipped --data /tmp/fer-out --model-dir /tmp/ship --import-run run/

`train` writes run/best.weights.h5 (the epoch with the best val macro-F1), run/history.csv (the
columns of `emotion train`'s history) and run/run.json (device, epochs, timings, data fingerprint).

Its options are a TrainConfig (model/config.py) built from the recipe and its --seed/--epochs/--init-weights,
as `emotion train` builds its own: the same defaults and the same checks (an unknown recipe key is an
error). It uses the options of the model, the loss (distillation included: the teacher's targets travel in
the arrays file, computed here by the same code as `emotion train`'s, model/distill.py), the schedule, the
augmentation, --patience and --init-weights (an exported model or a .weights.h5 file). Strategy and checkpoints are
`emotion train`'s alone.

--max-seconds caps the wall time: a short probe measures the step time, and the number of epochs
is cut to what fits (the schedule is then built for that many epochs, so the cosine still ends);
run.json records the epochs actually run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import lzma
import os
import tempfile
import time
import zipfile

import numpy as np

from model import artifact, config, gate
from model.config import TrainConfig
from model.errors import UsageError
from schemas import LABELS

SPLITS = ("train", "val")
OUT_FILES = ("best.weights.h5", "history.csv", "run.json")  # what `train` writes in --out
OUT_LOCK = "_portable.lock"


# =========================================================================== export-arrays (TensorFlow side)


def export_arrays(data_dir: str, output: str, teacher: str | None = None) -> dict:
    """Writes OUTPUT (.npz): uint8 pixels and int labels of the train and val splits, plus stats; with a
    teacher, its log-probabilities for each train row (train_teacher_log_probs), as `emotion train`
    computes them (model/distill.py), matched to the rows by image hash."""
    from model import data, distill

    stats = data.read_stats(data_dir)
    size = int(stats["image_size"])
    arrays, hashes = {}, []
    for split in SPLITS:
        xs, ys = [], []
        for batch in data.eval_dataset(data.split_files(data_dir, split), size):
            xs.append(batch["pixels"].numpy().astype(np.uint8))
            ys.append(batch["label"].numpy().astype(np.int8))
            if split == "train":
                hashes.extend(batch["sha256"].numpy().astype(str))
        arrays[f"{split}_pixels"] = np.concatenate(xs)
        arrays[f"{split}_labels"] = np.concatenate(ys)
    info = {"data": data_dir, "fingerprint": stats.get("fingerprint"), "image_size": size,
            "labels": list(LABELS), "train_counts": stats["written"].get("train", {}),
            "examples": {s: int(len(arrays[f"{s}_labels"])) for s in SPLITS}}
    if teacher:
        targets = distill.compute_targets(teacher, data_dir, size)
        row = {h: i for i, h in enumerate(targets["sha256"])}
        arrays["train_teacher_log_probs"] = targets["log_probs"][[row[h] for h in hashes]]
        info["teacher"] = {"teacher": targets["teacher"], "teacher_tta": targets["teacher_tta"]}
    write_arrays(output, arrays, info)
    return info


ARRAYS_LOCK = "_export_arrays.lock"  # one export-arrays at a time into a folder


def write_arrays(output: str, arrays: dict, info: dict) -> None:
    """OUTPUT (.npz) written whole through the gate -- a temporary file in its folder, renamed over it --
    while the folder's lock is held. An existing OUTPUT is replaced only when it is an export-arrays
    file; anything else there (a user's file, a link, a folder) is refused in one line, untouched."""
    folder = os.path.dirname(os.path.abspath(output))
    buffer = io.BytesIO()
    np.savez(buffer, info=np.array(json.dumps(info)), **arrays)
    g = gate.Gate([folder])
    lock = gate.RootLock(folder, gate.new_id("arrays"), flag="--output", name=ARRAYS_LOCK)
    lock.acquire()
    try:
        if os.path.lexists(output) and not _is_arrays_file(output):
            raise UsageError(f"--output {output} exists and is not an export-arrays file: move it away or choose "
                             "another --output")
        g.write_bytes(os.path.abspath(output), buffer.getbuffer())
    finally:
        lock.release()


def _is_arrays_file(path: str) -> bool:
    """A regular file (not a link, FIFO or folder: never opened then) holding an export-arrays info record."""
    try:
        gate.regular_file(path)
        with np.load(path) as f:  # allow_pickle stays off
            return "info" in f.files and isinstance(json.loads(str(f["info"])), dict)
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, gate.PathRefused):
        return False


# The largest array file unpacked from .xz: FER2013's train and val splits with teacher targets are
# about 0.1 GB; anything far larger is not an export-arrays file (a decompression bomb fills TMPDIR).
ARRAYS_MAX_BYTES = 4 << 30
_NPZ_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive


class _Refused(ValueError):
    """An array file refused before it is read whole (its reason is the message)."""


def _unpack_xz(path: str, into) -> None:
    """Streams the .xz file at `path` into the open file `into`, refusing it as soon as its first bytes
    are not a zip archive's or it unpacks to more than ARRAYS_MAX_BYTES (nothing larger is written)."""
    written = 0
    with lzma.open(path) as src:
        while chunk := src.read(1 << 20):
            if not written and not chunk.startswith(_NPZ_MAGIC):
                raise _Refused("it does not unpack to an .npz (zip) archive")
            written += len(chunk)
            if written > ARRAYS_MAX_BYTES:
                raise _Refused(f"it unpacks to more than {ARRAYS_MAX_BYTES >> 20} MiB, far more than any "
                               "export-arrays file")
            into.write(chunk)
    into.flush()


def load_arrays(path: str) -> tuple[dict, dict]:
    """(arrays, info) from an export-arrays file; .xz-compressed copies are read too (streamed, and
    refused by size while streaming). The file is read back, so it is untrusted input: an unreadable,
    oversized or inconsistent one is one line (UsageError)."""
    try:
        with contextlib.ExitStack() as stack:
            source = path
            if path.endswith(".xz"):  # unpacked into a temporary file that goes when the stack closes
                tmp = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".npz"))
                _unpack_xz(path, tmp)
                source = tmp.name
            with np.load(source) as f:  # allow_pickle stays off: no code runs from the file
                arrays = {k: f[k] for k in f.files if k != "info"}
                info = json.loads(str(f["info"]))
        problem = _arrays_problem(arrays, info)
    except (OSError, EOFError, ValueError, KeyError, TypeError, lzma.LZMAError, zipfile.BadZipFile) as exc:
        problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    if problem:
        raise UsageError(f"--arrays {path}: {problem}; write it again with export-arrays")
    return arrays, info


def _arrays_problem(arrays: dict, info: dict) -> str | None:
    if not isinstance(info, dict) or not {"image_size", "labels", "train_counts", "examples"} <= set(info):
        return "its info record lacks image_size, labels, train_counts or examples"
    if tuple(info["labels"]) != LABELS:
        return f"it has labels {info['labels']}, this code expects {list(LABELS)}"
    size = int(info["image_size"])
    for split in SPLITS:
        pixels, labels = arrays.get(f"{split}_pixels"), arrays.get(f"{split}_labels")
        if pixels is None or labels is None or pixels.shape[1:] != (size, size, 1) or len(pixels) != len(labels) \
                or not len(labels) or labels.min() < 0 or labels.max() >= len(LABELS):
            return f"its {split} split is not one {size}x{size} image per label in 0..{len(LABELS) - 1}"
    return None


# =========================================================================== train (any Keras backend)


def macro_f1(model, pixels: np.ndarray, labels: np.ndarray, batch_size: int = 1024) -> tuple[float, float]:
    """(accuracy, macro-F1) of the model's argmax (no TTA, as `emotion train` selects epochs)."""
    from model import metrics

    logits = model.predict(pixels, batch_size=batch_size, verbose=0)
    summary = metrics.summarize(metrics.confusion(labels, np.argmax(logits, -1)))
    return summary["accuracy"], summary["macro_f1"]


def portable_config(args) -> TrainConfig:
    """The recipe and this command's overrides as the TrainConfig `emotion train` would build: the same
    defaults and checks (an unknown key, a wrong type or range is a UsageError)."""
    overrides = {"seed": args.seed} if args.seed is not None else {}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.init_weights:
        overrides["init_weights"] = args.init_weights
    return config.build(args.config, **overrides)


def teacher_targets(cfg: TrainConfig, arrays: dict, info: dict, arrays_path: str) -> np.ndarray | None:
    """The teacher's log-probabilities per train row when the recipe distils (None otherwise), after
    checking the arrays file holds them, for the teacher the recipe names when its metadata is at hand."""
    if not cfg.teacher:
        return None
    held = info.get("teacher")
    if "train_teacher_log_probs" not in arrays or not held:
        raise UsageError(f"the recipe distils from {cfg.teacher}, and {arrays_path} holds no teacher targets: "
                         f"write it with export-arrays --teacher {cfg.teacher}")
    wanted = _model_version(cfg.teacher)
    if wanted is not None and wanted != held["teacher"]:
        raise UsageError(f"the recipe distils from {cfg.teacher} ({wanted}); {arrays_path} holds the targets of "
                         f"{held['teacher']}: write it again with export-arrays --teacher {cfg.teacher}")
    targets = arrays["train_teacher_log_probs"].astype(np.float32)
    if targets.shape != (len(arrays["train_labels"]), len(LABELS)) or not np.isfinite(targets).all():
        raise UsageError(f"{arrays_path}: train_teacher_log_probs is not one finite row per train image")
    return targets


def _model_version(model_dir: str) -> str | None:
    """An exported model's version from its metadata.json (no TensorFlow needed); None when not at hand."""
    from model import resolve_model_dir

    return artifact.unchecked_value(resolve_model_dir(model_dir), "model_version")


def loss_and_accuracy(cfg: TrainConfig, num_classes: int):
    """The loss of `emotion train`'s step (model/train_loop.py) as a Keras loss, with the accuracy metric.
    y_true packs, per example: the one-hot label, its class weight, then (distilling) the teacher's
    log-probabilities. The class weight applies to the label's term only, as there."""
    import keras
    from keras import ops

    smoothing, alpha, temperature = cfg.label_smoothing, cfg.distill_alpha, cfg.distill_temperature

    def loss(y_true, logits):
        logits = ops.cast(logits, "float32")
        onehot, weight = y_true[:, :num_classes], y_true[:, num_classes]
        smoothed = onehot * (1.0 - smoothing) + smoothing / num_classes
        per_example = keras.losses.categorical_crossentropy(smoothed, logits, from_logits=True) * weight
        if cfg.teacher:
            soft = ops.softmax(y_true[:, num_classes + 1:] / temperature, axis=-1)
            distilled = keras.losses.categorical_crossentropy(soft, logits / temperature, from_logits=True)
            per_example = (1.0 - alpha) * per_example + alpha * distilled * temperature**2
        return per_example

    def accuracy(y_true, logits):
        return ops.cast(ops.equal(ops.argmax(y_true[:, :num_classes], -1), ops.argmax(logits, -1)), "float32")

    return loss, keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


def train(args) -> dict:
    import keras

    from model import archs, augment, optimization

    cfg = portable_config(args)
    batch, epochs = cfg.batch_size, cfg.epochs
    arrays, info = load_arrays(args.arrays)
    x_train = arrays["train_pixels"].astype(np.float32)
    y_train = arrays["train_labels"].astype(np.int32)
    x_val, y_val = arrays["val_pixels"].astype(np.float32), arrays["val_labels"].astype(np.int32)
    size = int(info["image_size"])

    device = keras.config.backend()
    has_accelerator = device == "jax" and _jax_platform() != "cpu"
    policy = "float32" if cfg.mixed_precision == "off" else ("mixed_bfloat16" if has_accelerator else "float32")
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(cfg.seed)

    steps_per_epoch = len(x_train) // batch
    peak = optimization.peak_lr(cfg.optimizer, cfg.lr, batch)
    class_w = optimization.class_weights(info["train_counts"], cfg.class_weight_power)[y_train]
    targets = teacher_targets(cfg, arrays, info, args.arrays)
    y_packed = np.concatenate([np.eye(len(LABELS), dtype=np.float32)[y_train], class_w[:, None].astype(np.float32),
                               *([targets] if targets is not None else [])], axis=1)

    net = archs.build(cfg.arch, size, len(LABELS))
    if cfg.init_weights:
        _init_from(net, cfg.init_weights)
    trainer = keras.Sequential([keras.Input((size, size, 1)), augment.RandomAugment(cfg.augment, seed=cfg.seed), net])
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
    best = {"f1": -1.0, "epoch": None, "stopped_early": False}
    history: list[dict] = []

    class Track(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            elapsed = time.time() - self.t0
            acc, f1 = macro_f1(net, x_val, y_val)
            lr = float(keras.ops.convert_to_numpy(trainer.optimizer.learning_rate))
            history.append({"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch, "lr": lr,
                            "loss": float(logs["loss"]), "accuracy": float(logs["accuracy"]),
                            "images_per_s": steps_per_epoch * batch / max(elapsed, 1e-9),
                            "epoch_seconds": elapsed, "val_accuracy": acc, "val_macro_f1": f1})
            if f1 > best["f1"]:
                best.update(f1=f1, epoch=epoch + 1)
                out.save_weights(net)
            out.write("history.csv", _history_csv(history))
            print(f"epoch {epoch + 1}/{epochs}  loss {logs['loss']:.4f}  acc {logs['accuracy']:.4f}  "
                  f"val acc {acc:.4f}  val macro-F1 {f1:.4f}  {elapsed:.1f}s", flush=True)
            if args.max_seconds and time.time() - started > args.max_seconds:
                print("max-seconds reached: stopping", flush=True)
                self.model.stop_training = True
            if cfg.patience and epoch + 1 - best["epoch"] >= cfg.patience:
                print(f"no val macro-F1 gain in {cfg.patience} epochs: stopping", flush=True)
                best["stopped_early"] = self.model.stop_training = True

    with out:
        trainer.fit(x_train, y_packed, batch_size=batch, epochs=epochs, shuffle=True, verbose=0, callbacks=[Track()])
        run = {
            "trainer": "model/train_portable.py", "backend": device, "device": _device_name(),
            "precision_policy": policy, "config": args.config,
            "recipe": {**cfg.recipe, **({"seed": args.seed} if args.seed is not None else {})},
            "epochs_planned": epochs, "epochs_run": len(history), "best_epoch": best["epoch"],
            "best_val_macro_f1": best["f1"], "stopped_early": best["stopped_early"], "global_batch": batch, "peak_lr": peak,
            "train_seconds": round(time.time() - started, 1), "data_fingerprint": info.get("fingerprint"),
            "examples": info["examples"], "keras": keras.__version__, "command": config.command_line(),
            **({"distillation": {**info["teacher"], "alpha": cfg.distill_alpha, "temperature": cfg.distill_temperature}}
               if cfg.teacher else {}),
            **({"init_weights": {"from": cfg.init_weights, "model_version": _model_version(cfg.init_weights)}}
               if cfg.init_weights else {}),
        }
        out.write("run.json", (json.dumps(run, indent=2) + "\n").encode())
    return run


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


def _init_from(net, source: str) -> None:
    """--init-weights: a .weights.h5 file, or an exported model (a directory or a packaged name) whose
    export/model.keras is checked against its metadata.json's fingerprint, as `emotion train` checks it."""
    from model import resolve_model_dir
    from model.archs import weights_fingerprint

    path, stored = resolve_model_dir(source), None
    if not path.endswith(".weights.h5"):
        stored = artifact.unchecked_value(path, "model_fingerprint")
        if stored is None:
            raise UsageError(f"--init-weights {source}: neither a .weights.h5 file nor an exported model "
                             f"directory with a readable {artifact.METADATA}")
        path = os.path.join(path, artifact.EXPORT, artifact.KERAS_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"--init-weights {source}: {path} does not exist")
    try:
        net.load_weights(path)
    except Exception as exc:  # not a weights file, or another architecture's weights
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UsageError(f"--init-weights {source} cannot be loaded into {net.name} ({reason})") from None
    if stored is not None and weights_fingerprint(net) != stored:
        raise UsageError(f"--init-weights {source}: {path} does not match its metadata.json (fingerprint): "
                         f"an interrupted or hand-edited export; re-export it")


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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m model.train_portable")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export-arrays", help="ingest output -> train/val arrays (.npz); needs TensorFlow")
    e.add_argument("--data", required=True)
    e.add_argument("--output", required=True)
    e.add_argument("--teacher", default=None,
                   help="an exported model (or 'shipped'): its soft targets for the train split go in the file too")
    t = sub.add_parser("train", help="train from an arrays file on any Keras backend")
    t.add_argument("--arrays", required=True, help=".npz from export-arrays (or .npz.xz)")
    t.add_argument("--config", default="shipped", help="recipe name or TOML path")
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=None, help="override the recipe's seed (another ensemble member)")
    t.add_argument("--epochs", type=int, default=0, help="override the recipe's epochs (0: keep)")
    t.add_argument("--init-weights", default=None, help="start from an exported model (a directory or 'shipped', 'fast') or a .weights.h5 file")
    t.add_argument("--steps-per-execution", type=int, default=1,
                   help="training steps per compiled call: fewer host round-trips for small models on accelerators")
    t.add_argument("--max-seconds", type=float, default=0, help="wall-time cap; epochs are cut to fit (0: none)")
    args = p.parse_args(argv)
    try:
        if args.command == "export-arrays":
            print(json.dumps(export_arrays(args.data, args.output, args.teacher)))
        else:
            print(json.dumps(train(args), indent=2))
    except UsageError as exc:  # a bad recipe or option: one line, exit 2, as `emotion train` reports it
        p.exit(2, f"{p.prog}: error: {exc}\n")


if __name__ == "__main__":
    main()
