"""model/trainer.py: one trainer interface, two runners. The tf.distribute runner (model/train_loop.py) and
the portable one (model/train_portable_loop.py) build the same network from one TrainConfig, start from
the same weights, compute the same loss, and the portable one does it without TensorFlow."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

N = 7


def _runners():
    from model import train_loop, train_portable_loop

    return {"tf.distribute": train_loop.RUNNER, "portable": train_portable_loop.RUNNER}


def _weights(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.get_weights()]


def _export(root):
    """An exported vgg_xs with seed-7 weights: (its directory, its weights)."""
    import keras

    from model import archs, export

    keras.utils.set_random_seed(7)
    model = archs.build("vgg_xs", 48, N)
    export.export(model, str(root), {"arch": "vgg_xs", "recommended_tta": "none", "metrics": {},
                                     "training": {"epochs_run": 1, "best_epoch": 1, "global_batch": 8,
                                                  "optimizer": "sgd", "peak_lr": 0.1}})
    return root, _weights(model)


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    """A .weights.h5 file of a vgg_xs (seed 3) and an exported vgg_xs (seed 7)."""
    import keras

    from model import archs

    root = tmp_path_factory.mktemp("start")
    keras.utils.set_random_seed(3)
    model = archs.build("vgg_xs", 48, N)
    model.save_weights(str(root / "start.weights.h5"))
    exported, exported_weights = _export(root / "exported")
    return {"h5": str(root / "start.weights.h5"), "h5_weights": _weights(model),
            "export": str(exported), "export_weights": exported_weights}


def test_both_runners_build_the_same_model_from_one_config():
    """Same TrainConfig, same seed: the same layers, shapes and initial weights from either runner."""
    import keras

    from model import config

    cfg = config.build(None, arch="vgg_xs", seed=11)
    built = {}
    for name, runner in _runners().items():
        keras.utils.set_random_seed(0)  # what prepare sets over
        runner.prepare(cfg, "float32")
        built[name] = runner.build_model(cfg, 48)
    a, b = built.values()
    assert a.name == b.name == "vgg_xs"
    assert [type(layer).__name__ for layer in a.layers] == [type(layer).__name__ for layer in b.layers]
    assert a.output_shape == b.output_shape == (None, N)
    for wa, wb in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_array_equal(wa, wb)
    runner = _runners()["portable"]
    runner.initialize(b, cfg)  # no --init-weights: the seeded weights stay
    for wa, wb in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize("source", ["h5", "export"])
def test_both_runners_start_from_the_same_weights(start_model, source):
    """--init-weights (a .weights.h5 file, or an exported model): both runners' models hold exactly the
    source's weights, not their seeded ones, and record the same source."""
    from model import config, trainer

    cfg = config.build(None, arch="vgg_xs", seed=11, init_weights=start_model[source])
    for name, runner in _runners().items():
        runner.prepare(cfg, "float32")
        model = runner.build_model(cfg, 48)
        seeded = _weights(model)
        runner.initialize(model, cfg)
        started = _weights(model)
        assert any(not np.array_equal(s, w) for s, w in zip(seeded, started)), name
        for got, want in zip(started, start_model[f"{source}_weights"], strict=True):
            np.testing.assert_array_equal(got, want, err_msg=name)
    with open(f"{start_model['export']}/metadata.json") as f:
        version = json.load(f)["model_version"]
    assert trainer.init_record(cfg) == {"from": start_model[source],
                                        "model_version": version if source == "export" else None}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Keras on the weights of another architecture
def test_both_runners_refuse_a_start_model_in_one_line(start_model, tmp_path):
    """A missing file, another architecture's weights, a torn export and an unreadable metadata.json: a
    UsageError from each runner."""
    import keras

    from model import archs, config
    from model.errors import UsageError

    keras.utils.set_random_seed(0)
    archs.build("vgg_s", 48, N).save_weights(str(tmp_path / "s.weights.h5"))
    torn, _ = _export(tmp_path / "torn")
    keras.utils.set_random_seed(8)
    archs.build("vgg_xs", 48, N).save(str(torn / "export" / "model.keras"))  # weights its metadata does not name
    unreadable, _ = _export(tmp_path / "unreadable")
    (unreadable / "metadata.json").unlink()
    (unreadable / "metadata.json").mkdir()  # a folder where the file goes: open() refuses it
    cases = [(str(tmp_path / "missing.weights.h5"), "does not exist"),
             (str(tmp_path / "s.weights.h5"), "cannot be loaded into --arch vgg_xs"),
             (str(torn), "does not match"),
             (str(unreadable), "cannot read it")]
    for source, reason in cases:
        cfg = config.build(None, arch="vgg_xs", init_weights=source)
        for runner in _runners().values():
            model = runner.build_model(cfg, 48)
            with pytest.raises(UsageError, match=reason):
                runner.initialize(model, cfg)


