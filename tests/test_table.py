"""The appendable predictions table, the runs table and `emotion compare`: three runs (two models,
one re-run) appended into one table, queried as one by DuckDB and pyarrow with the README's queries."""

from __future__ import annotations

import json
import re

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import REPO, make_split_tree

from beam_pipelines import cli
from beam_pipelines import compare
from beam_pipelines.predict import launcher as predict
from schemas import LABELS, RUNS_SCHEMA, TABLE_PARTITION_KEYS, TABLE_SCHEMA
from schemas.tables import TABLES_VERSION, bigquery_external_table


def readme_queries() -> dict[str, str]:
    """The SQL block of the README's table section, by its `-- name` comments."""
    text = (REPO / "README.md").read_text()
    block = text.split("#### One table across runs", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    queries = {}
    for chunk in block.strip().split("\n\n"):
        name, sql = chunk.split("\n", 1)
        queries[name.removeprefix("-- ").strip()] = sql.strip().rstrip(";")
    return queries


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, tiny_model):
    """Two models over the same 21 images, and a re-run of the first run's id (replacing it)."""
    tmp = tmp_path_factory.mktemp("table")
    make_split_tree(tmp / "faces", per_class=3, splits=("test",))
    faces, root = tmp / "faces" / "test", tmp / "table"

    def run(name, *extra):
        return predict.run(["--input", str(faces), "--output", str(tmp / name), "--table", str(root), *extra])

    first = run("shipped", "--run-id", "shipped-1", "--tta", "none")
    other = run("tiny", "--model", str(tiny_model), "--run-id", "tiny-1")
    again = run("shipped-again", "--run-id", "shipped-1")  # same id: replaces the first run's partition
    return {"root": root, "tmp": tmp, "first": first, "other": other, "again": again}


def test_three_runs_read_as_one_table_with_a_partition_each(three_runs):
    root = three_runs["root"]
    parts = sorted(p.relative_to(root).parent.as_posix() for p in root.glob("*/*/*/*.parquet"))
    versions = {three_runs["again"]["model_version"], three_runs["other"]["model_version"]}
    assert len(versions) == 2
    assert {p.split("/")[2] for p in parts} == {"run_id=shipped-1", "run_id=tiny-1"}  # the re-run replaced its own
    assert all(re.fullmatch(r"model_version=[^/]+/run_date=\d{4}-\d{2}-\d{2}/run_id=[^/]+", p) for p in parts)
    assert not (root / "_staging").exists()

    con = duckdb.connect()
    n, runs = con.execute(f"SELECT count(*), count(DISTINCT run_id) FROM read_parquet('{root}/*/*/*/*.parquet', "
                          "hive_partitioning = true)").fetchone()
    assert (n, runs) == (42, 2)
    # The re-run's rows, not the first run's: the first used --tta none, the re-run the model's default.
    rerun = pq.read_table(three_runs["tmp"] / "shipped-again" / "predictions").to_pylist()
    stored = con.execute(f"SELECT uri, confidence FROM read_parquet('{root}/*/*/run_id=shipped-1/*.parquet')").fetchall()
    assert dict(stored) == pytest.approx({r["uri"]: r["confidence"] for r in rerun})

    table = ds.dataset(root, format="parquet", partitioning="hive")  # skips _runs/, _bigquery/
    assert set(TABLE_PARTITION_KEYS) <= set(table.schema.names)
    happy = table.to_table(filter=(ds.field("run_id") == "tiny-1") & (ds.field("predicted_label") == "happy"))
    assert happy.num_rows == sum(r["predicted_label"] == "happy"
                                 for r in pq.read_table(three_runs["tmp"] / "tiny" / "predictions").to_pylist())


