"""One TrainConfig for both trainers: defaults < recipe < flags, validated once; the metadata's
preprocessing steps and command come from their single sources."""

from __future__ import annotations

import argparse
import dataclasses

import cv2
import numpy as np
import pytest

from conftest import REPO, run_cli
from model import config, preprocess, recipe
from model.config import TrainConfig
from model.errors import UsageError

BASE = ["--data", "d", "--model-dir", "m"]


def test_defaults_live_in_the_dataclass_alone():
    cfg = config.from_argv(BASE)
    assert cfg == TrainConfig(data="d", model_dir="m")
    assert (cfg.batch_size, cfg.augment, cfg.epochs, cfg.seed) == (64, "strong", 30, 42)
    assert cfg.recipe_record is None
    # The parser holds no default of its own: a flag not given is absent from the parse.
    parsed = config.build_parser().parse_args(BASE)
    assert vars(parsed) == {"data": "d", "model_dir": "m"}
    assert all(a.default is argparse.SUPPRESS for a in config.build_parser()._actions if a.dest != "help")


def test_every_flag_is_a_field_and_every_recipe_key_a_flag():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    dests = {a.dest for a in config.build_parser()._actions} - {"help"}
    assert dests == fields - {"recipe"}
    assert config.recipe_keys() == dests - {"config", "data", "model_dir", "overwrite"}


def test_recipe_then_flags():
    shipped = recipe.load("shipped")
    cfg = config.from_argv(["--config", "shipped", *BASE, "--epochs", "3"])
    assert (cfg.arch, cfg.batch_size, cfg.augment, cfg.seed, cfg.epochs) == (
        shipped["arch"], shipped["batch_size"], shipped["augment"], shipped["seed"], 3)
    assert cfg.recipe_record == {"config": "shipped", "values": {k: v for k, v in shipped.items() if k != "config"}}


def test_import_run_means_no_epochs():
    assert config.from_argv([*BASE, "--import-run", "r"]).epochs == 0
    with pytest.raises(UsageError, match="--epochs 0 only with --import-run"):
        config.from_argv([*BASE, "--epochs", "0"])


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size 0: must be positive"),
    (["--epochs", "-1"], "--epochs -1: must be 0 or more"),
    (["--arch", "vgg_q"], "--arch vgg_q: must be one of resnet_s, vgg_m, vgg_s, vgg_xs"),
    (["--lr", "0"], "--lr 0.0: must be positive"),
    (["--label-smoothing", "1"], "--label-smoothing 1.0: must lie in [0, 1)"),
    (["--distill-alpha", "1.5"], "--distill-alpha 1.5: must lie in [0, 1]"),
    (["--distill-temperature", "0"], "--distill-temperature 0.0: must be positive"),
    (["--cpu-replicas", "-2"], "--cpu-replicas -2: must be 0 or more"),
])
def test_out_of_range_flags_are_usage_errors(flags, message):
    with pytest.raises(UsageError) as err:
        config.from_argv([*BASE, *flags])
    assert str(err.value) == message


