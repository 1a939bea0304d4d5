"""An output folder's own files: `OutputRoot` (the output as a gate.RootClaim: `_run.json`, the
manifest, read back as untrusted input; `_run.lock`, one run at a time) and the names of the staging
folder and its journal; where a run's paths would pass PATH_MAX; removing a tree through the gate.
`outputs.py` tells the life of a run that uses them."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os

from apache_beam.io.filesystems import FileSystems

from beam_pipelines.base.files import join
from beam_pipelines.base.listing import is_local, list_entries
from beam_pipelines.base.storage import BeamStore, pipeline_gate
from model import gate
from model.errors import UsageError
from model.gate import RootLock
from model.gate.claim import remove_staging

MANIFEST = "_run.json"


LOCK = "_run.lock"


STAGING = "_staging"


MANIFEST_VERSION = 1


JOURNAL = ".journal"  # in the run's staging folder: the commit's steps, for a roll-back after a kill


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def new_run_id(stage: str) -> str:
    return gate.new_id(stage)


class OutputRoot(gate.RootClaim):
    """--output as a root the pipelines own (gate.RootClaim): _run.json, _run.lock, _staging/;
    outputs.OutputClaim is the claim a run makes on it."""

    FLAG, MANIFEST, LOCK, STAGING = "--output", MANIFEST, LOCK, STAGING
    UNREADABLE = ("{path} is not a manifest this pipeline wrote (a link, a FIFO, a device or a folder); move it "
                  "away or choose another {flag}")
    NOT_MANIFEST = "{path} is not a manifest this pipeline wrote; move it away or choose another {flag}"
    FILES_NOT_LIST = "{path}: its files are not a list; it was not written by this pipeline (move it away)"
    UNLISTED = "{path} lists {rel}, which no run writes; it was not written by this pipeline (move it away)"
    FOREIGN = ("{flag} {root} already holds {n} file(s) no earlier run of this pipeline wrote ({shown}); choose "
               "another {flag}, move them away, or pass --overwrite to replace them")

    def __init__(self, output: str, run_id: str = "", remote: bool = False):
        super().__init__(output, run_id, store=BeamStore(), remote=remote)

    @classmethod
    def may_list(cls, rel: str) -> bool:
        return not (rel in (MANIFEST, LOCK) or rel.split("/")[0] == STAGING)

    @classmethod
    def check_manifest(cls, manifest: dict, path: str) -> None:
        """Its staging folder, if any, is _staging/<its run id>."""
        staging = manifest.get("staging")
        if staging is not None:
            name = staging[len(STAGING) + 1:] if isinstance(staging, str) and staging.startswith(STAGING + "/") else None
            if name is None or gate.name_problem(name) or name != manifest.get("run_id"):
                raise UsageError(f"{path}: staging {str(staging)[:80]!r} is not {STAGING}/<its run id>; it was not "
                                 "written by this pipeline (move it away)")

    def files_under(self, name: str, g=None) -> list[str]:
        """The Beam listing's files at output/name (links to folders followed, as the pipelines list)."""
        return _files_under(self.root, name)


def _write_json(path: str, value: dict, output: str) -> None:
    """Written whole or not at all, through the gate (local: a temporary file renamed over it)."""
    pipeline_gate([output]).write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def _files_under(output: str, name: str) -> list[str]:
    """Relative paths of the files at output/name (a file, or everything under a folder)."""
    path = join(output, name)
    if FileSystems.exists(path) and not (is_local(path) and os.path.isdir(path)):
        return [name]
    if is_local(path) and not os.path.isdir(path):
        return []
    prefix = output.rstrip("/") + "/"
    return [entry.path[len(prefix):] for entry in list_entries(path)]


class OutputLock(RootLock):
    """One run per output folder (see the module docstring and gate.RootLock)."""

    def __init__(self, output: str, run_id: str):
        super().__init__(output, run_id, flag="--output", name=LOCK)
        self.output = self.root


def release_remote_lock(output: str, run_id: str) -> None:
    """Deletes a gs:// output lock if it is still this run's (a later taker's lock is left alone)."""
    gate.release_remote_lock(join(output, LOCK), run_id)


# What a run writes below its root at most: _staging/<run id>/<name>/beam-temp-<...>-<uuid>/<uuid>.<suffix>
DEEPEST_BELOW_ROOT = 320


def check_path_room(root: str, flag: str) -> None:
    """A root so deep that the paths a run writes under it would pass the system's PATH_MAX (or with a
    folder name past NAME_MAX) is refused in one line before anything is written (else: ENAMETOOLONG
    from a worker, halfway through)."""
    if not is_local(root):
        return
    path = os.path.abspath(root)
    limit = 4096
    with contextlib.suppress(OSError, ValueError):
        existing = path
        while not os.path.isdir(existing):
            existing = os.path.dirname(existing)
        limit = os.pathconf(existing, "PC_PATH_MAX")
    if any(len(part.encode()) > 255 for part in path.split("/")):
        raise UsageError(f"{flag} {root[:120]}...: a folder name longer than 255 bytes; choose a shorter {flag}")
    if len(gate.canonical(path).encode()) + DEEPEST_BELOW_ROOT > limit:
        raise UsageError(f"{flag} {root[:120]}... is {len(path.encode())} bytes long: the paths a run writes under it "
                         f"would pass the system's limit of {limit}; choose a shorter {flag}")


def remove_tree(path: str, root: str) -> None:
    """Removes the folder `path` inside `root` (through the gate), then root's _staging/ if it is left
    empty."""
    remove_staging(pipeline_gate([root]), path, root, STAGING)
