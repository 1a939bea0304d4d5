"""Literal, complete listing of an input folder (local or gs://), and glob escaping.

A user's --input is a folder name, never a pattern: `faces [2024]` must not read `faces 2/`.
Beam's FileSystems.match treats every path as a glob, and its local listing does not follow
symlinked folders, so files behind them would be neither written nor rejected. This module
lists folders itself:

- local: os.walk with followlinks, each real folder visited once (a link back to an ancestor
  is a `symlink_loop` entry, not an endless walk); a link whose target is gone is a
  `broken_link` entry, so the pipelines reject it with that reason instead of losing it;
- gs://: the object listing under "<root>/" (pages are fetched by Beam's GCS client).

Entries come out in a deterministic order (sorted folder by folder, or the object store's
lexicographic order) without holding the whole listing in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

from apache_beam.io.filesystems import FileSystems

BROKEN_LINK = "broken_link"
SYMLINK_LOOP = "symlink_loop"
PROBLEMS = {  # reject reason -> detail
    BROKEN_LINK: "symbolic link whose target does not exist (or cannot be read)",
    SYMLINK_LOOP: "link to a folder already listed (a loop, or a second path to the same folder)",
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
        yield from _list_local(root)
    else:
        filesystem = FileSystems.get_filesystem(root)
        # _list is Beam's literal prefix listing (match() would read the root as a glob).
        for metadata in filesystem._list(root.rstrip("/") + "/"):
            if not metadata.path.endswith("/"):  # folder placeholder objects
                yield Entry(metadata.path, metadata.size_in_bytes)


def _list_local(root: str) -> Iterator[Entry]:
    if not os.path.isdir(root):
        if os.path.exists(root):
            raise NotADirectoryError(f"{root} is a file, not a folder")
        return
    visited = {_identity(root)}
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
                    identity = _identity(path)
                    if identity in visited:
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
