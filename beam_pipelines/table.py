"""The appendable predictions table: every run of `emotion predict --table ROOT`, queryable as one.

    ROOT/model_version=<v>/run_date=<YYYY-MM-DD>/run_id=<id>/part-SSSSS.parquet   this run's rows
    ROOT/_runs/<run_id>.parquet                                                   one row per run
    ROOT/_bigquery/predictions.external.json, predictions.sql                     BigQuery definitions
    ROOT/_staging/<run_id>/                                                       a run in progress

A run writes its rows under ROOT/_staging/<run id>/ and its last step moves them into its own
partition, then writes its row of the runs table; other runs' partitions are never listed or
touched. Re-running a run id (`--run-id`) replaces that run's partition (found through its runs-table
row, wherever its model version and date put it); a failed run leaves no partition at all.

Files are written for engines that prune: rows sorted by (predicted_label, confidence) within a file,
so label and confidence filters skip whole row groups by their min/max statistics; row groups of
128 Ki rows; ZSTD; the tables version in the schema metadata. Partition keys are folder names, not
columns (schemas.TABLE_PARTITION_KEYS).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import math
import os
import zlib

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.common import join, parquet_bytes, write_bytes
from beam_pipelines.listing import is_local, list_entries
from beam_pipelines.outputs import delete_files, remove_tree
from schemas.tables import (
    RUNS_SCHEMA,
    TABLE_ROW_GROUP_ROWS,
    TABLE_ROWS_PER_FILE,
    TABLE_SCHEMA,
    TABLE_SORT_KEYS,
    bigquery_external_table,
    with_schema_version,
)

RUNS = "_runs"
STAGING = "_staging"


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"emotion-pipeline {version('emotion-pipeline')}"
    except PackageNotFoundError:
        return "emotion-pipeline (not installed)"


@dataclasses.dataclass(frozen=True)
class TablePlan:
    root: str
    run_id: str
    model_version: str
    run_date: str  # YYYY-MM-DD (UTC) of the run's start

    @property
    def staging(self) -> str:
        return join(self.root, STAGING, self.run_id)

    @property
    def partition(self) -> str:
        return partition_path(self.root, self.model_version, self.run_date, self.run_id)

    @property
    def runs_file(self) -> str:
        return join(self.root, RUNS, f"{self.run_id}.parquet")


def partition_path(root: str, model_version: str, run_date: str, run_id: str) -> str:
    return join(root, f"model_version={model_version}", f"run_date={run_date}", f"run_id={run_id}")


def check_run_id(run_id: str) -> str | None:
    """Why a run id cannot name a partition folder, or None when it can."""
    if not run_id or any(c in run_id for c in '/\\=*?[]"\'') or run_id.startswith(("_", ".")):
        return "a run id is letters, digits, '-' and '.', not starting with '_' or '.'"
    return None


# --------------------------------------------------------------------------- writing


def _parquet_bytes(table: pa.Table) -> bytes:
    return parquet_bytes(table, compression="zstd", row_group_size=TABLE_ROW_GROUP_ROWS, write_statistics=True)


class _WriteFile(beam.DoFn):
    """One file's rows (all rows of one shard) -> one sorted ZSTD Parquet file in the staging folder."""

    def __init__(self, plan: TablePlan):
        self.plan = plan

    def process(self, element):
        shard, rows = element
        schema = with_schema_version(TABLE_SCHEMA)
        rows = sorted(rows, key=lambda r: (*(r[k] for k in TABLE_SORT_KEYS), r["uri"]))
        table = pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in rows], schema=schema)
        path = join(self.plan.staging, f"part-{shard:05d}.parquet")
        write_bytes(path, _parquet_bytes(table))
        yield path


