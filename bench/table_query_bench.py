"""Selective DuckDB queries over a 10x predictions table: the per-run layout vs the table layout.

    python bench/table_query_bench.py --predictions /tmp/pred-test/predictions [--copies 10] [--runs 10]

Rows: a predict output's rows (FER2013 test: 7,178), repeated --copies times with distinct URIs in
each of --runs runs (10 x 10 x 7,178 = 717,800 rows), written twice, side by side:

  before  one file per run as the pipeline's per-run output is written (Beam's WriteToParquet: Snappy,
          one row group per file, rows in arrival order)
  after   the --table layout (beam_pipelines/table/): Hive partitions, rows sorted by
          (predicted_label, confidence), 128 Ki-row groups, ZSTD

and the same queries are timed on both (median of --repeats, DuckDB on every core). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from schemas.tables import TABLE_ROW_GROUP_ROWS, TABLE_SCHEMA, TABLE_SORT_KEYS  # noqa: E402

QUERIES = {
    "rare class, confident": "SELECT count(*), avg(confidence) FROM {t} WHERE predicted_label = 'disgust' AND confidence > 0.9",
    "low confidence to review": "SELECT count(*) FROM {t} WHERE confidence < 0.3",
    "one run, one class": "SELECT count(*), avg(prob_happy) FROM {t} WHERE run_id = 'run-03' AND predicted_label = 'happy'",
    "full scan (control)": "SELECT predicted_label, count(*) FROM {t} GROUP BY ALL",
}


def build(predictions: str, copies: int, runs: int, root: pathlib.Path) -> dict:
    base = pq.read_table(predictions)
    base = base.select([n for n in TABLE_SCHEMA.names if n in base.column_names])
    before, after = root / "before", root / "after"
    rows = 0
    for r in range(runs):
        run_id = f"run-{r:02d}"
        parts = []
        for c in range(copies):
            uris = pc.binary_join_element_wise(base["uri"], pa.scalar(f"#{r}-{c}"), "")
            parts.append(base.set_column(base.schema.get_field_index("uri"), "uri", uris))
        table = pa.concat_tables(parts)
        rows += table.num_rows
        folder = before / f"run_id={run_id}"
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "predictions-00000-of-00001.parquet", compression="snappy",
                       row_group_size=table.num_rows)
        folder = after / "model_version=m" / "run_date=2026-11-26" / f"run_id={run_id}"
        folder.mkdir(parents=True)
        ordered = table.sort_by([(k, "ascending") for k in TABLE_SORT_KEYS] + [("uri", "ascending")])
        pq.write_table(ordered, folder / "part-00000.parquet", compression="zstd", row_group_size=TABLE_ROW_GROUP_ROWS)
    size = {name: sum(p.stat().st_size for p in folder.rglob("*.parquet")) for name, folder in
            (("before", before), ("after", after))}
    return {"rows": rows, "bytes": size,
            "tables": {"before": f"read_parquet('{before}/*/*.parquet', hive_partitioning = true)",
                       "after": f"read_parquet('{after}/*/*/*/*.parquet', hive_partitioning = true)"}}


def time_query(con, sql: str, repeats: int) -> float:
    con.execute(sql).fetchall()  # warm: file metadata cached like a second query of a session
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        con.execute(sql).fetchall()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--predictions", required=True, help="a predict output's predictions/ folder or file")
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        built = build(args.predictions, args.copies, args.runs, pathlib.Path(tmp))
        con = duckdb.connect()
        results = {}
        for name, sql in QUERIES.items():
            answers = {layout: con.execute(sql.format(t=t)).fetchall() for layout, t in built["tables"].items()}
            same = [[round(v, 9) if isinstance(v, float) else v for v in row] for row in sorted(answers["before"])]
            assert same == [[round(v, 9) if isinstance(v, float) else v for v in row] for row in sorted(answers["after"])]
            seconds = {layout: time_query(con, sql.format(t=t), args.repeats) for layout, t in built["tables"].items()}
            results[name] = {"before_ms": round(seconds["before"] * 1000, 2), "after_ms": round(seconds["after"] * 1000, 2),
                             "speedup": round(seconds["before"] / seconds["after"], 2)}
    print(json.dumps({"rows": built["rows"], "bytes": built["bytes"], "queries": results}, indent=2))


if __name__ == "__main__":
    main()
