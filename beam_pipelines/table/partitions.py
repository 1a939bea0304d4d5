"""The table's rows and runs: this run's rows sorted and written as ZSTD Parquet under its staging folder
(`WriteTable`), the fingerprint of the data it read (`DataFingerprint`), its runs-table row, and the
commit that moves them into the run's own partition (`TableCommit`, a step of the output's
transaction) with the BigQuery definitions beside them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import zlib

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_pipelines.base.files import join, parquet_bytes, write_bytes
from beam_pipelines.base.listing import list_entries
from beam_pipelines.base.manifest import remove_tree
from beam_pipelines.table.claim import (
    BIGQUERY,
    BIGQUERY_FILES,
    LOCK,
    RUNS,
    TablePlan,
    _bigquery_bytes,
    _present,
    read_run,
    run_partition,
    table_files,
    write_table_manifest,
)
from model import gate
from model.errors import UsageError
from schemas.tables import (
    RUNS_SCHEMA,
    TABLE_ROW_GROUP_ROWS,
    TABLE_ROWS_PER_FILE,
    TABLE_SCHEMA,
    TABLE_SORT_KEYS,
    with_schema_version,
)


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"emotion-pipeline {version('emotion-pipeline')}"
    except PackageNotFoundError:
        return "emotion-pipeline (not installed)"


def _parquet_bytes(table: pa.Table) -> bytes:
    return parquet_bytes(table, compression="zstd", row_group_size=TABLE_ROW_GROUP_ROWS, write_statistics=True)


class _WriteFile(beam.DoFn):
    """One file of the table: its rows (Arrow tables of any batches) sorted, written whole."""

    def __init__(self, plan: TablePlan):
        self.plan = plan

    def process(self, element):
        shard, tables = element
        schema = with_schema_version(TABLE_SCHEMA)
        table = pa.concat_tables(list(tables)).select(schema.names)
        # A stable sort, so rows equal on every key keep their order (as Python's sorted keeps it).
        order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in (*TABLE_SORT_KEYS, "uri")])
        table = table.take(order).cast(schema).combine_chunks()
        path = join(self.plan.staging, f"part-{shard:05d}.parquet")
        write_bytes(path, _parquet_bytes(table))
        yield path


def _file_of_rows(rows: pa.Table, files: int):
    """(file index, the rows going there) for each file this batch's rows go to: a row's file is a hash of
    its uri, so that every face of an image lands in one file."""
    index = np.array([zlib.crc32(uri.encode()) % files for uri in rows["uri"].to_pylist()], np.int64)
    for shard in np.unique(index):
        yield int(shard), rows.filter(pa.array(index == shard))


class WriteTable(beam.PTransform):
    """Prediction rows (Arrow tables) -> sorted Parquet files of at most TABLE_ROWS_PER_FILE rows in the
    run's staging folder; the output is the list of files written (for the commit to wait on)."""

    def __init__(self, plan: TablePlan):
        super().__init__()
        self.plan = plan

    def expand(self, tables):
        files = beam.pvalue.AsSingleton(
            tables
            | "Count" >> beam.Map(lambda rows: rows.num_rows)
            | "Sum" >> beam.CombineGlobally(sum)
            | "Files" >> beam.Map(lambda n: max(1, math.ceil(n / TABLE_ROWS_PER_FILE))))
        return (
            tables
            | "ToFiles" >> beam.FlatMap(_file_of_rows, files)
            | "GroupByFile" >> beam.GroupByKey()
            | "WriteFiles" >> beam.ParDo(_WriteFile(self.plan))
        )


def _digest_pair(rows: pa.Table) -> tuple[int, int]:
    """(sum of the images' pixel hashes mod 2**60, images) of a batch: an image counts once, however many
    faces it has (face rows after the first are left out)."""
    faces = rows["face_index"].to_pylist() if "face_index" in rows.column_names else [None] * rows.num_rows
    total = count = 0
    for digest, face in zip(rows["content_sha256"].to_pylist(), faces):
        if not face:
            total, count = (total + int(digest[:15], 16)) % (1 << 60), count + 1
    return total, count


