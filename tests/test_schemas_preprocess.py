"""Schemas (labels, aliases, TFRecord wire format, table schemas) and the shared preprocessing."""

from __future__ import annotations

import json
import struct

import cv2
import numpy as np
import pytest

from model.preprocess import PreprocessError, crop_face, decode_gray, pixel_hash, preprocess, sniff_format
from conftest import jpeg_with_orientation, synthetic_face
from schemas import LABELS, PREDICTIONS_SCHEMA, bigquery_schema, canonical_label, canonical_split, encode_example
from schemas.tfrecord import FEATURES, tfrecord_frame
from schemas.tables import bigquery_schema_json


@pytest.mark.parametrize(
    "folder, label",
    [("Angry", "angry"), ("anger", "angry"), ("Surprize", "surprise"), ("surprised", "surprise"),
     ("sadness", "sad"), ("Happiness", "happy"), ("NEUTRAL", "neutral"), ("disgusted", "disgust"),
     ("fearful", "fear"), ("3", "happy"), ("contempt", None), ("faces", None)],
)
def test_label_aliases(folder, label):
    assert canonical_label(folder) == label


def test_split_aliases():
    assert [canonical_split(s) for s in ("Train", "VAL", "validation", "Test", "PublicTest")] == [
        "train", "val", "val", "test", None]


def test_labels_are_the_seven_in_one_order():
    assert LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_encoded_example_parses_with_tensorflow(tmp_path):
    import tensorflow as tf

    from model.data import feature_spec

    pixels = synthetic_face(3).tobytes()
    values = {"image/raw": pixels, "image/height": 48, "image/width": 48, "image/sha256": "ab" * 32,
              "label/index": 5, "label/name": "surprise", "source/uri": "gs://b/ü.png", "split": "test",
              "schema_version": 1}
    serialized = encode_example(values)
    # Same bytes as TensorFlow's own serialiser would accept, parsed back by tf.io and by the proto class.
    parsed = tf.io.parse_single_example(serialized, feature_spec())
    assert parsed["image/raw"].numpy() == pixels
    assert parsed["label/index"].numpy() == 5
    assert parsed["source/uri"].numpy().decode() == "gs://b/ü.png"
    proto = tf.train.Example.FromString(serialized)
    assert set(proto.features.feature) == set(FEATURES)
    # Negative and large int64 values survive the hand-written varint.
    big = tf.train.Example.FromString(encode_example({**values, "label/index": -2, "image/height": 2**40}))
    assert big.features.feature["label/index"].int64_list.value[0] == -2
    assert big.features.feature["image/height"].int64_list.value[0] == 2**40
    # The TFRecord framing (with masked CRC32C) is read back by TensorFlow.
    path = tmp_path / "x.tfrecord"
    path.write_bytes(tfrecord_frame(serialized) + tfrecord_frame(b"second"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    assert records == [serialized, b"second"]


def test_bigquery_schema_follows_the_arrow_schema():
    bq = bigquery_schema(PREDICTIONS_SCHEMA)
    assert [f["name"] for f in bq] == PREDICTIONS_SCHEMA.names
    types = {f["name"]: (f["type"], f["mode"]) for f in bq}
    assert types["uri"] == ("STRING", "REQUIRED")
    assert types["true_label"] == ("STRING", "NULLABLE")
    assert types["prob_happy"] == ("FLOAT64", "REQUIRED")
    assert types["run_timestamp"] == ("TIMESTAMP", "REQUIRED")
    assert json.loads(bigquery_schema_json(PREDICTIONS_SCHEMA)) == bq  # the file predict writes


# --------------------------------------------------------------------------- decoding


def _encode(image, ext, params=()):
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tiff", ".webp"])
def test_formats_decode_to_the_same_gray_pixels(ext):
    gray = synthetic_face(11)
    params = [cv2.IMWRITE_JPEG_QUALITY, 100] if ext == ".jpg" else [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []
    out = decode_gray(_encode(gray, ext, params))
    assert out.dtype == np.uint8 and out.shape == gray.shape
    tolerance = 3 if ext == ".jpg" else 0
    assert np.abs(out.astype(int) - gray.astype(int)).max() <= tolerance


def test_colour_16bit_alpha_and_palette_inputs():
    gray = synthetic_face(12)
    colour = cv2.merge([gray, gray, gray])
    assert np.array_equal(decode_gray(_encode(colour, ".png")), gray)
    sixteen = gray.astype(np.uint16) * 257
    assert np.array_equal(decode_gray(_encode(sixteen, ".png")), gray)
    # Fully transparent pixels composite to white; opaque ones keep their value.
    rgba = cv2.merge([gray, gray, gray, np.full_like(gray, 255)])
    rgba[:10, :, 3] = 0
    out = decode_gray(_encode(rgba, ".png"))
    assert (out[:10] == 255).all() and np.array_equal(out[10:], gray[10:])
    # A palette PNG (colour type 3), built by hand: 2 colours, 1-bit indices.
    assert decode_gray(_palette_png()).tolist() == [[0, 255], [255, 0]]


def _palette_png() -> bytes:
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 2, 2, 1, 3, 0, 0, 0)
    plte = bytes([0, 0, 0, 255, 255, 255])
    raw = b"\x00" + bytes([0b01000000]) + b"\x00" + bytes([0b10000000])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"PLTE", plte) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_exif_orientation_is_applied():
    tall = np.zeros((40, 20), np.uint8)
    tall[:5, :] = 255  # a white band at the top
    upright = decode_gray(jpeg_with_orientation(tall, 1))
    rotated = decode_gray(jpeg_with_orientation(tall, 6))  # 6: rotate 90 degrees clockwise to display
    assert upright.shape == (40, 20)
    assert rotated.shape == (20, 40)
    assert rotated[:, -5:].mean() > 200 and rotated[:, :5].mean() < 50  # the band moved to the right


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"hello, I am a text file with a .png name", "not_an_image"),
        (b"GIF89a" + b"\x00" * 20, "unsupported_format"),
        (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 40, "unsupported_format"),
    ],
)
def test_bad_bytes_have_a_reason(data, reason):
    with pytest.raises(PreprocessError) as err:
        decode_gray(data)
    assert err.value.reason == reason


