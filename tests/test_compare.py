"""`emotion compare` on prediction files written here (real Parquet, the real command), its output
tables against schemas/compare.py, and the one Parquet reader (base/files.read_parquet) it shares with
the report."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pipelines import cli, compare
from beam_pipelines.base.files import parquet_num_rows, read_parquet
from schemas import AGREEMENT_SCHEMA, COMPARE_PER_CLASS_SCHEMA, DISAGREEMENTS_SCHEMA, LABELS, PER_CLASS_SCHEMA

# (uri, true label, run a's label and confidence, run b's label and confidence)
ROWS = [
    ("img/0.png", "happy", "happy", 0.9, "happy", 0.8),
    ("img/1.png", "sad", "sad", 0.7, "angry", 0.6),  # only a right
    ("img/2.png", "angry", "fear", 0.95, "angry", 0.9),  # only b right; the most confident disagreement
    ("img/3.png", None, "neutral", 0.5, "surprise", 0.55),  # unlabelled
    ("img/4.png", "disgust", "happy", 0.4, "sad", 0.3),  # neither right
]


def write_run(folder, side: str, version: str, extra_rows=()):
    """A predict output holding only what compare reads: predictions/*.parquet."""
    label, confidence = (2, 3) if side == "a" else (4, 5)
    rows = [*ROWS, *extra_rows]
    table = pa.table({
        "uri": [r[0] for r in rows],
        "content_sha256": [f"sha-{r[0]}" for r in rows],
        "true_label": pa.array([r[1] for r in rows], pa.string()),
        "predicted_label": [r[label] for r in rows],
        "confidence": [float(r[confidence]) for r in rows],
        "model_version": [version] * len(rows),
    })
    (folder / "predictions").mkdir(parents=True)
    pq.write_table(table, folder / "predictions" / "part-00000.parquet")
    return folder


@pytest.fixture
def two_runs(tmp_path):
    a = write_run(tmp_path / "a", "a", "model-a", extra_rows=[("img/only-a.png", "fear", "fear", 0.9, "fear", 0.9)])
    b = write_run(tmp_path / "b", "b", "model-b")
    return a, b, tmp_path / "out"


def test_compare_writes_its_tables_in_the_schemas_of_schemas_compare(two_runs):
    a, b, out = two_runs
    summary = compare.run(["--a", str(a), "--b", str(b), "--output", str(out), "--quiet"])
    assert (summary["images_in_both"], summary["only_in_a"], summary["only_in_b"]) == (5, 1, 0)
    assert summary["agreement"] == pytest.approx(1 / 5)
    assert (summary["only_a_correct"], summary["only_b_correct"], summary["labelled"]) == (1, 1, 4)
    assert (summary["model_version_a"], summary["model_version_b"]) == ("model-a", "model-b")
    assert json.loads((out / "compare" / "comparison.json").read_text())["agreement"] == summary["agreement"]

    for name, schema in (("agreement", AGREEMENT_SCHEMA), ("per_class", COMPARE_PER_CLASS_SCHEMA),
                         ("disagreements", DISAGREEMENTS_SCHEMA)):
        written = pq.read_schema(out / "compare" / f"{name}.parquet")
        assert written.equals(schema, check_metadata=False), name
        assert written.metadata[b"emotion.tables_version"]  # stamped by with_schema_version
    agreement = read_parquet(str(out / "compare" / "agreement.parquet")).to_pylist()
    assert len(agreement) == len(LABELS) ** 2 and sum(r["count"] for r in agreement) == 5
    assert {"label_a": "sad", "label_b": "angry", "count": 1} in agreement
    disagreements = read_parquet(str(out / "compare" / "disagreements.parquet")).to_pylist()
    assert [r["uri"] for r in disagreements] == ["img/2.png", "img/1.png", "img/3.png", "img/4.png"]
    assert [r["correct"] for r in disagreements] == ["b", "a", None, "neither"]


def test_the_per_class_schemas_of_compare_and_evaluation_stay_apart():
    """compare's per-class table holds two runs side by side; it is not the evaluation's."""
    assert not COMPARE_PER_CLASS_SCHEMA.equals(PER_CLASS_SCHEMA)
    assert {"recall_a", "recall_b", "f1_a", "f1_b"} <= set(COMPARE_PER_CLASS_SCHEMA.names)


def test_a_file_that_is_not_parquet_is_one_line(two_runs, capsys):
    a, b, out = two_runs
    (b / "predictions" / "part-00001.parquet").write_bytes(b"not parquet at all")
    code = cli.main(["compare", "--a", str(a), "--b", str(b), "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "part-00001.parquet cannot be read as Parquet" in err[0]
    assert not out.exists() or not (out / "compare").exists()


def test_the_parquet_reader_reads_columns_and_counts_rows_from_the_footer(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3], "y": ["a", "b", "c"]}), path)
    assert read_parquet(str(path), columns=["y"]).to_pydict() == {"y": ["a", "b", "c"]}
    assert parquet_num_rows(str(path)) == 3
    with pytest.raises(OSError):
        read_parquet(str(tmp_path / "missing.parquet"))


def test_a_run_compared_with_itself_says_so(two_runs, caplog):
    a, _, out = two_runs
    with caplog.at_level("INFO"):
        summary = compare.run(["--a", str(a), "--b", str(a) + "/", "--output", str(out)])
    assert summary["same_run"] is True and summary["agreement"] == 1.0
    assert any("same run" in r.getMessage() for r in caplog.records)
    b = write_run(out.parent / "other", "b", "model-b")
    assert compare.run(["--a", str(a), "--b", str(b), "--output", str(out.parent / "out2")])["same_run"] is False


def test_face_rows_are_matched_by_uri_and_face(tmp_path):
    """A run of a row per face against one of a row per image: the image's row meets face 0 (the
    largest face, the one a row per image crops); face 1 is only in the faces run."""
    def run(folder, faces, labels):
        table = pa.table({
            "uri": ["g.jpg"] * len(faces), "content_sha256": ["s"] * len(faces),
            "true_label": pa.array([None] * len(faces), pa.string()), "predicted_label": labels,
            "confidence": [0.9] * len(faces), "model_version": ["m"] * len(faces),
            "face_index": pa.array(faces, pa.int64()),
        })
        (folder / "predictions").mkdir(parents=True)
        pq.write_table(table, folder / "predictions" / "p.parquet")
        return folder

    faces = run(tmp_path / "faces", [0, 1], ["happy", "sad"])
    single = run(tmp_path / "single", [None], ["angry"])
    summary = compare.run(["--a", str(faces), "--b", str(single), "--output", str(tmp_path / "out")])
    assert (summary["images_in_both"], summary["only_in_a"], summary["only_in_b"]) == (1, 1, 0)
    differ = pq.read_table(tmp_path / "out" / "compare" / "disagreements.parquet").to_pylist()
    assert [(d["face_index"], d["label_a"], d["label_b"]) for d in differ] == [(0, "happy", "angry")]