def _reference_loss(logits, labels, weights, teacher, smoothing, alpha, temperature):
    """The loss's formula in plain numpy (no Keras): the reference both runners are held to."""
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    smoothed = np.eye(N)[labels] * (1 - smoothing) + smoothing / N
    per_example = -(smoothed * log_softmax(logits)).sum(-1) * weights
    if teacher is None:
        return per_example
    soft = np.exp(log_softmax(teacher / temperature))
    distilled = -(soft * log_softmax(logits / temperature)).sum(-1) * temperature**2
    return (1 - alpha) * per_example + alpha * distilled


def _loss_inputs():
    rng = np.random.default_rng(5)
    logits = (rng.normal(size=(16, N)) * 3).astype(np.float32)
    labels = rng.integers(0, N, 16)
    weights = rng.uniform(0.5, 2.0, 16).astype(np.float32)
    teacher = np.log(rng.dirichlet(np.ones(N), 16)).astype(np.float32)
    return logits, labels, weights, teacher


@pytest.mark.parametrize("distils", [True, False])
def test_both_runners_compute_the_loss_of_its_formula(distils):
    """The tf.distribute step's call (one-hot, class weight, teacher log-probs as tensors) and the portable
    fit's Keras loss (packed y_true) give the formula's values, label smoothing and distillation included."""
    import tensorflow as tf

    from model import config, train_portable_loop
    from model.trainer import Loss

    logits, labels, weights, teacher = _loss_inputs()
    cfg = config.build(None, label_smoothing=0.1, distill_alpha=0.7, distill_temperature=4.0,
                       **({"teacher": "shipped"} if distils else {}))
    expected = _reference_loss(logits, labels, weights, teacher if distils else None, 0.1, 0.7, 4.0)
    losses = {name: runner.loss(cfg) for name, runner in _runners().items()}
    assert losses["tf.distribute"] == losses["portable"] == Loss.of(cfg)
    step = losses["tf.distribute"](tf.constant(logits), tf.one_hot(labels, N), tf.constant(weights),
                                   tf.constant(teacher) if distils else None)
    np.testing.assert_allclose(np.asarray(step), expected, rtol=1e-5, atol=1e-5)
    fit_loss, _ = train_portable_loop.loss_and_accuracy(cfg, N)
    packed = np.concatenate([np.eye(N)[labels], weights[:, None], *([teacher] if distils else [])], 1)
    np.testing.assert_allclose(np.asarray(fit_loss(tf.constant(packed, tf.float32), tf.constant(logits))),
                               expected, rtol=1e-5, atol=1e-5)


# The portable runner in a process of its own: on JAX where jax is installed (a lent accelerator's setup),
# with every import of TensorFlow made to fail; on the TensorFlow backend otherwise (Keras' numpy backend
# needs scipy, which this install lacks, so TensorFlow cannot be kept out of a Keras process here).
_PORTABLE_PROCESS = """
import json, os, sys
if os.environ["KERAS_BACKEND"] != "tensorflow":
    sys.modules["tensorflow"] = None  # any import of TensorFlow fails here
import keras
import numpy as np
from model import config
from model.train_portable_loop import RUNNER
args = json.loads(sys.argv[1])
cfg = config.build(None, arch="vgg_xs", seed=11, init_weights=args["init"], label_smoothing=0.1,
                   distill_alpha=0.7, distill_temperature=4.0, teacher="shipped")
model = RUNNER.build_model(cfg, 48)
RUNNER.initialize(model, cfg)
logits, onehot, weights, teacher = (np.asarray(args[k], np.float32) for k in ("logits", "onehot", "weights", "teacher"))
loss = keras.ops.convert_to_numpy(RUNNER.loss(cfg)(logits, onehot, weights, teacher))
print(json.dumps({"backend": keras.config.backend(), "tensorflow": sys.modules.get("tensorflow") is not None,
                  "weights": [w.tolist() for w in model.get_weights()[:2]], "n_weights": len(model.get_weights()),
                  "loss": loss.tolist()}))
"""


