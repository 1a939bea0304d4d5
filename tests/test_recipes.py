"""Recipes as code, bfloat16 on CPUs, and the portable trainer's round trip into the usual export."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from conftest import SHIPPED_MODEL, run_cli
from model import recipe
from model.train import build_parser, cpu_has_bfloat16, parse_args, precision_policy


def _train_options() -> set[str]:
    return {a.dest for a in build_parser()._actions} - {"help", "config", "data", "model_dir"}


@pytest.mark.parametrize("name", recipe.names())
def test_checked_in_recipes_name_only_real_options(name):
    values = recipe.load(name, _train_options())
    assert values["config"] == name and values["arch"]


def test_flags_override_the_recipe():
    base = ["--config", "shipped", "--data", "d", "--model-dir", "m"]
    args = parse_args(base)
    shipped = recipe.load("shipped")
    assert (args.arch, args.epochs, args.augment, args.seed) == (
        shipped["arch"], shipped["epochs"], shipped["augment"], shipped["seed"])
    args = parse_args([*base, "--epochs", "3", "--augment", "strong"])
    assert (args.epochs, args.augment, args.arch) == (3, "strong", shipped["arch"])


def test_the_portable_trainer_refuses_a_bad_recipe_in_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    typo = tmp_path / "typo.toml"
    typo.write_text('arch = "vgg_s"\nbach_size = 32\n')
    proc = subprocess.run([sys.executable, "-m", "model.train_portable", "train", "--arrays", tmp_path / "a.npz",
                           "--config", typo, "--out", tmp_path / "run"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert proc.returncode == 2
    # (TensorFlow's C++ start-up notices may come first: this module is not run through `emotion`.)
    assert proc.stderr.splitlines()[-1] == \
        f"python -m model.train_portable: error: recipe {typo} sets unknown option(s) bach_size", proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_bad_recipes_are_one_line_errors(tmp_path):
    typo = tmp_path / "typo.toml"
    typo.write_text('arch = "vgg_s"\nepochz = 3\n')
    broken = tmp_path / "broken.toml"
    broken.write_text("arch = \n")
    for config, message in (("nosuch", "no recipe named 'nosuch'"), (str(typo), "unknown option(s) epochz"),
                            (str(broken), "not valid TOML"), (str(tmp_path / "missing.toml"), "does not exist")):
        proc = run_cli("train", "--config", config, "--data", tmp_path, "--model-dir", tmp_path / "m", check=False)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], proc.stderr


def test_shipped_model_names_its_recipe():
    meta = json.loads((SHIPPED_MODEL / "metadata.json").read_text())
    shipped_values = {k: v for k, v in recipe.load("shipped").items() if k != "config"}
    # Exported with the recipe file as it is; trained by a run whose run.json named the same values.
    assert meta["exported_with"]["recipe"] == {"config": "shipped", "values": shipped_values}
    assert meta["trained_with"]["recipe"]["values"] == shipped_values
    assert meta["arch"] == recipe.load("shipped")["arch"]
    assert "--config shipped" in meta["command"]
    # The demo fine-tunes the shipped weights: its architecture must be the shipped one.
    assert recipe.load("demo")["arch"] == meta["arch"]


def test_precision_policy_follows_the_hardware():
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    assert cpu_has_bfloat16() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert precision_policy("off", True) == "float32"
    assert precision_policy("auto", True) == "mixed_float16"
    assert precision_policy("auto", False) == ("mixed_bfloat16" if cpu_has_bfloat16() else "float32")
    assert precision_policy("on", False) == "mixed_bfloat16"


def test_bfloat16_training_exports_a_float32_model_predict_uses(tiny_ingest, tmp_path):
    model_dir = tmp_path / "bf16"
    run_cli("train", "--data", tiny_ingest, "--model-dir", model_dir, "--arch", "vgg_xs", "--epochs", "1",
            "--batch-size", "32", "--steps-per-epoch", "3", "--mixed-precision", "on")
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["training"]["mixed_precision"] == "mixed_bfloat16"
    config = json.loads(__import__("zipfile").ZipFile(model_dir / "export" / "model.keras").read("config.json"))
    assert "bfloat16" not in json.dumps(config)  # the export computes in float32
    out = tmp_path / "pred"
    run_cli("predict", "--input", tiny_ingest, "--output", out, "--model", model_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["predicted"] > 0 and summary["model_version"] == meta["model_version"]


def test_portable_trainer_round_trip(tiny_ingest, tmp_path):
    """export-arrays -> train_portable (on this machine's Keras backend) -> emotion train --import-run."""
    import subprocess
    import sys

    from conftest import REPO

    arrays = tmp_path / "arrays.npz"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def portable(*args):
        return subprocess.run([sys.executable, "-m", "model.train_portable", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600, check=True)

    info = json.loads(portable("export-arrays", "--data", tiny_ingest, "--output", arrays).stdout)
    with np.load(arrays) as f:
        assert f["train_pixels"].dtype == np.uint8 and f["train_pixels"].shape[1:] == (48, 48, 1)
        assert len(f["train_labels"]) == info["examples"]["train"] and len(f["val_labels"]) == info["examples"]["val"]
    recipe_file = tmp_path / "tiny.toml"
    recipe_file.write_text('arch = "vgg_xs"\nepochs = 2\nbatch_size = 32\naugment = "light"\n')
    run_dir = tmp_path / "run"
    portable("train", "--arrays", arrays, "--config", recipe_file, "--out", run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["epochs_run"] == 2 and run["data_fingerprint"] == info["fingerprint"]
    assert run["command"].startswith("python -m model.train_portable train --arrays ")
    assert str(REPO) not in run["command"]  # portable: no absolute path of the checkout it ran from
    assert (run_dir / "history.csv").read_text().count("\n") == 3

    model_dir = tmp_path / "imported"
    run_cli("train", "--config", recipe_file, "--data", tiny_ingest, "--model-dir", model_dir, "--import-run", run_dir)
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["arch"] == "vgg_xs" and meta["training"]["imported_run"]["epochs_run"] == 2
    assert str(REPO) not in json.dumps(meta)
    assert {"val", "val_flip_tta"} <= set(meta["metrics"]) and not [m for m in meta["metrics"] if m.startswith("test")]
    assert meta["trained_with"]["source"] == "the imported run's run.json"
    from model import archs
    from model.loading import load

    exported, _ = load(str(model_dir))
    reference = archs.build("vgg_xs", 48, 7)
    reference.load_weights(str(run_dir / "best.weights.h5"))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 1)).astype(np.float32)
    np.testing.assert_allclose(exported.predict(pixels, verbose=0), reference.predict(pixels, verbose=0), atol=1e-4)


def test_stages_import_only_what_they_use():
    """Training never imports Apache Beam; ingest and the preprocessing contract never import TensorFlow."""
    import subprocess
    import sys

    from conftest import REPO

    def modules_after(imports: str) -> set[str]:
        code = f"import sys; {imports}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        return set(out.stdout.split())

    training = modules_after("import beam_pipelines.cli, model.train, model.export, model.evaluate, "
                             "model.train_portable, model.recipe")
    assert "tensorflow" in training and "apache_beam" not in training
    ingest = modules_after("import beam_pipelines.ingest.launcher, beam_pipelines.ingest.pipeline, model.preprocess")
    assert "apache_beam" in ingest and "tensorflow" not in ingest and "keras" not in ingest


def _always_teacher(root, label: str):
    """An exported vgg_xs whose logits ignore the image: `label` for every face (a teacher whose targets
    are told apart from the labels at a glance)."""
    from model import archs, export
    from schemas import LABELS

    model = archs.build("vgg_xs", 48, len(LABELS))
    head = model.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.where(np.arange(len(LABELS)) == LABELS.index(label), 8.0, 0.0)])
    export.export(model, str(root), {"arch": "vgg_xs", "recommended_tta": "none", "metrics": {},
                                     "training": {"epochs_run": 1, "best_epoch": 1, "global_batch": 8,
                                                  "optimizer": "sgd", "peak_lr": 0.1}})
    return json.loads((root / "metadata.json").read_text())["model_version"]


