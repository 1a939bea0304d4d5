"""An output folder's own files: `_run.json` (the manifest, read back as untrusted input), `_run.lock`
(one run at a time) and the names of the staging folder and its journal; where a run's paths would
pass PATH_MAX; removing a tree through the gate. `outputs.py` tells the life of a run that uses them."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os

from apache_beam.io.filesystems import FileSystems

from beam_pipelines.base.files import join
from beam_pipelines.base.listing import is_local, list_entries
from beam_pipelines.base.storage import pipeline_gate
from model import gate
from model.errors import UsageError
from model.gate import RootLock

MANIFEST = "_run.json"


LOCK = "_run.lock"


STAGING = "_staging"


MANIFEST_VERSION = 1


JOURNAL = ".journal"  # in the run's staging folder: the commit's steps, for a roll-back after a kill


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def new_run_id(stage: str) -> str:
    return gate.new_id(stage)


def read_manifest(output: str) -> dict | None:
    """The output's _run.json, validated (see validate_manifest); None when there is none."""
    raw = read_manifest_bytes(output)
    if raw is None:
        return None
    path = join(output, MANIFEST)
    try:
        manifest = json.loads(raw)
    except ValueError:
        manifest = None
    return validate_manifest(manifest, path)


MANIFEST_MAX_BYTES = 256 << 20  # a manifest lists every file of a run: far below this


def read_manifest_bytes(output: str) -> bytes | None:
    """_run.json's bytes (None when absent); locally only a regular file is opened (not a link, a FIFO or
    a device: those are refused in one line, unopened)."""
    path = join(output, MANIFEST)
    if is_local(path):
        if not os.path.lexists(path):
            return None
        try:
            return pipeline_gate([output]).read_bytes(path, limit=MANIFEST_MAX_BYTES)
        except gate.PathRefused:
            raise UsageError(f"{path} is not a manifest this pipeline wrote (a link, a FIFO, a device or a "
                             "folder); move it away or choose another --output") from None
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return f.read()


def validate_manifest(manifest, path: str) -> dict:
    """A manifest is untrusted input: an object whose files are plain relative paths (no '..', not
    absolute) and whose staging folder, if any, is _staging/<a run id>; UsageError otherwise."""
    if not isinstance(manifest, dict):
        raise UsageError(f"{path} is not a manifest this pipeline wrote; move it away or choose another --output")
    files = manifest.get("files", [])
    if not isinstance(files, list):
        raise UsageError(f"{path}: its files are not a list; it was not written by this pipeline (move it away)")
    for rel in files:
        gate.check_relative(rel, path)
        if rel in (MANIFEST, LOCK) or rel.split("/")[0] == STAGING:
            raise UsageError(f"{path} lists {rel}, which no run writes; it was not written by this pipeline "
                             "(move it away)")
    staging = manifest.get("staging")
    if staging is not None:
        name = staging[len(STAGING) + 1:] if isinstance(staging, str) and staging.startswith(STAGING + "/") else None
        if name is None or gate.name_problem(name) or name != manifest.get("run_id"):
            raise UsageError(f"{path}: staging {str(staging)[:80]!r} is not {STAGING}/<its run id>; it was not "
                             "written by this pipeline (move it away)")
    return manifest


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


def _under(rel: str, names) -> bool:
    return any(rel == name or rel.startswith(name + "/") for name in names)


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
    g = pipeline_gate([root])
    g.remove_tree(path)
    parent = path.rstrip("/").rsplit("/", 1)[0]
    if parent.rsplit("/", 1)[-1] == STAGING:
        g.remove_empty_dirs(parent, root)
