"""Inference engines (model/engines.py) and the int8 file (model/quantize.py): the serving contract holds
whichever engine runs — the same views, the same classes, probabilities within the stated tolerance — and
an engine file that is not the one metadata.json describes is refused in one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import SAMPLE, SHIPPED_MODEL, run_cli
from model import engines, quantize, tta
from model.preprocess import PreprocessError, preprocess
from schemas import TTA_MODES


def sample_pixels(limit: int = 256) -> np.ndarray:
    images = []
    for path in sorted(SAMPLE.glob("*/*"))[:limit]:
        try:
            images.append(preprocess(path.read_bytes(), as_float=True)[0])
        except PreprocessError:
            pass
    return np.stack(images)[..., None].astype(np.float32)


@pytest.mark.parametrize("mode", TTA_MODES)
def test_numpy_views_equal_the_tensorflow_views(mode):
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 48, 48, 1)).astype(np.float32)
    ours = engines.tta_views(pixels, mode)
    theirs = [v.numpy() for v in tta.views(tf.constant(pixels), mode)]
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def test_shipped_int8_engine_keeps_the_serving_contract():
    """On the sample, with the shipped model's recommended TTA: the int8 engine picks the float model's
    class on >= 99% of images and no probability moves by more than the tolerance."""
    pixels = sample_pixels()
    litert, metadata = engines.load("shipped", "litert", "flip")
    keras_engine, _ = engines.load("shipped", "keras", "flip")
    assert isinstance(litert, engines.LiteRTEngine) and isinstance(keras_engine, engines.KerasEngine)
    p_int8, p_float = litert.probabilities(pixels), keras_engine.probabilities(pixels)
    assert p_int8.shape == p_float.shape == (len(pixels), 7)
    np.testing.assert_allclose(p_int8.sum(-1), 1.0, atol=1e-5)
    assert (p_int8.argmax(-1) == p_float.argmax(-1)).mean() >= engines.AGREEMENT_FLOOR
    assert np.abs(p_int8 - p_float).max() <= engines.PROBABILITY_TOLERANCE
    check = metadata["engines"][engines.INT8_KEY]["check"]
    assert check["split"] == "val" and check["argmax_agreement"] >= quantize.AGREEMENT_FLOOR


def test_int8_default_keeps_the_stated_contract_with_the_float_model():
    """The contract model/engines.py states: no probability moves by more than PROBABILITY_TOLERANCE, so
    the int8 default may pick another class only where the float model's two best classes are within
    twice that of each other (the serving test's awkward files found one such image)."""
    pixels = sample_pixels()
    flipped = pixels[:, :, ::-1, :]  # more images of the same kind: the mirrors
    pixels = np.concatenate([pixels, flipped])
    from model.artifact import read_metadata

    mode = read_metadata(str(SHIPPED_MODEL)).get("recommended_tta", "none")
    litert, metadata = engines.load("shipped", "litert", mode)
    keras_engine, _ = engines.load("shipped", "keras", mode)
    p_int8, p_float = litert.probabilities(pixels), keras_engine.probabilities(pixels)
    assert np.abs(p_int8 - p_float).max() <= engines.PROBABILITY_TOLERANCE
    top2 = np.sort(p_float, axis=-1)[:, -2:]
    differ = p_int8.argmax(-1) != p_float.argmax(-1)
    assert np.all(top2[differ, 1] - top2[differ, 0] <= 2 * engines.PROBABILITY_TOLERANCE)
    assert (~differ).mean() >= engines.AGREEMENT_FLOOR
    assert litert.temperature == keras_engine.temperature == engines.fitted_temperature(metadata)


def test_the_temperature_divides_the_logits_of_every_view():
    logits = np.random.default_rng(0).normal(0, 3, (8, 7))
    pixels = np.zeros((4, 48, 48, 1), np.float32)
    plain = engines.mean_probabilities(lambda x: logits, pixels, "flip")
    tempered = engines.mean_probabilities(lambda x: logits, pixels, "flip", temperature=2.0)
    expected = engines.softmax(logits / 2.0).reshape(2, 4, 7).mean(0)
    np.testing.assert_allclose(tempered, expected, rtol=1e-12)
    assert tempered.max() < plain.max()  # a temperature above 1 softens every probability


@pytest.mark.parametrize("value", [0.0, -1, "1.5", 1e9, True])
def test_a_hand_edited_temperature_is_refused(value):
    with pytest.raises(engines.EngineError, match="calibration.temperature"):
        engines.fitted_temperature({"calibration": {"temperature": value}})
    assert engines.fitted_temperature({}) == 1.0


def test_batches_of_every_size_give_the_same_probabilities():
    """Padded power-of-two chunks (and chunks past MAX_CHUNK) never leak into the real rows."""
    pixels = sample_pixels()
    litert, _ = engines.load("shipped", "litert", "none")
    whole = litert.probabilities(pixels)
    for n in (1, 3, 17, 64):
        np.testing.assert_allclose(litert.probabilities(pixels[:n]), whole[:n], atol=1e-5)
    litert.MAX_CHUNK = 16
    np.testing.assert_allclose(litert.probabilities(pixels), whole, atol=1e-5)


def test_auto_picks_litert_only_where_the_export_has_the_file():
    assert engines.resolve("auto", {"engines": {engines.INT8_KEY: {}}}) == "litert"
    assert engines.resolve("auto", {}) == "keras"
    with pytest.raises(engines.EngineError, match="no litert file"):
        engines.resolve("litert", {})


@pytest.fixture
def shipped_copy(tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, copy)
    return copy


def test_an_altered_int8_file_is_refused_in_one_line(shipped_copy, tmp_path):
    path = shipped_copy / "export" / engines.INT8_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    proc = run_cli("predict", "--input", SAMPLE, "--output", tmp_path / "out", "--model", shipped_copy, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "SHA-256 differs" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("engine", ["auto", "keras"])
def test_an_edited_image_size_is_refused_by_every_engine(shipped_copy, tmp_path, engine):
    """The int8 default holds metadata.json against its file as --engine keras holds it against model.keras."""
    metadata = json.loads((shipped_copy / "metadata.json").read_text())
    metadata["image_size"] = 64
    (shipped_copy / "metadata.json").write_text(json.dumps(metadata))
    proc = run_cli("predict", "--input", SAMPLE, "--output", tmp_path / "out", "--model", shipped_copy,
                   "--engine", engine, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "image_size 64" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_predict_prints_no_litert_delegate_line(tmp_path):
    proc = run_cli("predict", "--input", SAMPLE, "--output", tmp_path / "out", "--engine", "litert", "--quiet")
    assert "XNNPACK" not in proc.stderr + proc.stdout, proc.stderr[-1000:]


def test_an_export_without_the_file_runs_keras_and_refuses_litert(shipped_copy, tmp_path):
    (shipped_copy / "export" / engines.INT8_FILE).unlink()
    metadata = json.loads((shipped_copy / "metadata.json").read_text())
    del metadata["engines"]
    (shipped_copy / "metadata.json").write_text(json.dumps(metadata))
    refused = run_cli("predict", "--input", SAMPLE, "--output", tmp_path / "a", "--model", shipped_copy,
                      "--engine", "litert", check=False)
    assert refused.returncode == 2 and "no litert file" in refused.stderr and "Traceback" not in refused.stderr
    run_cli("predict", "--input", SAMPLE, "--output", tmp_path / "b", "--model", shipped_copy)
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["engine"] == "keras"


def test_predict_records_the_engine_it_ran_and_both_engines_agree(tmp_path):
    import pyarrow.parquet as pq

    rows = {}
    for engine in ("litert", "keras"):
        run_cli("predict", "--input", SAMPLE, "--output", tmp_path / engine, "--engine", engine)
        assert json.loads((tmp_path / engine / "summary.json").read_text())["engine"] == engine
        table = pq.read_table(tmp_path / engine / "predictions").to_pydict()
        rows[engine] = dict(zip(table["uri"], table["predicted_label"]))
    assert rows["litert"].keys() == rows["keras"].keys()
    agree = np.mean([rows["litert"][u] == rows["keras"][u] for u in rows["keras"]])
    assert agree >= quantize.AGREEMENT_FLOOR


def test_quantize_converts_a_trained_model_and_checks_it_on_val(tiny_model, tiny_ingest):
    """The export path: an int8 file from a freshly trained model, its agreement measured on val."""
    from model.loading import load

    model, _ = load(str(tiny_model))
    content = quantize.convert_int8(model)
    check = quantize.agreement(model, content, quantize.split_pixels(str(tiny_ingest), "val"))
    assert check["images"] > 0
    assert 0.0 <= check["max_probability_difference"] <= 1.0
    # A model whose weights moved is a different model: the check sees it.
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel + np.random.default_rng(1).normal(0, 1.0, kernel.shape).astype(kernel.dtype), bias])
    drifted = quantize.agreement(model, content, quantize.split_pixels(str(tiny_ingest), "val"))
    assert drifted["mean_probability_difference"] > check["mean_probability_difference"]
