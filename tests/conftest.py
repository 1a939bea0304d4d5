"""Shared fixtures: small image trees made by the tests, a tiny ingest output, a tiny model."""

from __future__ import annotations

import os
import pathlib
import struct
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# No progress lines on a slow machine's stderr, where tests count its lines (test_progress.py lowers it).
os.environ.setdefault("EMOTION_PROGRESS_SECONDS", "3600")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE = REPO / "beam_pipelines" / "sample" / "faces"
SHIPPED_MODEL = REPO / "model" / "shipped"


def synthetic_face(seed: int, size: int = 48, label: int = 0) -> np.ndarray:
    """A distinct, smooth 8-bit image; brightness pattern depends on the label so a model can learn it."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size // 4, size // 4)).astype(np.float32)
    image = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size] / size
    pattern = 60 * np.sin((label + 1) * np.pi * xx) * np.cos((label % 3 + 1) * np.pi * yy)
    return np.clip(image * 0.5 + 64 + pattern, 0, 255).astype(np.uint8)


def write_image(path: pathlib.Path, image: np.ndarray, ext: str = ".png") -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(ext, image)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def jpeg_with_orientation(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG carrying an EXIF Orientation tag (APP1 segment inserted after SOI)."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    data = buf.tobytes()
    return data[:2] + segment + data[2:]


def make_split_tree(root: pathlib.Path, per_class: int = 12, splits=("train", "test"), seed: int = 0,
                    class_dirs=None) -> dict:
    """<root>/<split>/<class>/*.png with distinct images; returns {split: count}."""
    from schemas import LABELS

    class_dirs = class_dirs or {label: label for label in LABELS}
    counts = {}
    n = seed * 100000
    for split in splits:
        counts[split] = 0
        for index, label in enumerate(LABELS):
            for i in range(per_class):
                n += 1
                write_image(root / split / class_dirs[label] / f"{label}_{i}.png", synthetic_face(n, label=index))
                counts[split] += 1
    return counts


@pytest.fixture(scope="session")
def tiny_ingest(tmp_path_factory):
    """An ingest output of 7 classes x 40 train + 8 test synthetic images (val carved from train)."""
    from beam_pipelines.ingest import launcher as ingest

    root = tmp_path_factory.mktemp("tiny_raw")
    make_split_tree(root, per_class=40, splits=("train",), seed=1)
    make_split_tree(root, per_class=8, splits=("test",), seed=2)
    out = tmp_path_factory.mktemp("tiny_ingest")
    ingest.run(["--input", str(root), "--output", str(out), "--val-fraction", "0.15"])
    return out


def run_cli(*args, env=None, timeout=900, check=True) -> subprocess.CompletedProcess:
    """Runs `python -m beam_pipelines.cli ...` in a subprocess (a real process, as a user runs it)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.cli", *map(str, args)],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_model(tiny_ingest, tmp_path_factory):
    """A vgg_xs trained a few steps on tiny_ingest and exported."""
    model_dir = tmp_path_factory.mktemp("tiny_model")
    run_cli("train", "--data", tiny_ingest, "--model-dir", model_dir, "--arch", "vgg_xs", "--epochs", "2",
            "--batch-size", "32", "--steps-per-epoch", "4")
    return model_dir