def test_truncated_and_corrupt_and_too_large():
    jpg = _encode(synthetic_face(5), ".jpg")
    with pytest.raises(PreprocessError, match="truncated_image"):
        decode_gray(jpg[: len(jpg) // 2])
    png = _encode(synthetic_face(5), ".png")
    with pytest.raises(PreprocessError, match="truncated_image"):
        decode_gray(png[:-20])
    # A file that decodes is not rejected for bytes after its end marker (phones append some).
    trailing = b"\x00MPF" + bytes(range(256)) * 8
    np.testing.assert_array_equal(decode_gray(jpg + trailing), decode_gray(jpg))
    np.testing.assert_array_equal(decode_gray(png + trailing), decode_gray(png))
    # ... but a JPEG cut inside its scan is truncated even when its EXIF thumbnail ends with a marker.
    exif = jpeg_with_orientation(synthetic_face(6), 1)
    thumb = b"\xff\xd8\xff\xd9"
    app1 = b"Exif\x00\x00" + thumb
    with_thumb = exif[:2] + b"\xff\xe1" + len(app1 + b"..").to_bytes(2, "big") + app1 + exif[2:]
    assert decode_gray(with_thumb).shape == (48, 48)
    with pytest.raises(PreprocessError, match="truncated_image"):
        decode_gray(with_thumb[: len(with_thumb) * 2 // 3])
    corrupt = png[:40] + bytes(len(png) - 52) + png[-12:]
    with pytest.raises(PreprocessError, match="corrupt_image"):
        decode_gray(corrupt)
    # A header claiming 100000 x 100000 pixels is refused before any decoding.
    huge = png[:16] + struct.pack(">II", 100000, 100000) + png[24:]
    with pytest.raises(PreprocessError, match="too_large"):
        decode_gray(huge)
    with pytest.raises(PreprocessError, match="too_large"):
        decode_gray(png, max_pixels=100)


def test_sniffing_ignores_extensions():
    assert sniff_format(_encode(synthetic_face(1), ".png")) == "png"
    assert sniff_format(_encode(synthetic_face(1), ".bmp")) == "bmp"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_format(b"II+\x00\x08\x00\x00\x00") == sniff_format(b"MM\x00+\x00\x08\x00\x00") == "tiff"  # BigTIFF
    assert sniff_format(b"P5\n4 4\n255\n" + bytes(16)) is None  # PNM: OpenCV reads it, we do not hand it over


def test_opencv_errors_other_than_its_ceiling_are_corrupt(monkeypatch):
    import model.preprocess as pp

    def refuse(buf, flags):
        raise cv2.error("OpenCV(4.14.0) grfmt_tiff.cpp:1: error: (-215:Assertion failed) ok in function 'readData'")

    monkeypatch.setattr(pp.cv2, "imdecode", refuse)
    with pytest.raises(PreprocessError) as err:
        decode_gray(_encode(synthetic_face(2), ".tiff"))
    assert err.value.reason == "corrupt_image" and "readData" in err.value.detail


def test_preprocess_resizes_and_hashes_source_pixels():
    big = cv2.resize(synthetic_face(9), (200, 120))
    out, digest = preprocess(_encode(big, ".png"), image_size=48)
    assert out.shape == (48, 48)
    assert digest == pixel_hash(big)
    assert preprocess(_encode(big, ".png"), image_size=64)[0].shape == (64, 64)


def test_face_crop_finds_no_face_in_noise():
    noise = np.random.default_rng(0).integers(0, 256, (120, 120)).astype(np.uint8)
    with pytest.raises(PreprocessError, match="no_face"):
        crop_face(noise)


def test_face_crop_on_real_faces():
    from conftest import SAMPLE

    # Sample faces are tight 48x48 FER crops; paste each, upscaled, into a larger canvas.
    found = tried = 0
    for path in sorted(SAMPLE.glob("*/*.jpg"))[::5]:
        try:
            face = decode_gray(path.read_bytes())
        except PreprocessError:
            continue
        tried += 1
        canvas = np.full((300, 300), 128, np.uint8)
        canvas[60:252, 50:242] = cv2.resize(face, (192, 192))
        try:
            crop = crop_face(canvas)
        except PreprocessError:
            continue
        found += 1
        assert 100 <= crop.shape[0] <= 300 and abs(crop.shape[0] - crop.shape[1]) <= 8
    assert tried >= 30 and found >= tried * 0.4
