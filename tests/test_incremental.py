"""`emotion predict --table ROOT --incremental`: day after day over one archive, only what is new or
changed is predicted; real DirectRunner runs on small generated images, the table read back with
DuckDB and pyarrow (the "current prediction of every image" queries the docs give)."""

from __future__ import annotations

import hashlib
import datetime as dt
import json
import pathlib
import shutil

import apache_beam as beam
import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import SHIPPED_MODEL, make_split_tree, synthetic_face, write_image

from beam_pipelines import cli
from beam_pipelines.predict import launcher as predict
from beam_pipelines.base import progress
from beam_pipelines.predict.incremental import ReadSeenHashes
from schemas.tables import (
    TABLE_PARTITION_SCHEMA,
    TABLE_READ_SCHEMA,
    TABLE_SCHEMA,
    bigquery_current_view,
    with_schema_version,
)

# The docs' query for the current prediction of every image: per uri, the latest run's rows (one, or
# one per face with --faces all).
CURRENT_DUCKDB = """
SELECT * FROM read_parquet('ROOT/*/*/*/*.parquet', hive_partitioning = true, union_by_name = true)
QUALIFY rank() OVER (PARTITION BY uri ORDER BY run_timestamp DESC, run_id DESC) = 1
"""


def current_pyarrow(root) -> pa.Table:
    """The docs' pyarrow version of the same query (the schema given: files of older tables versions
    read with nulls in the columns they lack, whichever file pyarrow would have taken its schema from)."""
    table = ds.dataset(root, format="parquet", partitioning=ds.partitioning(TABLE_PARTITION_SCHEMA, flavor="hive"),
                       schema=TABLE_READ_SCHEMA).to_table()
    latest = table.group_by("uri").aggregate([("run_timestamp", "max")])
    return table.join(latest, keys=["uri", "run_timestamp"], right_keys=["uri", "run_timestamp_max"],
                      join_type="inner")


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def table_files(root) -> dict:
    """Every file of the table, with its bytes (a failed run must leave them all as they were)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Three incremental runs over one folder: day 1 (all new), day 2 (nothing changed), day 3
    (2 images added, 1 changed)."""
    tmp = tmp_path_factory.mktemp("incremental")
    faces, root = tmp / "faces", tmp / "table"
    make_split_tree(faces, per_class=2, splits=("test",))
    faces = faces / "test"

    def run(name, *extra):
        return predict.run(["--input", str(faces), "--output", str(tmp / name), "--table", str(root),
                            "--incremental", "--run-id", name, "--tta", "none", "--quiet", *extra])

    day1 = run("day-1")
    hashes1 = {p.as_posix(): sha256(p) for p in faces.rglob("*.png")}
    day2 = run("day-2")
    day2_counts = progress.snapshot()  # this process's counters of day 2 (the DirectRunner runs here)
    added = [write_image(faces / "happy" / f"new_{i}.png", synthetic_face(900 + i, label=3)) for i in range(2)]
    changed = sorted((faces / "sad").glob("*.png"))[0]
    write_image(changed, synthetic_face(999, label=4))
    day3 = run("day-3")
    return {"tmp": tmp, "faces": faces, "root": root, "run": run, "day1": day1, "day2": day2, "day3": day3,
            "hashes1": hashes1, "day2_counts": day2_counts, "added": added, "changed": changed}


def predicted_uris(tmp, name) -> set[str]:
    return {r["uri"] for r in pq.read_table(tmp / name / "predictions").to_pylist()}


def test_the_first_run_predicts_everything_and_records_file_hashes(days):
    t = days["day1"]["totals"]
    assert t == {"matched": 14, "predicted": 14, "rejected": 0, "skipped_non_data": 0, "skipped_seen": 0,
                 "balanced": True}
    assert days["day1"]["incremental"] is True
    rows = pq.read_table(next(days["root"].glob("*/*/run_id=day-1"))).to_pylist()
    assert {r["uri"]: r["file_sha256"] for r in rows} == days["hashes1"]  # the bytes' hash, not the pixels'
    assert {(r["tta"], r["preprocessing"]) for r in rows} == {("none", "face_crop=none")}


def test_a_second_run_over_the_same_folder_predicts_nothing(days):
    t = days["day2"]["totals"]
    assert t == {"matched": 14, "predicted": 0, "rejected": 0, "skipped_non_data": 0, "skipped_seen": 14,
                 "balanced": True}
    assert predicted_uris(days["tmp"], "day-2") == set()
    # Seen images cost a read and a hash: none was decoded, none reached the model.
    counts = days["day2_counts"]
    assert counts.get("images_hashed") == 14 and counts.get("images_skipped_seen") == 14
    assert not counts.get("images_decoded") and not counts.get("images_predicted")
    assert not list(days["root"].glob("*/*/run_id=day-2/*.parquet"))  # no rows: no partition files
    run = pq.read_table(days["root"] / "_runs" / "day-2.parquet").to_pylist()[0]
    assert (run["predicted"], run["skipped_seen"], run["incremental"]) == (0, 14, True)