def test_the_portable_runner_in_its_own_process_starts_and_scores_alike(start_model):
    """The portable runner, in a process of its own on JAX when jax is installed (TensorFlow kept out) and
    on the TensorFlow backend otherwise, loads the exported start model (its fingerprint checked) and
    computes the loss: the same weights and loss values as the tf.distribute runner's here."""
    import tensorflow as tf

    from model import config

    # EMOTION_PORTABLE_PYTHON: another interpreter for the portable process (one with JAX and no
    # TensorFlow, as on the lent accelerator); it must run JAX.
    python = os.environ.get("EMOTION_PORTABLE_PYTHON", sys.executable)
    backend = "jax" if python != sys.executable or importlib.util.find_spec("jax") else "tensorflow"
    logits, labels, weights, teacher = _loss_inputs()
    args = {"init": start_model["export"], "logits": logits.tolist(), "onehot": np.eye(N)[labels].tolist(),
            "weights": weights.tolist(), "teacher": teacher.tolist()}
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([python, "-c", _PORTABLE_PROCESS, json.dumps(args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    assert result["tensorflow"] == (backend == "tensorflow")

    cfg = config.build(None, arch="vgg_xs", seed=11, init_weights=start_model["export"], label_smoothing=0.1,
                       distill_alpha=0.7, distill_temperature=4.0, teacher="shipped")
    runner = _runners()["tf.distribute"]
    model = runner.build_model(cfg, 48)
    runner.initialize(model, cfg)
    assert result["n_weights"] == len(model.get_weights())
    for got, want in zip(result["weights"], _weights(model)[:2], strict=True):
        np.testing.assert_array_equal(np.asarray(got, np.float32), want)
    here = runner.loss(cfg)(tf.constant(logits), tf.one_hot(labels, N), tf.constant(weights), tf.constant(teacher))
    np.testing.assert_allclose(result["loss"], np.asarray(here), rtol=1e-5, atol=1e-6)


def _module_level_imports(module: str) -> set[str]:
    """What `module` (ours) imports when it is imported: its top-level import statements."""
    import ast

    path = REPO.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if REPO.joinpath(*node.module.split("."), f"{a.name}.py").exists()}
    return found


def test_the_portable_runner_and_the_interface_import_no_tensorflow():
    """Importing model.trainer or model.train_portable_loop imports no TensorFlow, through any of our
    modules they import (a JAX machine has none); the tf.distribute runner does, as it should."""
    def reached(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            if module.split(".")[0] in ("model", "schemas"):
                todo += sorted(_module_level_imports(module))
        return seen

    for module in ("model.trainer", "model.train_portable_loop"):
        assert not {m for m in reached(module) if m.split(".")[0] == "tensorflow"}, module
    assert "tensorflow" in reached("model.train_loop")


def test_each_epoch_ends_in_the_same_history_row():
    """EpochEnd is history.csv's row for both runners: the columns in order, val's last; the selection rule."""
    from model.trainer import HISTORY_COLUMNS, VAL_COLUMNS, EpochEnd, improves, patience_spent

    row = EpochEnd(epoch=2, step=40, lr=0.01, loss=1.5, accuracy=0.4, images=640, seconds=2.0, val=(0.5, 0.45)).row()
    assert tuple(row) == HISTORY_COLUMNS + VAL_COLUMNS
    assert row["images_per_s"] == 320.0 and row["val_macro_f1"] == 0.45
    assert tuple(EpochEnd(1, 20, 0.01, 1.0, 0.3, 320, 1.0).row()) == HISTORY_COLUMNS
    assert improves(0.5, 0.45) and not improves(0.45, 0.45)
    assert patience_spent(3, 3) and not patience_spent(3, 2) and not patience_spent(0, 99)
