"""One serving contract: the SavedModel's `serve` signature (encoded bytes in) and `emotion predict`
give the same probabilities for the same file, with the TTA the model recommends."""

from __future__ import annotations

import shutil
import struct

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from beam_pipelines.predict import launcher as predict
from conftest import SAMPLE, SHIPPED_MODEL, jpeg_with_orientation
from model import export, loading, serving
from model.preprocess import preprocess
from schemas import LABELS

TOLERANCE = 0.02  # per class probability


def _faces(n: int) -> list[np.ndarray]:
    paths = sorted(p for p in SAMPLE.glob("*/*.jpg") if p.stat().st_size > 0)[:: 7][:n]
    return [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]


def _awkward_corpus(root) -> dict[str, bytes]:
    """Files a user's archive holds: non-square, colour, RGBA, 16-bit, EXIF-rotated, up- and downscaled."""
    faces = [f for f in _faces(12) if f is not None]
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}

    def encode(ext, image, params=()):
        ok, buf = cv2.imencode(ext, image, list(params))
        assert ok
        return buf.tobytes()

    for i, face in enumerate(faces):
        big = cv2.resize(face, (150, 150), interpolation=cv2.INTER_CUBIC)
        wide = cv2.copyMakeBorder(big, 0, 0, 75, 75, cv2.BORDER_CONSTANT, value=int(rng.integers(0, 255)))
        tall = cv2.copyMakeBorder(face, 20, 20, 0, 0, cv2.BORDER_REFLECT)
        colour = cv2.merge([np.clip(big * s, 0, 255).astype(np.uint8) for s in (0.8, 1.0, 1.1)])
        alpha = np.full_like(big, 255)
        alpha[:30] = 0  # a transparent band: composited over white
        alpha[30:60] = 128
        rgba = cv2.merge([*cv2.split(colour), alpha])
        gray_alpha_as_rgba = cv2.merge([face, face, face, np.full_like(face, 200)])
        sixteen = (big.astype(np.uint16) * 257 + rng.integers(0, 200, big.shape)).astype(np.uint16)
        upright = cv2.resize(face, (96, 64), interpolation=cv2.INTER_LINEAR)
        files[f"wide_{i}.png"] = encode(".png", wide)
        files[f"tall_{i}.jpg"] = encode(".jpg", tall, (cv2.IMWRITE_JPEG_QUALITY, 95))
        files[f"colour_{i}.jpg"] = encode(".jpg", colour, (cv2.IMWRITE_JPEG_QUALITY, 95))
        files[f"rgba_{i}.png"] = encode(".png", rgba)
        files[f"gray_alpha_{i}.png"] = encode(".png", gray_alpha_as_rgba)
        files[f"sixteen_{i}.png"] = encode(".png", sixteen)
        files[f"small_{i}.bmp"] = encode(".bmp", cv2.resize(face, (40, 40), interpolation=cv2.INTER_AREA))
        files[f"webp_{i}.webp"] = encode(".webp", colour, (cv2.IMWRITE_WEBP_QUALITY, 101))
        # Stored rotated, with the EXIF tag that turns it upright (6: rotate 90 degrees clockwise to view).
        files[f"exif6_{i}.jpg"] = jpeg_with_orientation(cv2.rotate(upright, cv2.ROTATE_90_COUNTERCLOCKWISE), 6)
        files[f"exif3_{i}.jpg"] = jpeg_with_orientation(cv2.rotate(upright, cv2.ROTATE_180), 3)
        files[f"exif8_{i}.jpg"] = jpeg_with_orientation(cv2.rotate(upright, cv2.ROTATE_90_CLOCKWISE), 8)
    for name, data in files.items():
        (root / "unlabelled").mkdir(parents=True, exist_ok=True)
        (root / "unlabelled" / name).write_bytes(data)
    return files


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped model with its SavedModel written (the repository carries only model.keras)."""
    model_dir = tmp_path_factory.mktemp("shipped_copy") / "model"
    shutil.copytree(SHIPPED_MODEL, model_dir)
    export.main(["--model-dir", str(model_dir)])
    return model_dir


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("awkward")
    return root, _awkward_corpus(root)


def test_tf_preprocessing_matches_opencv_pixel_for_pixel(corpus):
    _, files = corpus
    worst = {}
    for name, data in files.items():
        expected, _ = preprocess(data, 48, as_float=True)
        got = serving.preprocess(tf.constant(data), 48).numpy()[:, :, 0]
        worst[name] = float(np.abs(got - expected).max())
    # Float resampling differs in the last bits only; a wrong decoder setting, rotation, crop or colour
    # rule moves pixels by whole grey levels (the fast JPEG DCT: up to 16).
    assert max(worst.values()) <= 0.05, sorted(worst.items(), key=lambda kv: -kv[1])[:5]


def test_serve_signature_matches_predict(exported, corpus, tmp_path):
    """The same float model both sides (--engine keras): what differs is only the preprocessing path.
    The int8 engine's own tolerance against the float model is tests/test_engines.py's."""
    root, files = corpus
    meta = loading.read_metadata(str(exported))
    out = tmp_path / "pred"
    summary = predict.run(["--input", str(root), "--output", str(out), "--model", str(exported),
                           "--engine", "keras"])
    assert summary["totals"]["predicted"] == len(files)
    rows = pq.ParquetDataset(sorted(str(p) for p in (out / "predictions").glob("*.parquet"))).read().to_pylist()
    by_name = {r["uri"].rsplit("/", 1)[1]: np.array([r[f"prob_{c}"] for c in LABELS]) for r in rows}

    served = tf.saved_model.load(str(exported / "export" / "saved_model")).signatures["serve"]
    names = sorted(files)
    result = served(images=tf.constant([files[n] for n in names]))
    assert [label.decode() for label in result["labels"].numpy()] == list(LABELS)
    probabilities = result["probabilities"].numpy()
    diffs = {n: float(np.abs(probabilities[i] - by_name[n]).max()) for i, n in enumerate(names)}
    assert max(diffs.values()) <= TOLERANCE, (meta.get("recommended_tta"), sorted(diffs.items(), key=lambda kv: -kv[1])[:5])
    # The same class everywhere, and the probabilities are those of the recommended TTA (not one view).
    assert all(np.argmax(probabilities[i]) == np.argmax(by_name[n]) for i, n in enumerate(names))


def test_exif_orientation_parsed_from_jpeg_bytes():
    face = _faces(1)[0]
    for orientation in range(1, 9):
        data = jpeg_with_orientation(face, orientation)
        assert int(serving.exif_orientation(tf.constant(data))) == orientation
    ok, plain = cv2.imencode(".jpg", face)
    assert int(serving.exif_orientation(tf.constant(plain.tobytes()))) == 1
    # Big-endian TIFF header ("MM"), as cameras of some makers write it.
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)
    app1 = b"Exif\x00\x00" + tiff + b"\x00" * 4
    data = plain.tobytes()[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + plain.tobytes()[2:]
    assert int(serving.exif_orientation(tf.constant(data))) == 6