def _sum_pairs(pairs) -> tuple[int, int]:
    total = count = 0
    for digest, n in pairs:
        total, count = (total + digest) % (1 << 60), count + n  # within Beam's 64-bit integer coder
    return total, count


class DataFingerprint(beam.PTransform):
    """Rows (Arrow tables) -> one string that changes when the set of predicted images (their pixels)
    changes: the sum of the pixel hashes (order-free, so any runner gives the same) and the count."""

    def expand(self, tables):
        return (
            tables
            | "Digest" >> beam.Map(_digest_pair)
            | "Sum" >> beam.CombineGlobally(_sum_pairs)
            | "Format" >> beam.Map(lambda s: f"{s[0]:015x}-{s[1]}")
        )


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
        "code_version": code_version(), "output": gate.canonical(output),
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
    """Records the commit in the table's manifest, then moves the staged files into the run's
    partition, retiring only an earlier partition of the same run id (every file it retires checked
    first as one the table wrote), then writes the run's row of the runs table, all as steps of `tx`.
    The manifest goes first, so that a commit killed at any later step leaves one that lists every
    file it moved in (the next run's claim then finds nothing it did not write). Returns the row."""
    earlier = read_run(plan.root, plan.run_id)
    old = run_partition(plan.root, earlier) if earlier is not None else None
    prefix = plan.staging + "/"
    staged = sorted(e.path[len(prefix):] for e in list_entries(plan.staging) if "/" not in e.path[len(prefix):])
    _record_commit(plan, old, staged, tx)
    if old is not None:
        tx.retire(old)
        if old != plan.partition:  # its empty model_version=/run_date= folders (an undo makes them again)
            tx.gate.remove_empty_dirs(old.rsplit("/", 1)[0], plan.root)
    if plan.partition != old:
        tx.retire(plan.partition)  # a killed earlier attempt's files
    for rel in staged:
        tx.move(join(plan.staging, rel), join(plan.partition, rel))
    write_bigquery_definitions(plan.root, tx)
    row = {**run, "finished": dt.datetime.now(dt.timezone.utc)}
    table = pa.Table.from_pylist([{k: row.get(k) for k in RUNS_SCHEMA.names}], schema=with_schema_version(RUNS_SCHEMA))
    tx.write_bytes(plan.runs_file, _parquet_bytes(table))
    return row


def _record_commit(plan: TablePlan, old: str | None, staged: list[str], tx: gate.Transaction) -> None:
    """The table's manifest after this commit (a step of the same transaction): the files it lists,
    less the earlier partition of this run id, plus this run's partition, runs row and definitions.
    Every file the commit will replace must be one it lists (else UsageError: nothing is changed)."""
    root = plan.root.rstrip("/") + "/"
    owned = table_files(plan.root)
    gone = {p[len(root):] for p in (old, plan.partition) if p}
    replaced = [rel for rel in _present(plan.root) if any(rel.startswith(g + "/") for g in gone)
                or rel in (f"{RUNS}/{plan.run_id}.parquet", *(f"{BIGQUERY}/{n}" for n in BIGQUERY_FILES))]
    foreign = sorted(set(replaced) - owned)
    if foreign:
        raise UsageError(f"--table {plan.root} holds {len(foreign)} file(s) this run would replace that the table did "
                         f"not write ({', '.join(foreign[:3])}): move them away; nothing was changed")
    files = {rel for rel in owned if not any(rel.startswith(g + "/") for g in gone)}
    files |= {f"{plan.partition[len(root):]}/{rel}" for rel in staged}
    files |= {f"{RUNS}/{plan.run_id}.parquet", *(f"{BIGQUERY}/{name}" for name in BIGQUERY_FILES)}
    write_table_manifest(plan.root, files, tx)


def write_bigquery_definitions(root: str, tx: gate.Transaction) -> None:
    """ROOT/_bigquery/: the external-table definition and DDL for this root, and the view of every
    image's current prediction (same bytes every run)."""
    for name, data in _bigquery_bytes(root).items():
        tx.write_bytes(join(root, BIGQUERY, name), data)