class WriteTable(beam.PTransform):
    """Prediction rows -> sorted Parquet files of at most TABLE_ROWS_PER_FILE rows in the run's
    staging folder; the output is the list of files written (for the commit to wait on)."""

    def __init__(self, plan: TablePlan):
        super().__init__()
        self.plan = plan

    def expand(self, rows):
        files = beam.pvalue.AsSingleton(
            rows | "Count" >> beam.combiners.Count.Globally()
            | "Files" >> beam.Map(lambda n: max(1, math.ceil(n / TABLE_ROWS_PER_FILE))))
        return (
            rows
            | "ToShard" >> beam.Map(lambda row, n: (zlib.crc32(row["uri"].encode()) % n, row), files)
            | "GroupByFile" >> beam.GroupByKey()
            | "WriteFiles" >> beam.ParDo(_WriteFile(self.plan))
        )


def _sum_pairs(pairs) -> tuple[int, int]:
    total = count = 0
    for digest, n in pairs:
        total, count = (total + digest) % (1 << 60), count + n  # within Beam's 64-bit integer coder
    return total, count


class DataFingerprint(beam.PTransform):
    """Rows -> one string that changes when the set of predicted images (their pixels) changes:
    the sum of the pixel hashes (order-free, so any runner gives the same) and the count."""

    def expand(self, rows):
        return (
            rows
            | "Digest" >> beam.Map(lambda row: (int(row["content_sha256"][:15], 16), 1))
            | "Sum" >> beam.CombineGlobally(_sum_pairs)
            | "Format" >> beam.Map(lambda s: f"{s[0]:015x}-{s[1]}")
        )


# --------------------------------------------------------------------------- commit


def read_run(root: str, run_id: str) -> dict | None:
    path = join(root, RUNS, f"{run_id}.parquet")
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        rows = pq.read_table(io.BytesIO(f.read())).to_pylist()
    return rows[0] if rows else None


def commit_table(plan: TablePlan, run: dict) -> dict:
    """Moves the staged files into the run's partition, replacing only an earlier partition of the
    same run id, then writes the run's row of the runs table. Returns that row."""
    earlier = read_run(plan.root, plan.run_id)
    if earlier is not None:
        old = partition_path(plan.root, earlier["model_version"], earlier["started"].strftime("%Y-%m-%d"), plan.run_id)
        delete_files([e.path for e in list_entries(old)])
        if is_local(old) and os.path.isdir(old):
            _remove_empty_parents(old, plan.root)
    delete_files([e.path for e in list_entries(plan.partition)])  # a killed earlier attempt's files
    prefix = plan.staging + "/"
    staged = sorted(e.path[len(prefix):] for e in list_entries(plan.staging))
    sources = [join(plan.staging, rel) for rel in staged]
    targets = [join(plan.partition, rel) for rel in staged]
    if is_local(plan.root):
        os.makedirs(plan.partition, exist_ok=True)
        for source, target in zip(sources, targets):
            os.replace(source, target)
    elif sources:
        FileSystems.rename(sources, targets)
    remove_tree(plan.staging)
    write_bigquery_definitions(plan.root)
    row = {**run, "finished": dt.datetime.now(dt.timezone.utc)}
    table = pa.Table.from_pylist([{k: row.get(k) for k in RUNS_SCHEMA.names}], schema=with_schema_version(RUNS_SCHEMA))
    write_bytes(plan.runs_file, _parquet_bytes(table))
    return row


def write_bigquery_definitions(root: str) -> None:
    """ROOT/_bigquery/: the external-table definition and DDL for this root (same bytes every run)."""
    defs = bigquery_external_table(root)
    write_bytes(join(root, "_bigquery", "predictions.external.json"),
                (json.dumps(defs["definition"], indent=2) + "\n").encode(), "application/json")
    write_bytes(join(root, "_bigquery", "predictions.sql"), defs["ddl"].encode(), "text/plain")


def _remove_empty_parents(path: str, root: str) -> None:
    while os.path.abspath(path) != os.path.abspath(root) and os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)
        path = os.path.dirname(path)
