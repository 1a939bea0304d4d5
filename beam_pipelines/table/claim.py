"""The table root owned like an output: `_table.json` lists what the tool wrote there, `_table.lock`
holds one writer at a time, a user's file under one of the table's names is refused in one line, and a
runs-table file is read back as untrusted input (one row, naming the run of its own file name).
`partitions.py` writes the rows; the package's docstring draws the layout."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq

from beam_pipelines.base.files import join
from beam_pipelines.base.listing import is_local
from beam_pipelines.base.manifest import check_path_room
from beam_pipelines.base.storage import BeamStore, pipeline_gate
from model import gate
from model.errors import UsageError
from schemas.tables import bigquery_external_table

log = logging.getLogger("emotion")

RUNS = "_runs"


STAGING = "_staging"


BIGQUERY = "_bigquery"


LOCK = "_table.lock"


MANIFEST = "_table.json"  # what the tool wrote in the table root (see TableClaim)


OWN_FOLDERS = (RUNS, STAGING, BIGQUERY)


PARTITION_PREFIX = "model_version="


BIGQUERY_FILES = ("predictions.external.json", "predictions.sql", "current_predictions.sql")


RUN_FILE_MAX_BYTES = 16 << 20  # one row of the runs table


_PART = re.compile(r"part-\d{5}\.parquet")


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


def reserved(rel: str) -> bool:
    """Whether a path relative to the table root lies under a name the table owns."""
    top = rel.split("/", 1)[0]
    return top in (RUNS, BIGQUERY, MANIFEST) or top.startswith(PARTITION_PREFIX)


def check_apart(root: str, input_path: str) -> None:
    """--table and --input must not hold one another: a table inside the input would be listed as
    input (its own files rejected, more each run); an input inside the table is the table's to change.
    One line (UsageError) otherwise."""
    table, source = gate.canonical(root), gate.canonical(input_path.rstrip("/") or input_path)
    if table == source or gate.within(table, source) or gate.within(source, table):
        raise UsageError(f"--table {root} and --input {input_path} overlap (one holds the other): choose a --table "
                         "outside the input")


def table_files(root: str) -> set[str]:
    """The files the tool wrote under the table's own names: its manifest's, or a legacy table's."""
    claim = TableClaim(root, "")
    return claim.owned(claim.read_manifest())


def write_table_manifest(root: str, files, tx: gate.Transaction) -> None:
    """The manifest, as a step of the commit's transaction (rolled back with it)."""
    data = (json.dumps({"manifest_version": 1, "files": sorted(set(files))}, indent=1) + "\n").encode()
    tx.write_bytes(join(root, MANIFEST), data)


def _present(root: str) -> list[str]:
    """Relative paths of the files under the table's own names (not its staging, lock or manifest)."""
    return TableClaim(root, "").present()


def _legacy_owned(root: str, present: list[str]) -> set[str]:
    """A table written before it had a manifest: the files it can be shown to have written -- runs rows
    that name themselves, the part files of the partitions they name, the BigQuery definitions with the
    bytes this root's would have. Anything else under its names is a user's."""
    owned, partitions = set(), set()
    for rel in present:
        if rel.startswith(RUNS + "/") and rel.count("/") == 1 and rel.endswith(".parquet"):
            with _no_usage_error():
                row = read_run(root, rel[len(RUNS) + 1:-len(".parquet")])
                partitions.add(run_partition(root, row).rstrip("/")[len(root.rstrip("/")) + 1:])
                owned.add(rel)
    expected = _bigquery_bytes(root)
    g = pipeline_gate([root])
    for rel in present:
        folder, _, name = rel.rpartition("/")
        if folder in partitions and _PART.fullmatch(name):
            owned.add(rel)
        elif folder == BIGQUERY and name in expected:
            with _no_usage_error():
                if g.read_bytes(join(root, rel), limit=1 << 20) == expected[name]:
                    owned.add(rel)
    return owned


@contextlib.contextmanager
def _no_usage_error():
    try:
        yield
    except (UsageError, OSError):
        pass


