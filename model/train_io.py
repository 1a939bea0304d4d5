"""What training writes in --model-dir (checkpoints, history.csv, TensorBoard logs, best.weights.h5,
plots, an imported portable run) and the one answer when the file system refuses one of those writes.

TensorFlow reports a refused write as its own error (PermissionDeniedError for a read-only or immutable
folder, FailedPreconditionError for a file where a folder must go, ResourceExhaustedError for a full
disk), not as an OSError; `refused_writes` turns those, and the OSErrors of Keras' local files, into a
UsageError: one line, exit 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import re

import tensorflow as tf

from model.errors import UsageError
from model.files import local_target

# The file system said no: the user's to fix (permissions, a file in the way, a full disk), not a bug.
_REFUSED_BY_TF = (tf.errors.PermissionDeniedError, tf.errors.FailedPreconditionError,
                  tf.errors.ResourceExhaustedError, tf.errors.AlreadyExistsError)
_REFUSED_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                   errno.ENOSPC, errno.EDQUOT}


@contextlib.contextmanager
def refused_writes(path: str, what: str):
    """Around a write of `what` to `path`: the file system's refusal becomes a one-line UsageError."""
    try:
        yield
    except _REFUSED_BY_TF as exc:
        raise UsageError(_refusal(path, what, exc.message)) from None
    except OSError as exc:
        if exc.errno not in _REFUSED_ERRNOS:
            raise
        raise UsageError(_refusal(path, what, str(exc))) from None


def _refusal(path: str, what: str, detail: str) -> str:
    # TensorFlow's messages start with the op's name in braces and go on over several lines.
    detail = re.sub(r"^\{\{[^}]*\}\}\s*", "", (detail.strip().splitlines() or ["refused"])[0])[:240]
    return f"cannot write {what} to {path} ({detail}): make it writable, or choose another --model-dir"


# --------------------------------------------------------------------------- history.csv


def read_history(path: str) -> list[dict]:
    """The rows of an earlier run's history.csv (resumed runs append to it); [] when there is none."""
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        history = list(csv.DictReader(f))
    if any(not str(row.get("epoch", "")).isdigit() for row in history):
        raise UsageError(f"{path} is not a training history (no epoch column of numbers): move it "
                         f"away, or pass --fresh or --overwrite")
    return history


def write_history(path: str, history: list[dict], columns: list[str]) -> None:
    """history.csv with `columns` (the newest row's): older rows without a column leave it empty."""
    with refused_writes(path, "the training history"), tf.io.gfile.GFile(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for row in history:
            w.writerow({k: row.get(k, "") for k in columns})


# --------------------------------------------------------------------------- checkpoints, weights, logs


def make_dirs(path: str) -> None:
    with refused_writes(path, "the model directory"):
        tf.io.gfile.makedirs(path)


def save_checkpoint(manager: tf.train.CheckpointManager, step: int) -> None:
    with refused_writes(manager.directory, "a checkpoint"):
        manager.save(checkpoint_number=step)


def save_weights(model, path: str) -> None:
    with refused_writes(path, "the best weights"), local_target(path) as local:  # Keras writes .h5 locally
        model.save_weights(local)


def summary_writer(log_dir: str, chief: bool):
    """TensorBoard's writer on the chief (a no-op writer on the other workers)."""
    if not chief:
        return tf.summary.create_noop_writer()
    with refused_writes(log_dir, "the TensorBoard logs"):
        return tf.summary.create_file_writer(log_dir)


def log_scalars(writer, log_dir: str, epoch: int, row: dict) -> None:
    """An epoch's history row as TensorBoard scalars (all but the epoch and step counters)."""
    with refused_writes(log_dir, "the TensorBoard logs"):
        with writer.as_default(step=epoch):
            for key, value in row.items():
                if key not in ("epoch", "step"):
                    tf.summary.scalar(key, value)
        writer.flush()


def training_curves(history: list[dict], path: str) -> None:
    from model import plots

    with refused_writes(path, "the training curves"):
        plots.training_curves(history, path)


# --------------------------------------------------------------------------- a portable run


def imported_distillation(config, imported: dict) -> dict | None:
    """The teacher an imported portable run was distilled from (its run.json, read as untrusted input);
    None when the recipe names none. A recipe that distils and a run that did not is the user's mistake."""
    if not config.teacher:
        return None
    record = imported.get("distillation")
    if not (isinstance(record, dict) and isinstance(record.get("teacher"), str)
            and isinstance(record.get("teacher_tta"), str)):
        raise UsageError(f"--import-run {config.import_run}: the recipe distils from {config.teacher}, and the run's "
                         f"run.json records no distillation (train it with a recipe that names the teacher)")
    return {"teacher": record["teacher"], "teacher_tta": record["teacher_tta"]}


def import_run(run_dir: str, best_weights: str, history_path: str) -> tuple[dict, list[dict]]:
    """Copies a portable run's weights and history into this model dir; returns (run.json, history rows)."""
    run_dir = run_dir.rstrip("/")
    for name in ("best.weights.h5", "history.csv", "run.json"):
        if not tf.io.gfile.exists(f"{run_dir}/{name}"):
            raise UsageError(f"--import-run {run_dir} has no {name}: not a model/train_portable.py output")
    with refused_writes(os.path.dirname(best_weights), "the imported run"):
        tf.io.gfile.makedirs(os.path.dirname(best_weights))
        tf.io.gfile.copy(f"{run_dir}/best.weights.h5", best_weights, overwrite=True)
        tf.io.gfile.copy(f"{run_dir}/history.csv", history_path, overwrite=True)
    with tf.io.gfile.GFile(f"{run_dir}/run.json") as f:
        info = json.load(f)
    with tf.io.gfile.GFile(history_path) as f:
        history = list(csv.DictReader(f))
    return info, history