def test_portable_loss_is_emotion_trains_loss():
    """The portable trainer's Keras loss (packed targets) equals the TensorFlow step's per-example loss:
    label-smoothed cross-entropy times the class weight, mixed with the T^2-scaled soft-target term."""
    import tensorflow as tf

    from model import config, distill
    from model.train_portable_loop import loss_and_accuracy

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(16, 7)).astype(np.float32) * 3
    labels = rng.integers(0, 7, 16)
    weights = rng.uniform(0.5, 2.0, 16).astype(np.float32)
    teacher = np.log(rng.dirichlet(np.ones(7), 16)).astype(np.float32)
    for alpha, with_teacher in ((0.7, True), (0.0, False)):
        cfg = config.build(None, label_smoothing=0.1, distill_alpha=alpha, distill_temperature=4.0,
                           **({"teacher": "shipped"} if with_teacher else {}))
        loss, accuracy = loss_and_accuracy(cfg, 7)
        packed = np.concatenate([np.eye(7)[labels], weights[:, None], *([teacher] if with_teacher else [])], 1)
        portable = np.asarray(loss(tf.constant(packed, tf.float32), tf.constant(logits)))
        smoothed = np.eye(7)[labels] * 0.9 + 0.1 / 7
        expected = tf.nn.softmax_cross_entropy_with_logits(smoothed, logits).numpy() * weights
        if with_teacher:
            expected = 0.3 * expected + 0.7 * distill.loss(tf.constant(logits), tf.constant(teacher), 4.0).numpy()
        np.testing.assert_allclose(portable, expected, rtol=1e-5, atol=1e-5)
        accuracy.update_state(tf.constant(packed, tf.float32), tf.constant(logits))
        assert float(accuracy.result()) == pytest.approx(np.mean(logits.argmax(1) == labels))