@pytest.mark.parametrize("text, message", [
    ('batch_size = "64"\n', "batch_size = '64' must be an integer, not str"),
    ("epochs = 1.5\n", "epochs = 1.5 must be an integer, not float"),
    ("epochs = true\n", "epochs = True must be an integer, not bool"),
    ('augment = "heavy"\n', "augment = 'heavy' must be one of light, strong"),
    ('optimizer = "adam"\n', "optimizer = 'adam' must be one of sgd, adamw"),
    ("fresh = 1\n", "fresh = 1 must be true or false, not int"),
    ("label_smoothing = -0.1\n", "label_smoothing = -0.1 must lie in [0, 1)"),
    ('epochz = 3\n', "unknown option(s) epochz"),
    ('model_dir = "/elsewhere"\n', "unknown option(s) model_dir"),
])
def test_bad_recipe_values_are_usage_errors_naming_the_recipe(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as err:
        config.from_argv(["--config", str(path), *BASE])
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_bad_recipe_value_is_one_line_and_exit_2_from_the_command(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("batch_size = 0\n")
    proc = run_cli("train", "--config", path, "--data", tmp_path, "--model-dir", tmp_path / "m", check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"emotion train: error: recipe {path}: batch_size = 0 must be positive"], proc.stderr


def test_an_integer_where_a_number_is_wanted_becomes_a_float(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("lr = 1\nwarmup_epochs = 0\n")
    cfg = config.from_argv(["--config", str(path), *BASE])
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and isinstance(cfg.warmup_epochs, float)
    assert cfg.recipe == {"lr": 1, "warmup_epochs": 0}  # recorded as the recipe says


def test_the_portable_trainer_builds_the_same_config(tmp_path):
    from model.train_portable import portable_config

    args = argparse.Namespace(config="shipped", seed=None, epochs=0, init_weights=None)
    assert portable_config(args) == config.build("shipped")
    args = argparse.Namespace(config="demo", seed=7, epochs=2, init_weights=None)
    cfg = portable_config(args)
    assert (cfg.seed, cfg.epochs, cfg.arch) == (7, 2, recipe.load("demo")["arch"])
    # A recipe without batch_size or augment trains with the defaults emotion train uses.
    bare = tmp_path / "bare.toml"
    bare.write_text('arch = "vgg_xs"\n')
    cfg = portable_config(argparse.Namespace(config=str(bare), seed=None, epochs=0, init_weights=None))
    assert (cfg.batch_size, cfg.augment) == (TrainConfig.batch_size, TrainConfig.augment) == (64, "strong")
    typo = tmp_path / "typo.toml"
    typo.write_text("bach_size = 32\n")
    with pytest.raises(UsageError, match="unknown option"):
        portable_config(argparse.Namespace(config=str(typo), seed=None, epochs=0, init_weights=None))


# --------------------------------------------------------------------------- provenance


def test_command_line_names_no_checkout_path():
    root = str(REPO)
    assert config.command_line([f"{root}/beam_pipelines/cli.py", "train", "--init-weights", f"{root}/model/shipped",
                                "--data", "/tmp/fer-out"]) == \
        "python -m beam_pipelines.cli train --init-weights model/shipped --data /tmp/fer-out"
    assert config.command_line([f"{root}/model/train_portable.py", "train", "--out", "r"]) == \
        "python -m model.train_portable train --out r"
    assert config.command_line([f"{root}/.venv/bin/emotion", "train"]) == "emotion train"
    assert config.command_line(["emotion", "train", "--model-dir", "rel/dir"]) == "emotion train --model-dir rel/dir"


# --------------------------------------------------------------------------- preprocessing steps


def test_the_described_resize_is_the_resize_the_code_does():
    """metadata.json's steps name an interpolation per direction: each must be what resize() computes."""
    steps = preprocess.STEPS
    down, up = (steps.split(f" {word}")[0].rsplit(" ", 1)[-1].lstrip("(") for word in ("down", "up"))
    rng = np.random.default_rng(0)
    for side, name in ((97, down), (17, up)):
        gray = rng.integers(0, 256, (side, side), dtype=np.uint8)
        expected = cv2.resize(gray, (48, 48), interpolation=getattr(cv2, name))
        np.testing.assert_array_equal(preprocess.resize(gray, 48), expected)
        others = [n for n in ("INTER_AREA", "INTER_LINEAR", "INTER_CUBIC", "INTER_NEAREST") if n != name]
        for other in others:  # the check can tell the interpolations apart on this image
            assert not np.array_equal(cv2.resize(gray, (48, 48), interpolation=getattr(cv2, other)), expected)


def test_the_config_imports_no_framework():
    """The portable trainer builds its config where there is no TensorFlow: model.config imports none."""
    import subprocess
    import sys

    code = ("import sys, model.config, model.train_portable; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert not set(out.stdout.split()) & {"tensorflow", "keras", "apache_beam", "beam_pipelines"}
