"""Distillation (model/distill.py): soft targets looked up by content hash, the tempered loss, and a
training run that computes the teacher's targets once, records them, and recomputes a damaged file."""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from conftest import run_cli
from model import distill


def test_lookup_follows_the_hash_not_the_order():
    targets = {"sha256": np.array(["aa", "bb", "cc"]),
               "log_probs": np.log(np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]], np.float32))}
    lookup = distill.TargetLookup(targets, num_classes=2)
    got = np.exp(lookup(tf.constant(["cc", "aa", "zz", "bb"])).numpy())
    np.testing.assert_allclose(got, [[0.5, 0.5], [0.7, 0.3], [0.5, 0.5], [0.2, 0.8]], rtol=1e-6)


def test_loss_is_smallest_where_the_student_matches_the_teacher():
    teacher = tf.math.log(tf.constant([[0.6, 0.3, 0.1]]))
    matching = distill.loss(teacher, teacher, temperature=4.0)
    wrong = distill.loss(tf.constant([[-3.0, 0.0, 3.0]]), teacher, temperature=4.0)
    assert float(matching[0]) < float(wrong[0])
    # T^2 scaling keeps the soft-target gradients on the scale of the hard-label ones.
    at_one = distill.loss(tf.constant([[-3.0, 0.0, 3.0]]), teacher, temperature=1.0)
    assert float(wrong[0]) != float(at_one[0])


def test_training_with_a_teacher_computes_its_targets_once(tiny_ingest, tiny_model, tmp_path):
    model_dir = tmp_path / "student"
    args = ["train", "--data", tiny_ingest, "--model-dir", model_dir, "--arch", "vgg_xs", "--batch-size", "32",
            "--steps-per-epoch", "3", "--teacher", tiny_model, "--distill-alpha", "0.5"]
    first = run_cli(*args, "--epochs", "1")
    assert "computing the soft targets" in first.stderr
    stats = json.loads((tiny_ingest / "stats.json").read_text())
    with np.load(model_dir / distill.TARGETS_FILE) as f:
        assert len(f["sha256"]) == stats["written_per_split"]["train"]
        assert f["log_probs"].shape == (len(f["sha256"]), 7)
        np.testing.assert_allclose(np.exp(f["log_probs"]).sum(-1), 1.0, atol=1e-3)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    teacher = json.loads((tiny_model / "metadata.json").read_text())["model_version"]
    assert metadata["training"]["distillation"]["teacher"] == teacher
    assert metadata["training"]["distillation"]["alpha"] == 0.5

    resumed = run_cli(*args, "--epochs", "2")  # resumes at epoch 2: the targets are read back
    assert "read from" in resumed.stderr and "computing the soft targets" not in resumed.stderr

    (model_dir / distill.TARGETS_FILE).write_bytes(b"not an npz")  # damaged: untrusted, recomputed
    again = run_cli(*args, "--epochs", "3")
    assert "computing the soft targets" in again.stderr


def test_a_targets_file_read_back_is_untrusted_but_a_refusal_is_not_swallowed(tmp_path):
    """A damaged targets file is computed again (None); one the file system refuses to read (a folder in
    its place) is raised, so that training prints the one line of train_io.refused_writes."""
    import pytest

    damaged = tmp_path / "teacher_targets.npz"
    for content in (b"PK\x03\x04 not a whole zip", b"\x93NUMPY truncated", b"", b"not numpy at all"):
        damaged.write_bytes(content)
        assert distill._read(str(damaged)) is None, content
    assert distill._read(str(tmp_path / "missing.npz")) is None
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(IsADirectoryError):
        distill._read(str(tmp_path / "folder.npz"))
