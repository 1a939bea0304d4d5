"""Knowledge distillation: a small student learns from a teacher's soft targets, computed once.

    emotion train --config fast_base --data /tmp/fer-out --model-dir /tmp/fast_base   # the recipe names the teacher

The teacher (an exported model directory; "shipped" for the shipped model) runs once over the train
split with its recommended test-time augmentation, and its class log-probabilities are kept in
MODEL_DIR/teacher_targets.npz, keyed by each image's content hash (`image/sha256`). A resumed run
reads them back (after checking they belong to this teacher and this data); training looks each
batch's targets up by hash, so shuffling and sharding never misalign them. The targets are taken on
the unaugmented image: the student sees augmented views of it, as in Hinton et al. (2015).

The loss per image is

    alpha * T^2 * CE(softmax(teacher_log_probs / T), softmax(student_logits / T))
    + (1 - alpha) * the usual label-smoothed, class-weighted cross-entropy on the label.
"""

from __future__ import annotations

import io
import logging
import zipfile

import numpy as np
import tensorflow as tf

from model.errors import UsageError
from model.files import local_copy
from model.ownership import model_gate
from model.trainer import distillation_loss, teacher_log_probs_valid

log = logging.getLogger("emotion")

TARGETS_FILE = "teacher_targets.npz"


def compute_targets(teacher_dir: str, data_dir: str, image_size: int) -> dict:
    """The teacher's log-probabilities for every train image: {sha256, log_probs, teacher, fingerprint}."""
    from model import data, resolve_model_dir, tta
    from model.artifact import ModelError
    from model.loading import load

    try:
        teacher, metadata = load(resolve_model_dir(teacher_dir))
    except ModelError as exc:
        raise UsageError(f"--teacher {teacher_dir}: {exc}") from None
    if int(metadata["image_size"]) != image_size:
        raise UsageError(f"--teacher {teacher_dir} takes {metadata['image_size']}-pixel images, --data holds "
                         f"{image_size}-pixel images")
    mode = metadata.get("recommended_tta", "none")

    @tf.function(reduce_retracing=True)
    def log_probs(pixels):
        probs = tta.probabilities(lambda v: teacher(v, training=False), pixels, mode)
        return tf.math.log(tf.maximum(probs, 1e-7))

    hashes, rows = [], []
    for batch in data.eval_dataset(data.split_files(data_dir, "train"), image_size):
        hashes.append(batch["sha256"].numpy())
        rows.append(log_probs(batch["pixels"]).numpy())
    return {"sha256": np.concatenate(hashes).astype(object).astype(str),
            "log_probs": np.concatenate(rows).astype(np.float32),
            "teacher": str(metadata["model_version"]), "teacher_tta": mode}


def load_or_compute(model_dir: str, teacher_dir: str, data_dir: str, image_size: int, data_fingerprint) -> dict:
    """MODEL_DIR/teacher_targets.npz when it matches this teacher and data; computed and written otherwise."""
    from model import resolve_model_dir
    from model.artifact import read_metadata

    path = f"{model_dir}/{TARGETS_FILE}"
    teacher_version = str(read_metadata(resolve_model_dir(teacher_dir))["model_version"])
    if tf.io.gfile.exists(path):
        targets = _read(path)
        if targets is not None and targets["teacher"] == teacher_version and \
                targets["fingerprint"] == str(data_fingerprint):
            log.info("train: teacher targets of %s read from %s", teacher_version, path)
            return targets
        log.info("train: %s belongs to another teacher or data; computing it again", path)
    log.info("train: computing the soft targets of %s on the train split (once)", teacher_version)
    targets = compute_targets(teacher_dir, data_dir, image_size)
    targets["fingerprint"] = str(data_fingerprint)
    # Written whole through the gate (a temporary file beside it, renamed over it; gs://, one upload),
    # inside the model directory training holds (_train.lock); never through a link planted there.
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in targets.items()})
    model_gate(model_dir).write_bytes(path, buffer.getvalue())
    return targets


def _read(path: str) -> dict | None:
    """A targets file's contents, or None when it is not one (it is read back, so it is untrusted)."""
    try:
        with local_copy(path) as local, np.load(local, allow_pickle=False) as f:
            targets = {"sha256": f["sha256"].astype(str), "log_probs": f["log_probs"].astype(np.float32),
                       "teacher": str(f["teacher"]), "teacher_tta": str(f["teacher_tta"]),
                       "fingerprint": str(f["fingerprint"])}
    except (PermissionError, IsADirectoryError):
        raise  # the file system's refusal: one line from train_io.refused_writes, as for the write
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # damaged, truncated, foreign
        return None
    if not teacher_log_probs_valid(targets["log_probs"], len(targets["sha256"])):
        return None
    return targets


class TargetLookup:
    """Maps a batch of image hashes to the teacher's log-probabilities (a hash table in the graph).

    Duplicate images share a hash and, being pixel-identical, the same targets. A hash the table does
    not hold (it cannot happen with targets computed on this data) gets uniform targets."""

    def __init__(self, targets: dict, num_classes: int):
        self.log_probs = tf.constant(targets["log_probs"])
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(targets["sha256"]),
                                                tf.range(len(targets["sha256"]), dtype=tf.int64)),
            default_value=-1)
        self.uniform = tf.fill([num_classes], -float(np.log(num_classes)))

    def __call__(self, sha256: tf.Tensor) -> tf.Tensor:
        index = self.table.lookup(sha256)
        found = tf.gather(self.log_probs, tf.maximum(index, 0))
        return tf.where((index >= 0)[:, None], found, self.uniform[None, :])


def loss(student_logits: tf.Tensor, teacher_log_probs: tf.Tensor, temperature: float) -> tf.Tensor:
    """Per-example T^2-scaled cross-entropy between the tempered teacher and student distributions (the
    one definition both trainers use: model/trainer.py's)."""
    return distillation_loss(student_logits, teacher_log_probs, temperature)
