"""Photo archives: a row per face (--faces all), abstention (--min-confidence / --min-margin) and the
user's slices (--slices), on real Beam runs; every number checked against the rows with DuckDB.

tests/data/two_faces.jpg (360x180, 8 KB): two faces of the embedded sample (happy/PrivateTest_25630075.jpg
and happy/PrivateTest_27200809.jpg, FER2013) enlarged to 130 px side by side on a grey canvas; both
detectors find both (docs/photo-archives.md).
"""

from __future__ import annotations

import json
import pathlib
import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipelines.predict import launcher as predict
from model.errors import UsageError
from beam_pipelines.predict.slices import NONE_VALUE, macro_f1_interval, read_slices, wilson
from conftest import SAMPLE, SHIPPED_MODEL
from model.metrics import confusion, summarize
from model.preprocess import FACE_DETECTORS, PreprocessError, decode_gray, detect_faces, preprocess, preprocess_faces
from schemas import LABELS, PREDICTIONS_SCHEMA, SLICES_SCHEMA

TWO_FACES = pathlib.Path(__file__).parent / "data" / "two_faces.jpg"


def rows_of(out) -> str:
    return f"'{out}/predictions/*.parquet'"


@pytest.mark.parametrize("detector", FACE_DETECTORS)
def test_every_face_is_found_with_its_box_and_the_largest_is_the_default_crop(detector):
    data = TWO_FACES.read_bytes()
    faces, digest = preprocess_faces(data, as_float=True, face_detector=detector)
    assert len(faces) == 2
    (first, a), (_, b) = faces
    assert a.width * a.height >= b.width * b.height  # largest first
    assert abs(a.x - b.x) > 100  # two different places: one on the left, one on the right
    assert sorted([a.x < 180, b.x < 180]) == [False, True]
    height, width = decode_gray(data).shape
    for face in (a, b):
        assert 0 <= face.x and face.x + face.width <= width and 0 <= face.y and face.y + face.height <= height
        assert face.score > (0.9 if detector == "mtcnn" else 4)
    # face 0 is exactly what the one-row-per-image default crops
    single, single_digest = preprocess(data, face_crop=True, as_float=True, face_detector=detector)
    np.testing.assert_array_equal(first, single)
    assert digest == single_digest


def test_a_frame_without_a_face_is_no_face():
    blank = np.tile(np.linspace(90, 160, 300), (300, 1)).astype(np.uint8)
    with pytest.raises(PreprocessError) as caught:
        detect_faces(blank, "haar")
    assert caught.value.reason == "no_face"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """happy/two_faces.jpg, happy/<a sample face>, unlabelled/two_faces_copy.jpg, happy/no_face.png."""
    import cv2

    root = tmp_path_factory.mktemp("archive")
    (root / "happy").mkdir()
    (root / "unsorted").mkdir()
    shutil.copy(TWO_FACES, root / "happy" / "two_faces.jpg")
    shutil.copy(TWO_FACES, root / "unsorted" / "group.jpg")
    blank = np.tile(np.linspace(90, 160, 300), (300, 1)).astype(np.uint8)
    cv2.imwrite(str(root / "happy" / "no_face.png"), blank)
    return root


@pytest.mark.parametrize("detector", FACE_DETECTORS)
def test_faces_all_gives_a_row_per_face_and_keeps_no_face_rejects(archive, tmp_path, detector):
    out = tmp_path / "out"
    summary = predict.run(["--input", str(archive), "--output", str(out), "--faces", "all",
                           "--face-detector", detector])
    t = summary["totals"]
    assert (t["matched"], t["predicted"], t["faces"], t["rejected"], t["balanced"]) == (3, 2, 4, 1, True)
    assert summary["rejected"] == {"no_face": 1} and summary["faces"] == "all"
    table = pq.ParquetDataset([str(f) for f in (out / "predictions").glob("*.parquet")]).read()
    assert table.schema.equals(PREDICTIONS_SCHEMA, check_metadata=False)
    rows = duckdb.sql(f"SELECT regexp_replace(uri, '.*/', '') AS name, face_index, face_x, face_y, face_width, "
                      f"face_height, face_detector, face_score, true_label FROM {rows_of(out)} "
                      "ORDER BY name, face_index").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("group.jpg", 0), ("group.jpg", 1), ("two_faces.jpg", 0),
                                            ("two_faces.jpg", 1)]
    for name in ("group.jpg", "two_faces.jpg"):
        boxes = [r[2:6] for r in rows if r[0] == name]
        assert boxes[0] != boxes[1] and abs(boxes[0][0] - boxes[1][0]) > 100
    assert {r[6] for r in rows} == {detector} and all(r[7] > 0 for r in rows)
    # every face of a photo in a class folder carries its label; the unsorted folder's none
    assert [r[8] for r in rows] == [None, None, "happy", "happy"]
    assert summary["labelled"] == 2
    assert json.loads((out / "evaluation" / "metrics.json").read_text())["examples"] == 2


