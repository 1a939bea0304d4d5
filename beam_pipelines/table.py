"""The appendable predictions table: every run of `emotion predict --table ROOT`, queryable as one.

    ROOT/model_version=<v>/run_date=<YYYY-MM-DD>/run_id=<id>/part-SSSSS.parquet   this run's rows
    ROOT/_runs/<run_id>.parquet                                                   one row per run
    ROOT/_bigquery/predictions.external.json, predictions.sql,                    BigQuery definitions
                   current_predictions.sql
    ROOT/_staging/<run_id>/                                                       a run in progress

A run writes its rows under ROOT/_staging/<run id>/ and its last step moves them into its own
partition, then writes its row of the runs table; other runs' partitions are never listed or
touched. Re-running a run id (`--run-id`) replaces that run's partition (found through its runs-table
row, wherever its model version and date put it); a failed run leaves no partition at all.

One writer per root: ROOT/_table.lock (gate.RootLock) is held from the launcher's checks to the
commit, so two runs (of one run id or not) never interleave their staging and partitions. The table
is committed with the run's --output in one transaction (outputs.commit, with TableCommit as its
`also`): both change, or neither. The partition's names (model version, date, run id) are checked as
safe names before they become a path, whether they come from the command line, the model's
metadata.json or a runs-table row.

Files are written for engines that prune: rows sorted by (predicted_label, confidence) within a file,
so label and confidence filters skip whole row groups by their min/max statistics; row groups of
128 Ki rows; ZSTD; the tables version in the schema metadata. Partition keys are folder names, not
columns (schemas.TABLE_PARTITION_KEYS).

Rows also record how they were predicted (tables version 3): the SHA-256 of the image file's bytes,
the TTA and the preprocessing (schemas.TABLE_SEEN_FIELDS), so that `--incremental` can skip an image
the model version's partitions already hold predicted the same way (predict_incremental.py). Files
written before carry none of the three; engines read them beside newer ones by column name (DuckDB:
union_by_name = true) with nulls there, and an incremental run predicts their images once more.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import re
import zlib

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from model import gate
from beam_pipelines.common import join, parquet_bytes, read_parquet, write_bytes
from model.errors import UsageError
from beam_pipelines.listing import is_local, list_entries
from beam_pipelines.outputs import remove_tree
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
BIGQUERY = "_bigquery"
LOCK = "_table.lock"
OWN_FOLDERS = (RUNS, STAGING, BIGQUERY)


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
    """ROOT/model_version=/run_date=/run_id=, each key checked as a safe name (UsageError otherwise)."""
    gate.check_name(model_version, "model version")
    gate.check_name(run_id, "run id")
    if not isinstance(run_date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_date):
        raise UsageError(f"run date {str(run_date)[:40]!r} is not YYYY-MM-DD")
    return join(root, f"model_version={model_version}", f"run_date={run_date}", f"run_id={run_id}")


def check_run_id(run_id: str) -> str | None:
    """Why a run id cannot name a partition folder, or None when it can."""
    return gate.name_problem(run_id)


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


# --------------------------------------------------------------------------- the claim


class TableClaim:
    """The launcher's side of a run into --table: checks that the root can take a run (a folder, or
    absent under a writable folder; its own names _runs/, _staging/, _bigquery/ folders, writable),
    then holds ROOT/_table.lock until the run ends. A refusal is one line (exit 2), before anything
    is written; a root this claim created is removed again if the run leaves it empty."""

    def __init__(self, root: str, run_id: str, remote: bool = False):
        self.root, self.run_id, self.remote = root.rstrip("/"), run_id, remote
        self.lock = gate.RootLock(self.root, run_id, flag="--table", name=LOCK)

    def __enter__(self) -> TableClaim:
        if is_local(self.root):
            for name in OWN_FOLDERS:
                path = os.path.join(self.root, name)
                if os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)):
                    raise UsageError(f"--table {self.root} holds {name}, which is not a folder the table wrote: "
                                     "move it away or choose another --table")
                if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
                    raise UsageError(f"--table {self.root}: {name}/ is not writable; fix its permissions or "
                                     "choose another --table")
        self.lock.acquire()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            remove_tree(join(self.root, STAGING, self.run_id), self.root)
        if exc_type is not None or is_local(self.root) or not self.remote:
            self.lock.release()


# --------------------------------------------------------------------------- commit


def read_run(root: str, run_id: str) -> dict | None:
    path = join(root, RUNS, f"{gate.check_name(run_id, 'run id')}.parquet")
    if not FileSystems.exists(path):
        return None
    try:
        rows = read_parquet(path).to_pylist()
    except Exception as exc:
        raise UsageError(f"{path} is not a runs-table row this pipeline wrote ({str(exc)[:120]}); "
                         "move it away") from None
    return rows[0] if rows else None


def run_partition(root: str, row: dict) -> str:
    """The partition a runs-table row names (its keys validated: the row is read back from disk)."""
    started = row.get("started")
    if not isinstance(started, dt.datetime):
        raise UsageError(f"the runs-table row of {row.get('run_id')!r} in {root} has no valid start time; "
                         "it was not written by this pipeline (move it away)")
    return partition_path(root, row.get("model_version"), started.strftime("%Y-%m-%d"), row.get("run_id"))


def run_row(summary: dict, fingerprint: str, output: str, table: TablePlan, started) -> dict:
    """A run's row of the runs table (schemas.RUNS_SCHEMA), from its summary.json."""
    t = summary["totals"]
    return {
        "run_id": table.run_id, "started": started, "input_uri": summary["input"], "data_fingerprint": fingerprint,
        "model_version": summary["model_version"], "model_fingerprint": summary["model_fingerprint"],
        "tta": summary["tta"], "face_crop": bool(summary["face_crop"]),
        "matched": t["matched"], "predicted": t["predicted"], "rejected": t["rejected"],
        "skipped_non_data": t["skipped_non_data"], "incremental": bool(summary.get("incremental")),
        "skipped_seen": t.get("skipped_seen", 0), "labelled": summary["labelled"],
        "accuracy": summary["accuracy"], "macro_f1": summary["macro_f1"],
        "code_version": code_version(), "output": output,
    }


