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
`emotion train`'s alone. This module is the command and the arrays file; the fit itself is
model/train_portable_loop.py's.

--max-seconds caps the wall time: a short probe measures the step time, and the number of epochs
is cut to what fits (the schedule is then built for that many epochs, so the cosine still ends);
run.json records the epochs actually run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import lzma
import os
import tempfile
import zipfile

import numpy as np

from model import config, gate, train_portable_loop
from model.config import TrainConfig
from model.errors import UsageError
from schemas import LABELS

SPLITS = ("train", "val")


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


def train(args) -> dict:
    """`train`: the recipe and its overrides checked first, then the arrays file read, then the fit
    (model/train_portable_loop.py); returns the run record written to --out/run.json."""
    cfg = portable_config(args)
    arrays, info = load_arrays(args.arrays)
    return train_portable_loop.train(cfg, args, arrays, info)


def portable_config(args) -> TrainConfig:
    """The recipe and this command's overrides as the TrainConfig `emotion train` would build: the same
    defaults and checks (an unknown key, a wrong type or range is a UsageError)."""
    overrides = {"seed": args.seed} if args.seed is not None else {}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.init_weights:
        overrides["init_weights"] = args.init_weights
    return config.build(args.config, **overrides)


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