def test_portable_trainer_distils_from_a_teacher(tiny_ingest, tmp_path):
    """export-arrays --teacher carries the teacher's targets (emotion train's, row by row); a recipe that
    distils trains from them, says so in run.json, and the import records the teacher in metadata.json.
    Without the targets, with a damaged array file or an --init-weights it cannot load, it is one line, exit 2."""
    import subprocess
    import sys

    from conftest import REPO
    from model import distill
    from schemas import LABELS

    teacher_dir = tmp_path / "teacher"
    version = _always_teacher(teacher_dir, "happy")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def portable(*args, check=True):
        return subprocess.run([sys.executable, "-m", "model.train_portable", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600, check=check)

    arrays, plain = tmp_path / "arrays.npz", tmp_path / "plain.npz"
    info = json.loads(portable("export-arrays", "--data", tiny_ingest, "--output", arrays,
                               "--teacher", teacher_dir).stdout)
    assert info["teacher"] == {"teacher": version, "teacher_tta": "none"}
    expected = distill.compute_targets(str(teacher_dir), str(tiny_ingest), 48)
    with np.load(arrays) as f:
        targets, n_train = f["train_teacher_log_probs"], len(f["train_labels"])
    assert targets.shape == (n_train, 7) and (targets.argmax(1) == LABELS.index("happy")).all()
    assert sorted(map(tuple, np.round(targets, 4))) == sorted(map(tuple, np.round(expected["log_probs"], 4)))

    recipe_file = tmp_path / "student.toml"
    recipe_file.write_text(f'arch = "vgg_xs"\nepochs = 2\nbatch_size = 32\naugment = "light"\n'
                           f'teacher = "{teacher_dir}"\ndistill_alpha = 0.9\n')
    run_dir = tmp_path / "run"
    portable("train", "--arrays", arrays, "--config", recipe_file, "--out", run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    assert run["distillation"] == {"teacher": version, "teacher_tta": "none", "alpha": 0.9, "temperature": 4.0}
    model_dir = tmp_path / "imported"
    run_cli("train", "--config", recipe_file, "--data", tiny_ingest, "--model-dir", model_dir, "--import-run", run_dir)
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["training"]["distillation"]["teacher"] == version
    assert not (model_dir / distill.TARGETS_FILE).exists()  # an import computes no targets of its own

    # --init-weights: an exported model, checked against its fingerprint as emotion train checks it
    recipe_file.write_text(recipe_file.read_text().replace("epochs = 2", "epochs = 1"))
    portable("train", "--arrays", arrays, "--config", recipe_file, "--out", tmp_path / "warm", "--init-weights", teacher_dir)
    warm = json.loads((tmp_path / "warm" / "run.json").read_text())
    assert warm["init_weights"] == {"from": str(teacher_dir), "model_version": version}
    torn = tmp_path / "torn"
    shutil.copytree(teacher_dir, torn)
    _always_teacher(tmp_path / "other", "sad")
    shutil.copy(tmp_path / "other" / "export" / "model.keras", torn / "export" / "model.keras")

    portable("export-arrays", "--data", tiny_ingest, "--output", plain)
    poisoned = tmp_path / "poisoned.npz"  # the array file is read back: untrusted input
    with np.load(arrays) as f:
        content = {k: f[k] for k in f.files}
    content["train_teacher_log_probs"][3, 2] = np.nan
    np.savez(poisoned, **content)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(arrays.read_bytes()[:5000])
    refused = [portable("train", "--arrays", plain, "--config", recipe_file, "--out", tmp_path / "r1", check=False),
               portable("train", "--arrays", poisoned, "--config", recipe_file, "--out", tmp_path / "r0", check=False),
               portable("train", "--arrays", truncated, "--config", recipe_file, "--out", tmp_path / "r4", check=False),
               portable("train", "--arrays", arrays, "--config", recipe_file, "--out", tmp_path / "r2",
                        "--init-weights", torn, check=False),
               portable("train", "--arrays", arrays, "--config", recipe_file, "--out", tmp_path / "r3",
                        "--init-weights", tmp_path / "missing.weights.h5", check=False)]
    for proc, reason in zip(refused, ("holds no teacher targets: write it with export-arrays --teacher",
                                      "train_teacher_log_probs is not one finite row per train image",
                                      "; write it again with export-arrays",
                                      "/metadata.json (fingerprint ", "does not exist")):
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert reason in proc.stderr.strip().splitlines()[-1]