@dataclasses.dataclass(frozen=True)
class TableCommit:
    """predict's table, committed inside the output's transaction (outputs.commit's `also`): the
    run's staged files into its partition (an earlier partition of the same run id retired), the
    BigQuery definitions, and its runs-table row."""

    plan: TablePlan
    output: str
    started: dt.datetime
    remote_lock: bool = False

    @property
    def root(self) -> str:
        return self.plan.root

    @property
    def trash(self) -> str:
        return join(self.plan.staging, ".retired")

    def __call__(self, tx: gate.Transaction, summary: dict, fingerprint: str) -> dict:
        return commit_table(self.plan, run_row(summary, fingerprint, self.output, self.plan, self.started), tx)

    def finish(self, g: gate.Gate) -> None:
        remove_tree(self.plan.staging, self.plan.root)
        if self.remote_lock:
            gate.release_remote_lock(join(self.plan.root, LOCK), self.plan.run_id)


def commit_table(plan: TablePlan, run: dict, tx: gate.Transaction) -> dict:
    """Moves the staged files into the run's partition, retiring only an earlier partition of the
    same run id, then writes the run's row of the runs table, all as steps of `tx`. Returns the row."""
    earlier = read_run(plan.root, plan.run_id)
    old = run_partition(plan.root, earlier) if earlier is not None else None
    if old is not None:
        tx.retire(old)
        if old != plan.partition:  # its empty model_version=/run_date= folders (an undo makes them again)
            tx.gate.remove_empty_dirs(old.rsplit("/", 1)[0], plan.root)
    if plan.partition != old:
        tx.retire(plan.partition)  # a killed earlier attempt's files
    prefix = plan.staging + "/"
    staged = sorted(e.path[len(prefix):] for e in list_entries(plan.staging) if "/" not in e.path[len(prefix):])
    for rel in staged:
        tx.move(join(plan.staging, rel), join(plan.partition, rel))
    write_bigquery_definitions(plan.root, tx)
    row = {**run, "finished": dt.datetime.now(dt.timezone.utc)}
    table = pa.Table.from_pylist([{k: row.get(k) for k in RUNS_SCHEMA.names}], schema=with_schema_version(RUNS_SCHEMA))
    tx.write_bytes(plan.runs_file, _parquet_bytes(table))
    return row


def write_bigquery_definitions(root: str, tx: gate.Transaction) -> None:
    """ROOT/_bigquery/: the external-table definition and DDL for this root, and the view of every
    image's current prediction (same bytes every run)."""
    defs = bigquery_external_table(root)
    tx.write_bytes(join(root, BIGQUERY, "predictions.external.json"),
                   (json.dumps(defs["definition"], indent=2) + "\n").encode())
    tx.write_bytes(join(root, BIGQUERY, "predictions.sql"), defs["ddl"].encode())
    tx.write_bytes(join(root, BIGQUERY, "current_predictions.sql"), defs["current"].encode())