class TableClaim(gate.RootClaim):
    """The launcher's side of a run into --table (a gate.RootClaim): checks that the root can take a run
    (a folder, or absent under a writable folder; its own names _runs/, _staging/, _bigquery/ folders,
    writable), then holds ROOT/_table.lock until the run ends. A refusal is one line (exit 2), before
    anything is written; a root this claim created is removed again if the run leaves it empty.

    The root is owned like an output: ROOT/_table.json (written by each commit, inside its
    transaction) lists every file the tool wrote under the table's names (_runs/, _bigquery/, the
    model_version= partitions). Under the lock, a file there that it does not list (a user's
    _bigquery/*.sql, a file in a partition, a copied runs row) stops the run in one line; the staging
    folder of a run that died before its commit is removed (one that holds the files a killed commit
    retired is left for that commit's roll-back, which its --output's next run makes)."""

    FLAG, MANIFEST, LOCK, STAGING = "--table", MANIFEST, LOCK, STAGING
    FILES_REQUIRED = True
    UNREADABLE = "{path} is not a manifest this table wrote (a link, a FIFO or a device): move it away"
    NOT_MANIFEST = "{path} is not a manifest this table wrote: move it away or choose another {flag}"
    UNLISTED = "{path} lists {rel:.80}, which the table does not write: move it away"
    FOREIGN = ("{flag} {root} holds {n} file(s) under the table's own names that it did not write ({shown}): move "
               "them away or choose another {flag}")

    def __init__(self, root: str, run_id: str, remote: bool = False):
        super().__init__(root, run_id, store=BeamStore(), remote=remote)

    @classmethod
    def may_list(cls, rel: str) -> bool:
        return reserved(rel) and rel != MANIFEST

    def present(self, names=None) -> list[str]:
        """Relative paths of the files under the table's own names (not its staging, lock or manifest)."""
        return sorted(rel for rel in self.files_under("") if self.may_list(rel))

    def owned(self, manifest: dict | None, names=None) -> set[str]:
        return set(manifest["files"]) if manifest is not None else _legacy_owned(self.root, self.present())

    def check_root(self) -> None:
        check_path_room(self.root, "--table")
        if not is_local(self.root):
            return
        for name in (*OWN_FOLDERS, MANIFEST):
            path = os.path.join(self.root, name)
            kind_ok = os.path.isfile(path) if name == MANIFEST else os.path.isdir(path)
            if os.path.lexists(path) and (os.path.islink(path) or not kind_ok):
                raise UsageError(f"--table {self.root} holds {name}, which is not a "
                                 f"{'file' if name == MANIFEST else 'folder'} the table wrote: move it away or "
                                 "choose another --table")
            if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
                raise UsageError(f"--table {self.root}: {name}/ is not writable; fix its permissions or "
                                 "choose another --table")

    def claim(self) -> TableClaim:
        if not self._remove_dead_staging():  # a killed commit pending: its roll-back comes first
            self.foreign(self.read_manifest())
        return self

    def _remove_dead_staging(self) -> list[str]:
        """This claim holds the lock, so no run is writing into the table's staging now: a folder there
        is a dead run's, removed -- unless it holds the files a killed commit retired (its roll-back
        puts them back; returned). A name no run id could have is not the table's: refused. While a
        killed commit is pending, the ownership check waits (the commit checks what it replaces)."""
        g = self.gate()
        folder = join(self.root, STAGING)
        pending = []
        if not g.isdir(folder):
            return pending
        prefix = gate.canonical(folder).rstrip("/") + "/" if is_local(folder) else folder.rstrip("/") + "/"
        names = sorted({p[len(prefix):].split("/", 1)[0] for p in g.files(folder) if p.startswith(prefix)})
        for name in names:
            if gate.name_problem(name):
                raise UsageError(f"--table {self.root} holds {STAGING}/{name[:80]}, which the table did not write: "
                                 "move it away or choose another --table")
            if g.files(join(folder, name, ".retired")):
                log.warning("--table %s: %s/%s holds the files a killed commit retired; its --output's next run "
                            "with this --table puts them back", self.root, STAGING, name)
                pending.append(name)
            else:
                self.remove_staging(join(folder, name))
        if g.isdir(folder) and not g.files(folder):
            g.remove_tree(folder)
        return pending

    def end(self, exc_type, exc) -> None:
        if exc_type is not None:
            self.remove_staging(join(self.root, STAGING, self.run_id))


def remove_killed_staging(root: str, run_id: str) -> bool:
    """The staging folder a predict run killed before its commit left in its --table (for the run
    after it into the same --output, which may be given no --table): removed under the table's lock,
    unless it holds a killed commit's retired files. True when something was removed."""
    gate.check_name(run_id, "run id")
    claim = TableClaim(root, gate.new_id("clean"))
    folder = join(claim.root, STAGING, run_id)
    if not pipeline_gate([claim.root]).exists(folder):
        return False
    with claim:  # its claim removes every dead run's staging, this one's included
        pass
    return not pipeline_gate([claim.root]).exists(folder)



def read_run(root: str, run_id: str) -> dict | None:
    """The runs-table row of `run_id` (None when the table has none), read back as untrusted input: a
    regular file of one row that names this run (a row copied or edited from another run's file is
    refused: re-running it would replace the other run's partition)."""
    path = join(root, RUNS, f"{gate.check_name(run_id, 'run id')}.parquet")
    g = pipeline_gate([root])
    if not g.exists(path):
        return None
    try:
        rows = pq.read_table(pa.BufferReader(g.read_bytes(path, limit=RUN_FILE_MAX_BYTES))).to_pylist()
    except gate.PathRefused as exc:
        raise UsageError(f"{path} is not a runs-table row this pipeline wrote ({str(exc)[:120]}); move it away") from None
    except Exception as exc:
        raise UsageError(f"{path} is not a runs-table row this pipeline wrote ({str(exc)[:120]}); "
                         "move it away") from None
    if len(rows) != 1 or rows[0].get("run_id") != run_id:
        named = sorted({str(r.get("run_id"))[:60] for r in rows})
        raise UsageError(f"{path} holds {len(rows)} row(s) naming run(s) {named}, not one row of run {run_id}: it "
                         "was not written by this pipeline for that run (move it away)")
    return rows[0]


def run_partition(root: str, row: dict) -> str:
    """The partition a runs-table row names (its keys validated: the row is read back from disk)."""
    started = row.get("started")
    if not isinstance(started, dt.datetime):
        raise UsageError(f"the runs-table row of {row.get('run_id')!r} in {root} has no valid start time; "
                         "it was not written by this pipeline (move it away)")
    return partition_path(root, row.get("model_version"), started.strftime("%Y-%m-%d"), row.get("run_id"))


def _bigquery_bytes(root: str) -> dict[str, bytes]:
    """The BigQuery definitions of this root, as write_bigquery_definitions writes them."""
    defs = bigquery_external_table(root)
    return {"predictions.external.json": (json.dumps(defs["definition"], indent=2) + "\n").encode(),
            "predictions.sql": defs["ddl"].encode(), "current_predictions.sql": defs["current"].encode()}