def test_the_runs_table_accounts_for_every_row(three_runs):
    root = three_runs["root"]
    runs = pq.read_table(root / "_runs").to_pylist()
    assert sorted(r["run_id"] for r in runs) == ["shipped-1", "tiny-1"]
    for row in runs:
        summary = three_runs["again"] if row["run_id"] == "shipped-1" else three_runs["other"]
        assert row["predicted"] == summary["totals"]["predicted"] == 21
        assert (row["model_version"], row["tta"], row["accuracy"]) == (summary["model_version"], summary["tta"],
                                                                      summary["accuracy"])
        assert row["finished"] >= row["started"] and row["code_version"].startswith("emotion-pipeline")
    # Both models saw the same images: the same data fingerprint.
    assert len({r["data_fingerprint"] for r in runs}) == 1 and runs[0]["data_fingerprint"].endswith("-21")
    assert pq.read_schema(next((root / "_runs").glob("*.parquet"))).remove_metadata() == RUNS_SCHEMA


def test_rows_record_what_an_incremental_run_decides_on(three_runs):
    """Runs without --incremental record it too: each row's file bytes' hash, TTA and preprocessing."""
    import hashlib
    import pathlib

    rows = pq.read_table(next(three_runs["root"].glob("*/*/run_id=tiny-1"))).to_pylist()
    assert len(rows) == 21
    assert all(r["file_sha256"] == hashlib.sha256(pathlib.Path(r["uri"]).read_bytes()).hexdigest() for r in rows)
    assert {(r["tta"], r["preprocessing"]) for r in rows} == {(three_runs["other"]["tta"], "face_crop=none")}


def test_table_files_are_sorted_zstd_and_carry_the_schema_version(three_runs):
    for path in three_runs["root"].glob("*/*/*/*.parquet"):
        f = pq.ParquetFile(path)
        assert f.schema_arrow.metadata[b"emotion.tables_version"] == str(TABLES_VERSION).encode()
        assert f.schema_arrow.remove_metadata() == TABLE_SCHEMA
        assert all(f.metadata.row_group(0).column(i).compression == "ZSTD" for i in range(f.metadata.num_columns))
        rows = f.read().to_pylist()
        keys = [(r["predicted_label"], r["confidence"]) for r in rows]
        assert keys == sorted(keys)
        stats = f.metadata.row_group(0).column(TABLE_SCHEMA.names.index("predicted_label")).statistics
        assert stats.has_min_max and stats.min == keys[0][0]


def test_the_readme_queries_run_on_the_table(three_runs):
    root, con = three_runs["root"], duckdb.connect()
    queries = {name: sql.replace("'table/", f"'{root}/") for name, sql in readme_queries().items()}
    assert set(queries) == {"accuracy per model per day", "predicted-class mix per run (drift)",
                            "images two runs label differently", "lineage: where every row came from"}

    per_model = con.execute(queries["accuracy per model per day"]).fetchall()
    expected = {three_runs[k]["model_version"]: three_runs[k]["accuracy"] for k in ("again", "other")}
    assert {m: acc for m, _, _, acc in per_model} == pytest.approx(expected)

    mix = con.execute(queries["predicted-class mix per run (drift)"]).fetchall()
    shares = {}
    for run_id, _, label, share in mix:
        shares.setdefault(run_id, {})[label] = share
    assert set(shares) == {"shipped-1", "tiny-1"} and all(sum(s.values()) == pytest.approx(1.0) for s in shares.values())

    differ = con.execute(queries["images two runs label differently"].replace("RUN_A", "shipped-1")
                         .replace("RUN_B", "tiny-1")).fetchall()
    a = {r["uri"]: r["predicted_label"] for r in pq.read_table(three_runs["tmp"] / "shipped-again" / "predictions").to_pylist()}
    b = {r["uri"]: r["predicted_label"] for r in pq.read_table(three_runs["tmp"] / "tiny" / "predictions").to_pylist()}
    assert [row[0] for row in differ] == sorted(u for u in a if a[u] != b[u])

    lineage = con.execute(queries["lineage: where every row came from"]).fetchall()
    assert [(run_id, rows) for run_id, _, _, _, rows, predicted in lineage] == [("shipped-1", 21), ("tiny-1", 21)]
    assert all(rows == predicted for *_, rows, predicted in lineage)


