"""Predict + evaluate: real Beam runs on the embedded sample, outputs checked with pyarrow and DuckDB."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_pipelines.ingest import launcher as ingest
from beam_pipelines.predict import launcher as predict
from conftest import SAMPLE, SHIPPED_MODEL
from model.metrics import confusion, summarize
from schemas import CONFUSION_SCHEMA, LABELS, PER_CLASS_SCHEMA, PREDICTIONS_SCHEMA, REJECTED_SCHEMA

# The sample: 7 classes x 30 images, plus an unknown-class folder (1 image, predicted without a
# label), an empty file, a truncated JPEG, a text file named .png and a .DS_Store.
LABELLED, UNLABELLED = 210, 1


@pytest.fixture(scope="module")
def model_dir():
    assert (SHIPPED_MODEL / "metadata.json").exists(), "the shipped model is part of the repository"
    return SHIPPED_MODEL


@pytest.fixture(scope="module")
def folder_run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict_folder")
    summary = predict.run(["--input", str(SAMPLE), "--output", str(out), "--model", str(model_dir)])
    return out, summary


def read_table(out, name):
    files = sorted((out / name).glob("*.parquet"))
    assert files, f"no {name} Parquet"
    return pq.ParquetDataset([str(f) for f in files]).read()


def test_schemas_totals_and_rejects(folder_run):
    out, summary = folder_run
    preds = read_table(out, "predictions")
    assert preds.schema.equals(PREDICTIONS_SCHEMA, check_metadata=False)
    rejected = read_table(out, "rejected")
    assert rejected.schema.equals(REJECTED_SCHEMA, check_metadata=False)
    assert pq.read_schema(out / "evaluation" / "per_class.parquet").equals(PER_CLASS_SCHEMA, check_metadata=False)
    assert pq.read_schema(out / "evaluation" / "confusion.parquet").equals(CONFUSION_SCHEMA, check_metadata=False)

    reasons = {r["uri"].rsplit("/", 1)[1]: r["reason"] for r in rejected.to_pylist()}
    assert reasons == {"empty.jpg": "empty_file", "truncated.jpg": "truncated_image", "notes.png": "not_an_image"}
    t = summary["totals"]
    assert t == {"matched": 215, "predicted": LABELLED + UNLABELLED, "rejected": 3, "skipped_non_data": 1,
                 "balanced": True}
    assert preds.num_rows == LABELLED + UNLABELLED
    rows = preds.to_pylist()
    unlabelled = [r for r in rows if r["true_label"] is None]
    assert [r["uri"].split("/")[-2] for r in unlabelled] == ["contempt"] and unlabelled[0]["correct"] is None
    for r in rows:
        probs = np.array([r[f"prob_{c}"] for c in LABELS])
        assert abs(probs.sum() - 1) < 1e-4
        assert r["predicted_label"] == LABELS[int(probs.argmax())] == LABELS[r["predicted_index"]]
        assert r["confidence"] == pytest.approx(probs.max())
    assert len({r["model_fingerprint"] for r in rows}) == 1 and len({r["run_timestamp"] for r in rows}) == 1
    bq = json.loads((out / "bigquery" / "predictions.schema.json").read_text())
    assert [f["name"] for f in bq] == PREDICTIONS_SCHEMA.names
    for plot in ("confusion_matrix", "per_class", "reliability", "samples"):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 5000


def test_metrics_agree_with_predictions(folder_run):
    out, summary = folder_run
    rows = [r for r in read_table(out, "predictions").to_pylist() if r["true_label"] is not None]
    y_true = [LABELS.index(r["true_label"]) for r in rows]
    y_pred = [r["predicted_index"] for r in rows]
    expected = summarize(confusion(y_true, y_pred))
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert metrics["examples"] == LABELLED
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert metrics["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert metrics["confusion"] == expected["confusion"]
    for label in LABELS:
        assert metrics["per_class"][label] == pytest.approx(expected["per_class"][label])
    # ECE recomputed from the rows.
    conf = np.array([r["confidence"] for r in rows])
    correct = np.array([r["correct"] for r in rows], float)
    bins = np.minimum((conf * 15).astype(int), 14)
    ece = sum(abs(conf[bins == b].sum() - correct[bins == b].sum()) for b in range(15)) / len(rows)
    assert metrics["expected_calibration_error"] == pytest.approx(ece)
    cm = {(r["true_label"], r["predicted_label"]): r["count"] for r in pq.read_table(out / "evaluation" / "confusion.parquet").to_pylist()}
    assert sum(cm.values()) == LABELLED
    assert all(cm[(LABELS[i], LABELS[j])] == expected["confusion"][i][j] for i in range(7) for j in range(7))
    assert summary["accuracy"] == pytest.approx(expected["accuracy"])


def test_duckdb_queries_from_the_readme(folder_run):
    out, _ = folder_run
    rows = read_table(out, "predictions").to_pylist()
    con = duckdb.connect()
    preds = f"read_parquet('{out}/predictions/*.parquet')"
    by_class = con.execute(f"""
        SELECT true_label, count(*) AS n, avg(CASE WHEN correct THEN 1 ELSE 0 END) AS accuracy
        FROM {preds} WHERE true_label IS NOT NULL GROUP BY true_label ORDER BY true_label""").fetchall()
    assert [(c, n) for c, n, _ in by_class] == [(c, 30) for c in sorted(LABELS)]
    for label, _, acc in by_class:
        mine = [r["correct"] for r in rows if r["true_label"] == label]
        assert acc == pytest.approx(sum(mine) / len(mine))
    pairs = con.execute(f"""
        SELECT true_label, predicted_label, count(*) AS n FROM {preds}
        WHERE true_label IS NOT NULL AND true_label <> predicted_label
        GROUP BY ALL ORDER BY n DESC, true_label, predicted_label LIMIT 5""").fetchall()
    mistakes = {}
    for r in rows:
        if r["true_label"] and not r["correct"]:
            key = (r["true_label"], r["predicted_label"])
            mistakes[key] = mistakes.get(key, 0) + 1
    assert pairs[0][2] == max(mistakes.values()) and mistakes[(pairs[0][0], pairs[0][1])] == pairs[0][2]
    low = con.execute(f"SELECT count(*) FROM {preds} WHERE confidence < 0.4").fetchone()[0]
    assert low == sum(r["confidence"] < 0.4 for r in rows)
    reasons = con.execute(f"SELECT reason, count(*) FROM read_parquet('{out}/rejected/*.parquet') GROUP BY reason").fetchall()
    assert sorted(reasons) == [("empty_file", 1), ("not_an_image", 1), ("truncated_image", 1)]
    per_class = con.execute(f"SELECT sum(support) FROM read_parquet('{out}/evaluation/per_class.parquet')").fetchone()[0]
    assert per_class == LABELLED


def _by_uri(out):
    return {r["uri"]: r for r in read_table(out, "predictions").to_pylist()}


def test_tfrecord_input_matches_image_input(folder_run, model_dir, tmp_path):
    out, _ = folder_run
    ingested = tmp_path / "ingest"
    stats = ingest.run(["--input", str(SAMPLE), "--output", str(ingested), "--val-fraction", "0.2"])
    tfr_out = tmp_path / "from_tfrecords"
    summary = predict.run(["--input", str(ingested), "--output", str(tfr_out), "--model", str(model_dir)])
    assert summary["totals"]["predicted"] == stats["totals"]["written"] == summary["totals"]["matched"]
    from_images, from_records = _by_uri(out), _by_uri(tfr_out)
    assert set(from_records) <= set(from_images)
    for uri, r in from_records.items():
        i = from_images[uri]
        assert (r["predicted_label"], r["true_label"], r["content_sha256"]) == (
            i["predicted_label"], i["true_label"], i["content_sha256"])
        assert all(abs(r[f"prob_{c}"] - i[f"prob_{c}"]) < 1e-5 for c in LABELS)
    assert {r["split"] for r in from_records.values()} <= {"train", "val", "test"}


def test_multiprocess_rerun_is_deterministic_and_leaves_nothing_stale(folder_run, model_dir, tmp_path):
    out, _ = folder_run
    again = tmp_path / "again"
    (again / "predictions").mkdir(parents=True)
    (again / "predictions" / "stale-00007-of-00009.parquet").write_bytes(b"old")
    (again / "evaluation").mkdir()
    (again / "evaluation" / "old.json").write_text("{}")
    # An earlier run's files (its manifest lists them): a re-run removes those it does not write again.
    (again / "_run.json").write_text(json.dumps({"run_id": "predict-earlier", "stage": "predict", "state": "complete",
        "files": ["predictions/stale-00007-of-00009.parquet", "evaluation/old.json"]}))
    summary = predict.run(["--input", str(SAMPLE), "--output", str(again), "--model", str(model_dir),
                           "--runner", "DirectRunner", "--direct_num_workers", "2",
                           "--direct_running_mode", "multi_processing"])
    assert summary["totals"]["balanced"]
    assert not (again / "predictions" / "stale-00007-of-00009.parquet").exists()
    assert not (again / "evaluation" / "old.json").exists()
    first, second = _by_uri(out), _by_uri(again)
    assert set(first) == set(second)
    for uri in first:
        assert first[uri]["predicted_label"] == second[uri]["predicted_label"]
        assert abs(first[uri]["confidence"] - second[uri]["confidence"]) < 1e-5


def test_tta_makes_mirror_images_agree(model_dir, tmp_path):
    import cv2

    from conftest import write_image

    face = cv2.imread(str(sorted((SAMPLE / "happy").glob("*.jpg"))[0]), cv2.IMREAD_GRAYSCALE)
    write_image(tmp_path / "in" / "a.png", face)
    write_image(tmp_path / "in" / "b.png", face[:, ::-1].copy())
    probs = {}
    for tta in ("none", "flip", "crops"):
        summary = predict.run(["--input", str(tmp_path / "in"), "--output", str(tmp_path / tta), "--model",
                               str(model_dir), "--tta", tta])
        assert summary["tta"] == tta and summary["totals"]["predicted"] == 2
        rows = {r["uri"].rsplit("/", 1)[1]: np.array([r[f"prob_{c}"] for c in LABELS])
                for r in read_table(tmp_path / tta, "predictions").to_pylist()}
        probs[tta] = rows
    # Both view sets are closed under mirroring: an image and its mirror get the same probabilities.
    np.testing.assert_allclose(probs["flip"]["a.png"], probs["flip"]["b.png"], atol=1e-5)
    np.testing.assert_allclose(probs["crops"]["a.png"], probs["crops"]["b.png"], atol=1e-5)
    np.testing.assert_allclose(probs["flip"]["a.png"], (probs["none"]["a.png"] + probs["none"]["b.png"]) / 2, atol=1e-5)


def test_face_crop_rejects_frames_without_a_face(model_dir, tmp_path):
    """--face-crop: a frame where the detector finds no face is a rejected row (no_face), never a guess;
    a face pasted into a larger frame is found and predicted."""
    import cv2

    from model.preprocess import PreprocessError, face_box

    def framed(path):
        frame = np.full((400, 300), 120, np.uint8)
        face = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        frame[100:292, 60:252] = cv2.resize(face, (192, 192), interpolation=cv2.INTER_CUBIC)
        return frame

    def detected(frame):
        try:
            return face_box(frame) is not None
        except PreprocessError:
            return False

    # A frame the detector finds a face in (it misses some tight FER crops; bench/face_crop_bench.py).
    frame = next(f for f in map(framed, sorted(SAMPLE.glob("happy/*.jpg"))) if detected(f))
    blank = np.tile(np.linspace(90, 160, 300), (300, 1)).astype(np.uint8)  # a smooth wall: no face
    (tmp_path / "in" / "happy").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "in" / "happy" / "framed.png"), frame)
    cv2.imwrite(str(tmp_path / "in" / "happy" / "no_face.png"), blank)
    out = tmp_path / "out"
    summary = predict.run(["--input", str(tmp_path / "in"), "--output", str(out), "--model", str(model_dir),
                           "--face-crop"])
    assert summary["totals"]["matched"] == 2 and summary["totals"]["balanced"]
    assert summary["rejected"] == {"no_face": 1}
    rejected = read_table(out, "rejected").to_pylist()
    assert [(r["uri"].rsplit("/", 1)[1], r["reason"]) for r in rejected] == [("no_face.png", "no_face")]
    assert [r["uri"].rsplit("/", 1)[1] for r in read_table(out, "predictions").to_pylist()] == ["framed.png"]


def test_mtcnn_detector_finds_faces_haar_misses(model_dir, tmp_path):
    """--face-detector mtcnn: the framed FER faces where the Haar cascade finds nothing are found."""
    import cv2

    from model.preprocess import PreprocessError, face_box

    def missed_by_haar(path):
        frame = np.full((360, 360), 90, np.uint8)
        face = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        frame[80:272, 100:292] = cv2.resize(face, (192, 192), interpolation=cv2.INTER_CUBIC)
        try:
            face_box(frame, "haar")
        except PreprocessError:
            return frame
        return None

    frames = [f for f in map(missed_by_haar, sorted(SAMPLE.glob("surprise/*.jpg"))[:12]) if f is not None][:3]
    assert frames, "the Haar cascade found every face"
    for i, frame in enumerate(frames):
        (tmp_path / "in" / "surprise").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "in" / "surprise" / f"f{i}.png"), frame)
    out = tmp_path / "out"
    summary = predict.run(["--input", str(tmp_path / "in"), "--output", str(out), "--model", str(model_dir),
                           "--face-crop", "--face-detector", "mtcnn"])
    assert summary["face_detector"] == "mtcnn" and summary["totals"]["balanced"]
    assert summary["totals"]["predicted"] >= len(frames) - 1, summary
