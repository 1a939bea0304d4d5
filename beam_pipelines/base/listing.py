"""Literal, complete listing of an input folder (local or gs://), and glob escaping.

A user's --input is a folder name, never a pattern: `faces [2024]` must not read `faces 2/`.
Beam's FileSystems.match treats every path as a glob, and its local listing does not follow
symlinked folders, so files behind them would be neither written nor rejected. This module
lists folders itself:

- local: os.walk with followlinks, each real folder visited once (a link back to an ancestor
  is a `symlink_loop` entry, not an endless walk); a link whose target is gone is a
  `broken_link` entry, so the pipelines reject it with that reason instead of losing it;
- gs://: the object listing under "<root>/" (google-cloud-storage, page by page).

Entries come out in a deterministic order (sorted folder by folder, or the object store's
lexicographic order) without holding the whole listing in memory.

Fan-out (plan_units, list_unit): a large input is listed by many workers at once, one unit (a class
folder, by default) each, so no single worker lists a 100M-object bucket. The units of a plan cover
every file once; a link from one unit into another unit's folder is reported as `symlink_loop` (a
link deeper into another unit's subfolders would list those files twice: ingest then drops the
copies as duplicates).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

BROKEN_LINK = "broken_link"
SYMLINK_LOOP = "symlink_loop"
PROBLEMS = {  # reject reason -> detail
    BROKEN_LINK: "symbolic link whose target does not exist (or cannot be read)",
    SYMLINK_LOOP: "link to a folder inside the input (listed through its own path) or already listed (a loop)",
}


class Entry(NamedTuple):
    """One file under the input root; `problem` is a reject reason when it cannot be read."""

    path: str
    size: int
    problem: str | None = None


def is_local(path: str) -> bool:
    return "://" not in path


def has_glob_characters(path: str) -> bool:
    return any(c in path for c in "*?[")


def escape_glob(path: str) -> str:
    """A pattern that matches exactly `path` in Beam's FileSystems.match (its glob has no escape
    character, but a one-character class does the job)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)


def list_entries(root: str) -> Iterator[Entry]:
    """Every file under `root`, recursively, literal and in a deterministic order."""
    if is_local(root):
        yield from _list_local(root, inside=_real(root))
    else:
        yield from _list_gcs(Unit(root.rstrip("/")))  # the literal prefix listing the units use


# --------------------------------------------------------------------------- fan-out


class Unit(NamedTuple):
    """A part of an input folder that one worker lists: a folder and everything below it, or
    (recursive=False) only the files directly in it; on gs://, optionally only the object names in
    [start, end) ("" is unbounded). The units of a plan cover the input once."""

    path: str
    recursive: bool = True
    start: str = ""
    end: str = ""


FAN_OUT_DEPTH = 2  # <split>/<class>/: a unit per class folder
# A flat gs:// folder (files, no class folders) is listed in name ranges split at these characters.
NAME_RANGE_BOUNDS = "048CGKOSWaeimquy"


def plan_units(root: str, depth: int = FAN_OUT_DEPTH) -> tuple[list[Unit], list[Entry]]:
    """The input split into units for a parallel listing, and the entries found while planning (links
    back to a folder already planned). Each folder down to `depth` levels below the root is a unit of
    its own; the folders above it keep only their own files. Cheap: it reads the names of `depth`
    levels of folders, never the files below them. On gs:// the folders are the object-name prefixes
    ending in "/" (a delimiter listing, paged by the client)."""
    root = root.rstrip("/")
    if is_local(root) and not os.path.isdir(root):
        if os.path.exists(root):
            raise NotADirectoryError(f"{root} is a file, not a folder")
        return [], []
    units, problems, frontier = [], [], [root]
    visited = {_identity(root)} if is_local(root) else set()
    inside = _real(root) if is_local(root) else None
    for _ in range(depth):
        below = []
        for folder in frontier:
            units += _own_files_units(folder)
            for sub in _subfolders(folder):
                identity = _identity(sub) if is_local(sub) else sub
                if identity in visited or (inside and _links_inside(sub, inside)):
                    problems.append(Entry(sub, 0, SYMLINK_LOOP))
                else:
                    visited.add(identity)
                    below.append(sub)
        frontier = below
    return sorted(units + [Unit(folder) for folder in frontier]), problems