def test_added_and_changed_files_are_predicted_and_nothing_else(days):
    t = days["day3"]["totals"]
    assert t == {"matched": 16, "predicted": 3, "rejected": 0, "skipped_non_data": 0, "skipped_seen": 13,
                 "balanced": True}
    expected = {p.as_posix() for p in [*days["added"], days["changed"]]}
    assert predicted_uris(days["tmp"], "day-3") == expected
    stored = pq.read_table(next(days["root"].glob("*/*/run_id=day-3"))).to_pylist()
    assert {r["uri"]: r["file_sha256"] for r in stored} == {u: sha256(pathlib.Path(u)) for u in expected}


def test_the_current_prediction_of_every_image_duckdb_and_pyarrow(days):
    root, changed = days["root"], days["changed"].as_posix()
    con = duckdb.connect()
    current = con.sql(CURRENT_DUCKDB.replace("ROOT", str(root))).to_arrow_table()
    by_pyarrow = current_pyarrow(root)
    for table in (current, by_pyarrow):
        rows = {r["uri"]: r for r in table.to_pylist()}
        assert len(rows) == table.num_rows == 16  # one row per image, though the table holds 17
        assert rows[changed]["run_id"] == "day-3" and rows[changed]["file_sha256"] == sha256(days["changed"])
        assert {r["run_id"] for u, r in rows.items() if u != changed and "new_" not in u} == {"day-1"}
    assert con.execute(f"SELECT count(*) FROM read_parquet('{root}/*/*/*/*.parquet')").fetchone()[0] == 17
    # BigQuery: the same ranking, written beside the table's DDL.
    view = (root / "_bigquery" / "current_predictions.sql").read_text()
    assert view == bigquery_current_view() and "PARTITION BY uri ORDER BY run_timestamp DESC, run_id DESC" in view


def test_another_tta_or_model_version_predicts_everything(days, tmp_path):
    flip = days["run"]("flip-1", "--tta", "flip")
    assert flip["totals"]["predicted"] == 16 and flip["totals"]["skipped_seen"] == 0
    model = tmp_path / "model"
    shutil.copytree(SHIPPED_MODEL, model)
    metadata = json.loads((model / "metadata.json").read_text())
    (model / "metadata.json").write_text(json.dumps({**metadata, "model_version": "relabelled-1"}))
    other = days["run"]("other-1", "--model", str(model))
    assert other["model_version"] == "relabelled-1"
    assert other["totals"]["predicted"] == 16 and other["totals"]["skipped_seen"] == 0


def test_a_failed_incremental_run_leaves_the_table_as_it_was(days, monkeypatch):
    root = days["root"]
    write_image(days["faces"] / "fear" / "late.png", synthetic_face(777, label=2))
    before = table_files(root)

    def fail(*args, **kwargs):
        raise RuntimeError("a worker died")

    monkeypatch.setattr(predict.WriteSummary, "process", fail)
    with pytest.raises(Exception, match="a worker died"):
        days["run"]("failed-1")
    assert table_files(root) == before


def test_incremental_needs_a_table_and_an_image_folder(capsys, tmp_path):
    code = cli.main(["predict", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--incremental"])
    err = capsys.readouterr().err
    assert code == 2 and "--incremental" in err and "--table" in err and "Traceback" not in err
    (tmp_path / "data.tfrecord").write_bytes(b"not read")
    code = cli.main(["predict", "--input", str(tmp_path / "data.tfrecord"), "--output", str(tmp_path / "o"),
                     "--table", str(tmp_path / "t"), "--incremental"])
    err = capsys.readouterr().err
    assert code == 2 and "TFRecords" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "t").exists()


def _table_file(path, rows, schema=TABLE_SCHEMA):
    """A table file of `rows`, the columns they leave out filled with a value of their type."""
    filler = {pa.string(): "x", pa.int64(): 0, pa.float64(): 0.5, pa.bool_(): True,
              pa.timestamp("us", tz="UTC"): dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)}
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {f.name: [r[f.name] if f.name in r else filler[f.type] for r in rows] for f in schema}
    pq.write_table(pa.Table.from_pydict(columns, schema=with_schema_version(schema)), path)
    return str(path)