def test_the_default_keeps_one_row_per_image_without_face_columns(archive, tmp_path):
    out = tmp_path / "out"
    summary = predict.run(["--input", str(archive), "--output", str(out), "--face-crop"])
    assert summary["totals"]["predicted"] == 2 and "faces" not in summary["totals"]
    (n, faces, abstained), = duckdb.sql(f"SELECT count(*), count(face_index), count(abstained) FROM {rows_of(out)}"
                                        ).fetchall()
    assert (n, faces, abstained) == (2, 0, 0)
    assert "abstention" not in summary


def test_faces_all_refuses_no_face_crop_and_thresholds_that_are_no_probability(archive, tmp_path, capsys):
    from beam_pipelines.cli import main

    assert main(["predict", "--input", str(archive), "--output", str(tmp_path / "o"), "--faces", "all",
                 "--no-face-crop"]) == 2
    assert "--faces all" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    for bad in ("1.5", "-0.1"):
        with pytest.raises(UsageError, match="--min-confidence"):
            predict.parse_args(["--input", "x", "--output", "y", "--min-confidence", bad])


# --------------------------------------------------------------------------- abstention


@pytest.fixture(scope="module")
def abstaining_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("abstain") / "out"
    summary = predict.run(["--input", str(SAMPLE), "--output", str(out), "--model", str(SHIPPED_MODEL),
                           "--min-confidence", "0.6", "--min-margin", "0.1", "--slices", str(sample_slices(out.parent))])
    return out, summary


def sample_slices(folder: pathlib.Path) -> pathlib.Path:
    """A CSV of the sample: a 'camera' by file-name prefix for most images (relative uris), none for
    a few (left out of the file), and a 'session' with an empty value for some."""
    files = sorted(p for p in SAMPLE.rglob("*.jpg"))
    lines = ["uri,camera,session"]
    for i, path in enumerate(files):
        if i % 17 == 0:
            continue  # not listed: "(none)"
        camera = "private" if path.name.startswith("PrivateTest") else "public"
        lines.append(f"{path.relative_to(SAMPLE)},{camera},{'' if i % 5 == 0 else 's' + str(i % 3)}")
    path = folder / "slices.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_abstention_keeps_probabilities_and_the_summary_agrees_with_the_rows(abstaining_run):
    out, summary = abstaining_run
    a = summary["abstention"]
    rows, answered, labelled_answered, correct_answered, wrong_flag = duckdb.sql(f"""
        SELECT count(*), count(*) FILTER (NOT abstained),
               count(*) FILTER (NOT abstained AND true_label IS NOT NULL),
               count(*) FILTER (NOT abstained AND correct),
               count(*) FILTER (abstained <> (confidence < 0.6 OR
                   confidence - list_sort([{', '.join('prob_' + c for c in LABELS)}], 'DESC')[2] < 0.1))
        FROM {rows_of(out)}""").fetchall()[0]
    assert 0 < answered < rows, "the thresholds should answer some rows and abstain on others"
    assert wrong_flag == 0
    assert (a["rows"], a["answered"], a["abstained"]) == (rows, answered, rows - answered)
    assert a["coverage"] == pytest.approx(answered / rows)
    assert a["labelled_answered"] == labelled_answered
    assert a["accuracy_answered"] == pytest.approx(correct_answered / labelled_answered)
    assert (a["min_confidence"], a["min_margin"]) == (0.6, 0.1)
    # abstained rows keep their label and probabilities
    (kept,) = duckdb.sql(f"SELECT count(*) FROM {rows_of(out)} WHERE abstained AND predicted_label IS NOT NULL "
                         "AND abs(prob_angry + prob_disgust + prob_fear + prob_happy + prob_sad + prob_surprise "
                         "+ prob_neutral - 1) < 1e-4").fetchall()[0]
    assert kept == rows - answered


def test_the_accuracy_coverage_curve_agrees_with_the_rows(abstaining_run):
    out, _ = abstaining_run
    curve = pq.read_table(out / "evaluation" / "coverage.parquet").to_pylist()
    assert len(curve) == 100 and curve[0]["coverage"] == pytest.approx(1.0)
    for point in (curve[0], curve[50], curve[80]):
        t = point["min_confidence"]
        answered, correct, labelled = duckdb.sql(
            f"SELECT count(*) FILTER (confidence >= {t}), count(*) FILTER (confidence >= {t} AND correct), "
            f"count(*) FROM {rows_of(out)} WHERE true_label IS NOT NULL").fetchall()[0]
        assert (point["answered"], point["correct"]) == (answered, correct), t
        assert point["coverage"] == pytest.approx(answered / labelled)
    assert [c["answered"] for c in curve] == sorted((c["answered"] for c in curve), reverse=True)
    assert (out / "plots" / "accuracy_coverage.png").stat().st_size > 5000


