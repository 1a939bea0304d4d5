"""Bounded decoding: every file in the hostile corpus gets its expected outcome from preprocess(), and
decompression bombs are refused from their headers, fast, without allocating the image."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import hostile_corpus as hc
from conftest import REPO
from model.preprocess import DEFAULT_MAX_PIXELS, PreprocessError, decode_gray, peek_dimensions, preprocess, sniff_format


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    hc.write_corpus(root)
    return root


def test_corpus_is_laid_out_under_class_folders(corpus_dir):
    from schemas import LABELS

    files = sorted(p.relative_to(corpus_dir).as_posix() for p in corpus_dir.rglob("*") if p.is_file())
    assert files == sorted(e.path for e in hc.CORPUS)
    assert {path.split("/")[0] for path in files} <= set(LABELS)
    assert all(e.bomb == (e.expected == "too_large") for e in hc.CORPUS)


@pytest.mark.parametrize("entry", hc.CORPUS, ids=[e.path for e in hc.CORPUS])
def test_preprocess_gives_the_expected_outcome(entry, corpus_dir):
    data = (corpus_dir / entry.path).read_bytes()  # through the file system: odd names included
    expected = hc.preprocess_expected(entry)
    if expected != hc.WRITTEN:
        with pytest.raises(PreprocessError) as err:
            preprocess(data, 48)
        assert err.value.reason == expected, err.value
        return
    pixels, digest = preprocess(data, 48)
    assert pixels.shape == (48, 48) and pixels.dtype == np.uint8 and len(digest) == 64
    as_float, _ = preprocess(data, 48, as_float=True)
    assert as_float.shape == (48, 48) and as_float.dtype == np.float32
    if entry.expected == "blank_image":  # ingest rejects it from preprocess's output: every pixel equal
        assert pixels.min() == pixels.max()


GENUINE = [  # (builder, width, height): what each builder declares, and what OpenCV decodes
    (lambda w, h: hc.tiff_bytes(w, h), 96, 70),
    (lambda w, h: hc.tiff_bytes(w, h, order=">", dims_type=3), 70, 96),
    (lambda w, h: hc.tiff_bytes(w, h, order=">", bigtiff=True, dims_type=16), 96, 70),
    (lambda w, h: hc.tiff_bytes(w, h, bigtiff=True, dims_type=4, samples=1), 70, 96),
    (lambda w, h: hc.png_bytes(w, h), 96, 70),
    (lambda w, h: hc.png_bytes(w, h, bit_depth=16), 70, 96),
    (lambda w, h: hc.bmp_rle8_bytes(w, h), 96, 70),
    (lambda w, h: hc.bmp_rle8_bytes(w, -h), 70, 96),  # top-down rows: negative height
    (lambda w, h: hc.bmp_core_bytes(w, h), 96, 70),
    (lambda w, h: hc.gif_with_screen(w, h), 40, 36),  # a 32x32 frame on a larger canvas
    (lambda w, h: hc.jpeg_with_dims(w, h, b"\x00junk"), 48, 48),
]


@pytest.mark.parametrize("build, width, height", GENUINE, ids=[f"genuine{i}" for i in range(len(GENUINE))])
def test_header_dimensions_are_what_opencv_decodes(build, width, height):
    data = build(width, height)
    assert peek_dimensions(data, sniff_format(data)) == (width, height)
    assert decode_gray(data).shape == (height, width)
    # The limit is on the header's own numbers: one pixel fewer is refused, before decoding.
    assert decode_gray(data, max_pixels=width * height).shape == (height, width)
    with pytest.raises(PreprocessError, match="too_large"):
        decode_gray(data, max_pixels=width * height - 1)


@pytest.mark.parametrize(
    "data, dims",
    [
        (hc.tiff_bytes(70000, 3), (70000, 3)),  # LONG width beyond SHORT's range
        (hc.tiff_bytes(5, 3, bigtiff=True, dims_type=16), (5, 3)),
        (hc.webp_vp8x_bytes(20000, 3), (20000, 3)),
        (hc.webp_vp8l_header(16383, 2), (16383, 2)),
        (hc.webp_vp8_header(2, 16383), (2, 16383)),
        (hc.jpeg_with_dims(65000, 3), (65000, 3)),
    ],
    ids=["tiff-long", "bigtiff-long8", "webp-vp8x", "webp-vp8l", "webp-vp8", "jpeg"],
)
def test_header_only_dimensions(data, dims):
    assert peek_dimensions(data, sniff_format(data)) == dims


_MEASURE = r"""
import json, resource, sys, time
import model.preprocess as pp  # first: OpenCV reads OPENCV_IO_MAX_IMAGE_PIXELS when cv2 is imported
import cv2
sys.path.insert(0, "tests")
import hostile_corpus as hc

if sys.argv[1] == "backstop":  # pretend the header parser knows nothing: OpenCV's ceiling alone
    pp.peek_dimensions = lambda data, fmt: None
bombs = [(e.path, e.build()) for e in hc.CORPUS if e.bomb]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
results = {}
for path, data in bombs:
    start = time.perf_counter()
    try:
        pp.preprocess(data, 48)
        reason = "written"
    except pp.PreprocessError as exc:
        reason = exc.reason
    results[path] = [reason, time.perf_counter() - start]
grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
ceiling = pp.os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"]
print(json.dumps({"results": results, "grown_mib": grown_kib / 1024, "ceiling": ceiling}))
"""


@pytest.mark.parametrize("mode", ["headers", "backstop"])
def test_bombs_are_refused_fast_without_allocating(mode):
    # A fresh interpreter: ru_maxrss is a high-water mark, and pytest's own process has imported cv2 before
    # model.preprocess (so OpenCV's ceiling is its default there, not ours).
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    run = subprocess.run([sys.executable, "-c", _MEASURE, mode], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["ceiling"] == str(DEFAULT_MAX_PIXELS)
    bombs = [e.path for e in hc.CORPUS if e.bomb]
    assert len(bombs) >= 10 and sorted(report["results"]) == sorted(bombs)
    for path, (reason, seconds) in report["results"].items():
        assert reason == "too_large", path
        assert seconds < 0.5, (path, seconds)  # decoding the TIFF bomb took ~4 s before
    # Each genuine bomb decodes to >= 256 MB (the RGB TIFFs to 768 MB): none of it may be allocated.
    assert report["grown_mib"] < 200, report
