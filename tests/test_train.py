"""Training: every strategy trains and exports; kill -9 then resume; export agrees; mismatch refused."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, run_cli


def _metadata(model_dir):
    return json.loads((model_dir / "metadata.json").read_text())


def test_one_device_trains_logs_and_exports(tiny_model):
    meta = _metadata(tiny_model)
    assert meta["training"]["strategy"] == "OneDeviceStrategy"
    assert meta["training"]["steps"] == 8
    assert meta["labels"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert meta["training_data"]["fingerprint"]
    assert {"val", "val_flip_tta", "val_crops_tta"} <= set(meta["metrics"])
    # Test is sealed: training and its export never score it; the final step (test_model_line.py) does.
    assert not [name for name in meta["metrics"] if name.startswith("test")]
    assert meta["test_scoring"] == {"count": 0, "events": []}
    assert meta["tta"]["decided"] == "chosen on val" and meta["tta"]["mode"] == meta["recommended_tta"]
    assert meta["calibration"]["fitted_on"] == "val" and meta["calibration"]["temperature"] > 0
    assert (tiny_model / "export" / "model.keras").stat().st_size > 10_000
    assert (tiny_model / "export" / "saved_model" / "saved_model.pb").exists()
    rows = list(csv.DictReader((tiny_model / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["images_per_s"]) > 0 for r in rows)
    assert list((tiny_model / "logs" / "train").glob("events.out.tfevents.*"))
    assert (tiny_model / "plots" / "training_curves.png").stat().st_size > 5000


def test_metadata_describes_the_preprocessing_and_a_portable_command(tiny_model):
    from model import preprocess

    meta = _metadata(tiny_model)
    assert meta["preprocessing"]["steps"] == preprocess.STEPS  # the code's own description (test_train_config)
    assert meta["command"].startswith("python -m beam_pipelines.cli train --data ")
    assert str(REPO) not in json.dumps(meta)  # no absolute path of the checkout it ran from


def test_mirrored_on_two_cpu_replicas(tiny_ingest, tmp_path):
    run_cli("train", "--data", tiny_ingest, "--model-dir", tmp_path, "--arch", "vgg_xs", "--epochs", "1",
            "--batch-size", "16", "--steps-per-epoch", "3", "--strategy", "mirrored", "--cpu-replicas", "2")
    meta = _metadata(tmp_path)
    assert meta["training"]["strategy"] == "MirroredStrategy"
    assert meta["training"]["replicas"] == 2
    assert meta["training"]["global_batch"] == 32  # scales with the replicas
    assert meta["training"]["steps"] == 3


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_with_two_local_workers(tiny_ingest, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "beam_pipelines.cli", "train", "--data", str(tiny_ingest), "--model-dir",
             str(tmp_path), "--arch", "vgg_xs", "--epochs", "2", "--batch-size", "16", "--steps-per-epoch", "3",
             "--strategy", "multi-worker"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    meta = _metadata(tmp_path)
    assert meta["training"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert meta["training"]["replicas"] == 2 and meta["training"]["global_batch"] == 32
    assert meta["training"]["steps"] == 6
    assert tf_checkpoint_step(tmp_path / "checkpoints") == 6
    # Only the chief writes final artifacts; the other worker's scratch space is gone.
    assert "exported" in outputs[0] and "exported" not in outputs[1]
    assert not (tmp_path / ".workers" / "worker-1").exists()


def tf_checkpoint_step(ckpt_dir) -> int:
    state = (ckpt_dir / "checkpoint").read_text()
    latest = state.split("\n")[0].split('"')[1]
    return int(latest.rsplit("-", 1)[1])


def test_kill_minus_nine_then_resume_continues(tiny_ingest, tmp_path):
    args = [sys.executable, "-m", "beam_pipelines.cli", "train", "--data", str(tiny_ingest), "--model-dir",
            str(tmp_path), "--arch", "vgg_xs", "--epochs", "2", "--batch-size", "16", "--steps-per-epoch", "30",
            "--checkpoint-every", "3"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ckpt = tmp_path / "checkpoints"
    while time.time() < deadline:
        if (ckpt / "checkpoint").exists() and tf_checkpoint_step(ckpt) >= 6:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = tf_checkpoint_step(ckpt)
    assert 6 <= killed_at < 60, "the job finished before it could be killed"
    assert not (tmp_path / "metadata.json").exists()

    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and f"at step {killed_at}" in proc.stderr
    meta = _metadata(tmp_path)
    assert meta["training"]["resumed_from_step"] == killed_at
    assert meta["training"]["steps"] == 60  # the count went on; it did not restart from zero


def test_sigterm_checkpoints_and_exits(tiny_ingest, tmp_path):
    args = [sys.executable, "-m", "beam_pipelines.cli", "train", "--data", str(tiny_ingest), "--model-dir",
            str(tmp_path), "--arch", "vgg_xs", "--epochs", "3", "--batch-size", "16", "--steps-per-epoch", "40"]
    proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "history.csv").exists():  # epoch 1 is done
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    step = tf_checkpoint_step(tmp_path / "checkpoints")
    assert 40 < step < 120  # saved mid-epoch, at the step where the signal arrived


def test_exported_model_agrees_with_weights_and_serving_signature(tiny_model):
    import cv2
    import tensorflow as tf

    from model import archs
    from model.loading import load

    model, meta = load(str(tiny_model))
    reference = archs.build(meta["arch"], meta["image_size"], 7)
    reference.load_weights(str(tiny_model / "best.weights.h5"))
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 48, 48, 1)).astype(np.float32)
    np.testing.assert_allclose(model.predict(pixels, verbose=0), reference.predict(pixels, verbose=0), atol=1e-5)

    from model import tta

    served = tf.saved_model.load(str(tiny_model / "export" / "saved_model"))
    encoded = [cv2.imencode(".png", p[:, :, 0].astype(np.uint8))[1].tobytes() for p in pixels]
    probs = served.serve(tf.constant(encoded))["probabilities"].numpy()
    # Serving applies the TTA the model recommends and the temperature fitted on val, as predict does.
    temperature = meta["calibration"]["temperature"]
    expected = tta.probabilities(lambda v: model(v) / temperature, tf.constant(pixels), meta["recommended_tta"]).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served.serve_pixels(tf.constant(pixels))["probabilities"].numpy(), expected, atol=1e-5)


def test_label_or_schema_mismatch_is_refused(tiny_model, tmp_path):
    from model.artifact import ModelMismatchError
    from model.loading import load

    for field, value, message in (("labels", ["happy", "sad"], "labels"), ("schema_version", 99, "schema version")):
        bad = tmp_path / field
        shutil.copytree(tiny_model, bad)
        meta = _metadata(bad)
        meta[field] = value
        (bad / "metadata.json").write_text(json.dumps(meta))
        with pytest.raises(ModelMismatchError, match=message):
            load(str(bad))
        proc = run_cli("predict", "--input", tmp_path, "--output", tmp_path / "o", "--model", bad, check=False)
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("folder, what", [("logs/train", "the TensorBoard logs"), ("checkpoints", "a checkpoint"),
                                          ("export", "the export")])
def test_a_refused_write_is_one_line_and_exit_2(tiny_ingest, tiny_model, tmp_path, capsys, folder, what):
    """TensorFlow refuses a write in its own errors (PermissionDeniedError...), not OSError: still one line."""
    from beam_pipelines import cli
    from test_gate import read_only

    model_dir = tmp_path / "owned"
    shutil.copytree(tiny_model, model_dir)  # a model dir an earlier training owns (its _train.json)
    with read_only(model_dir / folder):
        # --mixed-precision off: a run that stops in this process must not leave a bfloat16 policy behind.
        code = cli.main(["train", "--data", str(tiny_ingest), "--model-dir", str(model_dir), "--fresh",
                         "--arch", "vgg_xs", "--epochs", "1", "--batch-size", "32", "--steps-per-epoch", "1",
                         "--mixed-precision", "off"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    # Refused by TensorFlow (training's writes: "cannot write <what> to ...") or by the gate (the export's
    # commit moves: "cannot move ..."): one line either way, naming the model directory.
    assert lines[0].startswith(f"emotion train: error: cannot write {what} to {model_dir}") or (
        folder == "export" and lines[0].startswith(f"emotion train: error: cannot move {model_dir}/export")), lines[0]
    assert _metadata(model_dir) == _metadata(tiny_model)  # the exported model is the earlier one, whole