# --------------------------------------------------------------------------- slices


def test_slices_add_up_to_the_overall_counts_and_match_the_rows(abstaining_run):
    out, summary = abstaining_run
    table = pq.read_table(out / "evaluation" / "slices.parquet")
    assert table.schema.equals(SLICES_SCHEMA, check_metadata=False)
    slices = table.to_pylist()
    assert {s["column"] for s in slices} == {"camera", "session"}
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    rows_total = summary["totals"]["predicted"]
    for column in ("camera", "session"):
        part = [s for s in slices if s["column"] == column]
        assert sum(s["rows"] for s in part) == rows_total
        assert sum(s["labelled"] for s in part) == metrics["examples"] == summary["labelled"]
        assert sum(s["correct"] for s in part) == round(metrics["accuracy"] * metrics["examples"])
        assert sum(s["answered"] for s in part) == summary["abstention"]["answered"]
        assert NONE_VALUE in {s["value"] for s in part}
    camera = {s["value"]: s for s in slices if s["column"] == "camera"}
    assert set(camera) == {"private", "public", NONE_VALUE}
    # one slice, recomputed from the rows: the sample's PrivateTest files that the file lists
    listed = {line.split(",")[0] for line in (out.parent / "slices.csv").read_text().splitlines()[1:]}
    rows = duckdb.sql(f"SELECT uri, true_label, predicted_label FROM {rows_of(out)} WHERE true_label IS NOT NULL"
                      ).fetchall()
    private = [(t, p) for uri, t, p in rows
               if uri[len(str(SAMPLE)) + 1:] in listed and uri.rsplit("/", 1)[1].startswith("PrivateTest")]
    direct = summarize(confusion([LABELS.index(t) for t, _ in private], [LABELS.index(p) for _, p in private]))
    s = camera["private"]
    assert s["labelled"] == len(private)
    assert s["accuracy"] == pytest.approx(direct["accuracy"]) and s["macro_f1"] == pytest.approx(direct["macro_f1"])
    assert s["accuracy_low"] <= s["accuracy"] <= s["accuracy_high"]
    assert s["macro_f1_low"] <= s["macro_f1"] <= s["macro_f1_high"]


def test_intervals_are_wider_on_less_data():
    assert wilson(0, 0) == (None, None)
    small, large = wilson(8, 10), wilson(800, 1000)
    assert small[0] < large[0] < 0.8 < large[1] < small[1]
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 20, (7, 7)) + np.diag(np.full(7, 40))
    low, high = macro_f1_interval(matrix)
    point = summarize(matrix)["macro_f1"]
    assert low < point < high
    low10, high10 = macro_f1_interval(matrix * 10)
    assert high10 - low10 < high - low
    assert macro_f1_interval(matrix) == (low, high)  # seeded: runs agree


def test_a_slices_file_is_checked_before_anything_runs(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"uri": ["a/x.jpg", "/abs/y.jpg"], "site": [1, None], "camera": ["c1", "c2"]}), good)
    columns, lookup = read_slices(str(good), "/in")
    assert columns == ["site", "camera"]
    assert lookup == {"/in/a/x.jpg": ("1", "c1"), "/abs/y.jpg": (None, "c2")}
    cases = {
        "no_uri.csv": ("path,site\nx.jpg,a\n", "no 'uri' column"),
        "only_uri.csv": ("uri\nx.jpg\n", "only a 'uri' column"),
        "twice.csv": ("uri,site\nx.jpg,a\nx.jpg,b\n", "twice"),
        "ragged.csv": ("uri,site\nx.jpg,a,b\n", "more fields"),
        "binary.csv": (b"\xff\xfe\x00garbage", "UTF-8"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(UsageError, match=message):
            read_slices(str(path), "/in")
    with pytest.raises(UsageError, match="cannot be read"):
        read_slices(str(tmp_path / "missing.csv"), "/in")


def test_a_bad_slices_file_is_one_line_and_nothing_is_written(archive, tmp_path, capsys):
    from beam_pipelines.cli import main

    bad = tmp_path / "slices.csv"
    bad.write_text("path,site\nx.jpg,a\n")
    assert main(["predict", "--input", str(archive), "--output", str(tmp_path / "o"), "--slices", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "no 'uri' column" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