def test_bigquery_definitions_are_written_and_well_formed(three_runs):
    root = three_runs["root"]
    definition = json.loads((root / "_bigquery" / "predictions.external.json").read_text())
    assert definition == bigquery_external_table(str(root))["definition"]
    gs = bigquery_external_table("gs://bucket/predictions")
    assert gs["definition"]["sourceUris"] == ["gs://bucket/predictions/model_version=*"]  # keeps _runs/ out
    assert gs["definition"]["hivePartitioningOptions"]["sourceUriPrefix"] == (
        "gs://bucket/predictions/{model_version:STRING}/{run_date:DATE}/{run_id:STRING}")
    assert [f["name"] for f in gs["definition"]["schema"]["fields"]] == TABLE_SCHEMA.names
    assert "WITH PARTITION COLUMNS (model_version STRING, run_date DATE, run_id STRING)" in gs["ddl"]
    assert "hive_partition_uri_prefix = 'gs://bucket/predictions'" in gs["ddl"]


def test_a_failed_run_leaves_no_partition(three_runs, monkeypatch):
    root = three_runs["root"]
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def fail(*args, **kwargs):
        raise RuntimeError("a worker died")

    monkeypatch.setattr(predict.WriteSummary, "process", fail)
    with pytest.raises(Exception, match="a worker died"):
        predict.run(["--input", str(three_runs["tmp"] / "faces" / "test"), "--output", str(three_runs["tmp"] / "failed"),
                     "--table", str(root), "--run-id", "failed-1"])
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == before


def test_compare_two_runs_from_outputs_and_from_the_table(three_runs, capsys):
    tmp = three_runs["tmp"]
    summary = compare.run(["--a", str(tmp / "shipped-again"), "--b", str(tmp / "tiny"), "--output", str(tmp / "cmp")])
    a = {r["uri"]: r for r in pq.read_table(tmp / "shipped-again" / "predictions").to_pylist()}
    b = {r["uri"]: r for r in pq.read_table(tmp / "tiny" / "predictions").to_pylist()}
    agree = sum(a[u]["predicted_label"] == b[u]["predicted_label"] for u in a)
    assert summary["images_in_both"] == 21 and summary["agreement"] == pytest.approx(agree / 21)
    assert summary["accuracy_a"] == pytest.approx(three_runs["again"]["accuracy"])
    assert summary["accuracy_b"] == pytest.approx(three_runs["other"]["accuracy"])

    out = tmp / "cmp" / "compare"
    agreement = pq.read_table(out / "agreement.parquet").to_pylist()
    assert sum(r["count"] for r in agreement) == 21
    assert sum(r["count"] for r in agreement if r["label_a"] == r["label_b"]) == agree
    differ = pq.read_table(out / "disagreements.parquet").to_pylist()
    assert len(differ) == 21 - agree
    lower = [min(r["confidence_a"], r["confidence_b"]) for r in differ]
    assert lower == sorted(lower, reverse=True)  # most confident disagreements first
    per_class = pq.read_table(out / "per_class.parquet").to_pylist()
    assert [r["label"] for r in per_class] == list(LABELS) and sum(r["support"] for r in per_class) == 21

    from_table = compare.run(["--table", str(three_runs["root"]), "--a", "shipped-1", "--b", "tiny-1",
                              "--output", str(tmp / "cmp-table")])
    assert {k: from_table[k] for k in ("agreement", "accuracy_a", "accuracy_b")} == pytest.approx(
        {k: summary[k] for k in ("agreement", "accuracy_a", "accuracy_b")})

    code = cli.main(["compare", "--table", str(three_runs["root"]), "--a", "shipped-1", "--b", "nope",
                     "--output", str(tmp / "cmp-bad")])
    err = capsys.readouterr().err
    assert code == 2 and "run nope is not in the runs table" in err and "Traceback" not in err