def _own_files_units(folder: str) -> list[Unit]:
    """The units listing the files directly in a folder: one, or on gs:// one per name range (a flat
    bucket folder of millions of objects is then listed by many workers)."""
    if is_local(folder):
        return [Unit(folder, recursive=False)]
    prefix = _gcs_prefix(folder)[1]
    bounds = [""] + [prefix + c for c in NAME_RANGE_BOUNDS] + [""]
    return [Unit(folder, False, lo, hi) for lo, hi in zip(bounds, bounds[1:])]


def _gcs_prefix(folder: str) -> tuple[str, str]:
    bucket, _, prefix = folder[len("gs://"):].partition("/")
    return bucket, f"{prefix}/" if prefix else ""


def _list_gcs(unit: Unit) -> Iterator[Entry]:
    """A gs:// unit's objects, paged by the client: recursive, or only the folder's own (a delimiter
    listing), in the unit's name range (asked of the server, and checked here too)."""
    from google.cloud import storage

    bucket, prefix = _gcs_prefix(unit.path)
    blobs = storage.Client().list_blobs(bucket, prefix=prefix, delimiter=None if unit.recursive else "/",
                                        start_offset=unit.start or None, end_offset=unit.end or None)
    for blob in blobs:
        if blob.name.endswith("/") or blob.name < unit.start or (unit.end and blob.name >= unit.end):
            continue
        yield Entry(f"gs://{bucket}/{blob.name}", blob.size or 0)


def _subfolders(folder: str) -> list[str]:
    if is_local(folder):
        try:
            with os.scandir(folder) as it:
                return sorted(f"{folder}/{e.name}" for e in it if _is_dir(e))
        except OSError:
            return []
    from google.cloud import storage

    bucket, prefix = _gcs_prefix(folder)
    blobs = storage.Client().list_blobs(bucket, prefix=prefix, delimiter="/")
    for _ in blobs:  # the prefixes arrive with the pages
        pass
    return sorted(f"gs://{bucket}/{p.rstrip('/')}" for p in blobs.prefixes)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def list_unit(unit: Unit, root: str, planned: frozenset = frozenset()) -> Iterator[Entry]:
    """The files of one unit of the input `root`. `planned`: identities of the plan's folders, so that
    a link to any of them is a `symlink_loop` entry instead of a second listing of it."""
    if not is_local(unit.path):
        yield from _list_gcs(unit)
        return
    yield from _list_local(unit.path, recursive=unit.recursive, seen=set(planned), inside=_real(root))


def planned_identities(units: list[Unit]) -> frozenset:
    return frozenset(_identity(u.path) for u in units if is_local(u.path) and os.path.isdir(u.path))


def _real(path: str) -> str:
    return os.path.realpath(path).rstrip("/") + "/"


def _links_inside(path: str, inside: str) -> bool:
    """Whether `path` is a link to a folder inside the input (whose files are listed by their own path)."""
    return os.path.islink(path) and _real(path).startswith(inside)


def _list_local(root: str, recursive: bool = True, seen: set | None = None, inside: str = "") -> Iterator[Entry]:
    """Files under `root`; folder links into `inside` (the input's real path) or to a folder already
    visited are SYMLINK_LOOP entries, links to folders outside the input are followed."""
    if not os.path.isdir(root):
        if os.path.exists(root):
            raise NotADirectoryError(f"{root} is a file, not a folder")
        return
    visited = {_identity(root)} | (seen or set())
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # unreadable folder: nothing to account (no file was listed)
        subfolders = []
        for child in children:
            path = f"{folder}/{child.name}"
            try:
                if child.is_dir(follow_symlinks=True):
                    if not recursive:
                        continue  # a unit of its own, or reported when the units were planned
                    identity = _identity(path)
                    if identity in visited or (inside and _links_inside(path, inside)):
                        yield Entry(path, 0, SYMLINK_LOOP)
                    else:
                        visited.add(identity)
                        subfolders.append(path)
                elif child.is_file(follow_symlinks=True):
                    yield Entry(path, child.stat(follow_symlinks=True).st_size)
                elif child.is_symlink():
                    yield Entry(path, 0, BROKEN_LINK)
            except OSError:  # a link loop of links, permission: account it rather than lose it
                yield Entry(path, 0, BROKEN_LINK)
        stack.extend(reversed(subfolders))  # depth-first, in name order


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def exists_any(root: str) -> bool:
    """Whether `root` holds at least one file (stops at the first)."""
    return next(iter(list_entries(root)), None) is not None
