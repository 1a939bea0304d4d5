"""Recipes as code, bfloat16 on CPUs, and the portable trainer's round trip into the usual export."""

from __future__ import annotations

import json
import os

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
    assert meta["recipe"]["config"] == "shipped"
    assert meta["recipe"]["values"] == {k: v for k, v in recipe.load("shipped").items() if k != "config"}
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
    assert {"val", "test", "val_flip_tta"} <= set(meta["metrics"])
    from model import archs
    from model.export import load

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
    ingest = modules_after("import beam_pipelines.ingest, model.preprocess")
    assert "apache_beam" in ingest and "tensorflow" not in ingest and "keras" not in ingest