def test_seen_hashes_count_only_same_tta_and_preprocessing_and_never_old_tables(tmp_path):
    """ReadSeenHashes on real files: a row counts as seen only with this run's TTA and preprocessing;
    files written before the table recorded file hashes (tables version 2) and the run's own earlier
    partition (a re-run of its run id, which the commit replaces) count nothing."""
    base = tmp_path / "model_version=m" / "run_date=2024-01-01"
    rows = [{"file_sha256": "a", "tta": "none", "preprocessing": "face_crop=none"},
            {"file_sha256": "a", "tta": "none", "preprocessing": "face_crop=none"},  # twice: one hash
            {"file_sha256": "b", "tta": "flip", "preprocessing": "face_crop=none"},
            {"file_sha256": "c", "tta": "none", "preprocessing": "face_crop=haar"},
            {"file_sha256": None, "tta": "none", "preprocessing": "face_crop=none"}]
    current = _table_file(base / "run_id=old" / "part-00000.parquet", rows)
    own = _table_file(base / "run_id=me" / "part-00000.parquet", [{**rows[0], "file_sha256": "mine"}])
    v2 = pa.schema([f for f in TABLE_SCHEMA if f.name not in ("file_sha256", "tta", "preprocessing")])
    legacy = _table_file(base / "run_id=v2" / "part-00000.parquet", [{}, {}], v2)
    with TestPipeline() as p:
        seen = p | beam.Create([current, own, legacy]) | beam.ParDo(ReadSeenHashes("me", "none", "face_crop=none"))
        assert_that(seen, equal_to([("a", None)]))


def test_old_and_new_table_files_read_as_one_table(tmp_path):
    """A table written before file hashes were recorded (tables version 2), then by this version: the
    docs' queries read both, the old rows with nulls in the new columns, and find each uri's latest."""
    v2 = pa.schema([f for f in TABLE_SCHEMA if f.name not in ("file_sha256", "tta", "preprocessing")])
    day = lambda d: dt.datetime(2024, 1, d, tzinfo=dt.timezone.utc)  # noqa: E731
    _table_file(tmp_path / "model_version=m" / "run_date=2024-01-01" / "run_id=a" / "part-00000.parquet",
                [{"uri": "u1", "run_timestamp": day(1)}, {"uri": "u2", "run_timestamp": day(1)}], v2)
    _table_file(tmp_path / "model_version=m" / "run_date=2024-01-02" / "run_id=b" / "part-00000.parquet",
                [{"uri": "u1", "run_timestamp": day(2), "file_sha256": "h1", "tta": "none",
                  "preprocessing": "face_crop=none"}])
    expected = {"u1": ("b", "h1"), "u2": ("a", None)}
    by_duckdb = duckdb.sql(CURRENT_DUCKDB.replace("ROOT", str(tmp_path))).to_arrow_table()
    for table in (by_duckdb, current_pyarrow(tmp_path)):
        assert {r["uri"]: (r["run_id"], r["file_sha256"]) for r in table.to_pylist()} == expected


def test_faces_all_into_the_table_skips_a_seen_photo_with_all_its_faces(tmp_path):
    """--faces all: a photo's faces are rows of the table (one file hash each); the next incremental run
    skips the photo once, with all its faces; a run of a row per image does not count them as seen."""
    photos, root = tmp_path / "photos", tmp_path / "table"
    (photos / "group").mkdir(parents=True)
    shutil.copy(pathlib.Path(__file__).parent / "data" / "two_faces.jpg", photos / "group" / "a.jpg")

    def run(name, *extra):
        return predict.run(["--input", str(photos), "--output", str(tmp_path / name), "--table", str(root),
                            "--incremental", "--run-id", name, "--tta", "none", "--quiet", *extra])

    first = run("first", "--faces", "all")
    assert (first["totals"]["predicted"], first["totals"]["faces"]) == (1, 2)
    rows = pq.read_table(next(root.glob("*/*/run_id=first"))).to_pylist()
    assert sorted(r["face_index"] for r in rows) == [0, 1] and len({r["file_sha256"] for r in rows}) == 1
    assert {r["preprocessing"] for r in rows} == {"faces=all,face_crop=haar"}
    again = run("again", "--faces", "all")
    t = again["totals"]
    assert (t["predicted"], t["faces"], t["skipped_seen"], t["balanced"]) == (0, 0, 1, True)
    current = duckdb.sql(CURRENT_DUCKDB.replace("ROOT", str(root))).fetchall()
    assert len(current) == 2  # the photo's current prediction: both faces of the run that predicted it
    single = run("single", "--face-crop")
    assert (single["totals"]["predicted"], single["totals"]["skipped_seen"]) == (1, 0)
    assert len(duckdb.sql(CURRENT_DUCKDB.replace("ROOT", str(root))).fetchall()) == 1
