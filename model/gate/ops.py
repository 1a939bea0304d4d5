"""The gate's operations: Gate (every remove, move, link and write outside staging, refused outside the
run's roots) and Transaction (all or nothing across roots). See the package docstring."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile

from model.gate.names import PathRefused, _root, is_local, resolve, within

log = logging.getLogger("emotion")


# =========================================================================== remote stores


class TensorFlowStore:
    """gs:// through tf.io.gfile (training and export: no Beam there)."""

    @staticmethod
    def _gfile():
        import tensorflow as tf

        return tf.io.gfile

    def exists(self, path):
        return self._gfile().exists(path)

    def files(self, folder):
        gfile = self._gfile()
        if not gfile.isdir(folder):
            return []
        return sorted(f"{top.rstrip('/')}/{name}" for top, _, names in gfile.walk(folder) for name in names)

    def delete(self, paths):
        for path in paths:
            self._gfile().remove(path)

    def rename(self, sources, targets):
        for source, target in zip(sources, targets):
            self._gfile().rename(source, target, overwrite=True)

    def write(self, path, data):
        with self._gfile().GFile(path, "wb") as f:
            f.write(data)

    def read(self, path):
        with self._gfile().GFile(path, "rb") as f:
            return f.read()


class NoRemoteStore:
    """The store of a gate whose owner named none: gs:// paths are checked, never acted on."""

    def _refuse(self, *args):
        raise PathRefused("this run has no store for gs:// paths (a gate made without one)")

    exists = files = delete = rename = write = read = _refuse


# =========================================================================== the gate


class Gate:
    """The run's roots, and every operation that changes a file under them (see the module docstring)."""

    def __init__(self, roots, store=None):
        """`store` acts on gs:// paths: Beam's FileSystems in the pipelines (beam_pipelines.storage),
        tf.io.gfile in training and export (TensorFlowStore); none, and gs:// paths are only checked."""
        self.roots: list[str] = []
        self._temps: set[str] = set()
        self._store = store or NoRemoteStore()
        for root in roots:
            if root:
                self.add_root(root)

    def add_root(self, root: str) -> None:
        resolved = _root(root)
        if resolved in ("/", "") or (not is_local(root) and "/" not in resolved.split("://", 1)[1]):
            raise PathRefused(f"{root}: a run's folder cannot be a file system's or a bucket's root")
        if resolved not in self.roots:
            self.roots.append(resolved)

    def describe(self) -> str:
        return ", ".join(self.roots) or "none"

    def inside(self, path: str, allow_root: bool = False) -> str:
        """The resolved path, when it lies inside one of the roots; PathRefused otherwise."""
        resolved = resolve(path)
        if any(within(resolved, root) or (allow_root and resolved == root) for root in self.roots):
            return resolved
        raise PathRefused(f"refusing to change {path}" + (f" (really {resolved})" if resolved != path else "")
                          + f": it is outside this run's folders ({self.describe()})")

    # ------------------------------------------------------------------ reading (checked, no change)

    def exists(self, path: str) -> bool:
        """A file, link or folder (gs://: an object, or objects under the prefix) at path."""
        path = self.inside(path, allow_root=True)
        if is_local(path):
            return os.path.lexists(path)
        return self._store.exists(path) or bool(self._store.files(path))

    def read_bytes(self, path: str) -> bytes:
        """A file's bytes (local: not through a link at `path`)."""
        path = self.inside(path)
        if not is_local(path):
            return self._store.read(path)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def isdir(self, path: str) -> bool:
        path = self.inside(path, allow_root=True)
        return os.path.isdir(path) and not os.path.islink(path) if is_local(path) else bool(self.files(path))

    def files(self, folder: str) -> list[str]:
        """Every file under `folder` (local: not through links), as full paths; [] when absent."""
        folder = self.inside(folder, allow_root=True)
        if not is_local(folder):
            return self._store.files(folder)
        if not os.path.isdir(folder) or os.path.islink(folder):
            return [folder] if os.path.lexists(folder) else []
        return sorted(os.path.join(top, name) for top, dirs, names in os.walk(folder)
                      for name in names + [d for d in dirs if os.path.islink(os.path.join(top, d))])

    # ------------------------------------------------------------------ changing

    def makedirs(self, path: str) -> None:
        path = self.inside(path, allow_root=True)
        if is_local(path):
            os.makedirs(path, exist_ok=True)

    def remove(self, path: str) -> None:
        """One file or link; nothing when it is absent. A folder is refused (use remove_tree)."""
        path = self.inside(path)
        if is_local(path):
            if os.path.isdir(path) and not os.path.islink(path):
                raise IsADirectoryError(errno.EISDIR, "a folder, not a file", path)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        elif self._store.exists(path):
            self._store.delete([path])

    def remove_files(self, paths) -> None:
        """Several files (one batch on gs://)."""
        paths = [self.inside(path) for path in paths]
        if paths and not is_local(paths[0]):
            self._store.delete([path for path in paths if self._store.exists(path)])
            return
        for path in paths:
            self.remove(path)

    def remove_tree(self, path: str) -> None:
        """A folder and everything under it (a link: the link only); nothing when absent."""
        path = self.inside(path)
        if not is_local(path):
            self._store.delete(self._store.files(path))
            return
        if os.path.islink(path) or os.path.isfile(path):
            os.remove(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)  # never follows links inside the tree

    def remove_empty_dirs(self, path: str, stop: str) -> None:
        """Removes `path` and its parents while they are empty folders, up to (not including) `stop`."""
        if not is_local(path):
            return
        stop = resolve(stop)
        path = self.inside(path)
        while within(path, stop) and os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
            self.inside(path)
            os.rmdir(path)
            path = os.path.dirname(path)

    def remove_empty_root(self, root: str) -> None:
        """One of the roots itself (a temp folder the run made), once it is empty."""
        resolved = self.inside(root, allow_root=True)
        if resolved not in self.roots:
            raise PathRefused(f"{root} is not one of this run's folders")
        if is_local(resolved) and os.path.isdir(resolved) and not os.listdir(resolved):
            os.rmdir(resolved)

    def move(self, src: str, dst: str) -> list[str]:
        """Moves a file (replacing a file at dst in one step) or a folder (dst must not exist).
        Returns the folders it created for dst (for an undo to remove)."""
        src, dst = self.inside(src), self.inside(dst)
        if not is_local(src):
            files = self._store.files(src) if not self._store.exists(src) else [src]
            self._store.rename(files, [dst + f[len(src):] for f in files])
            return []
        created = self._missing_parents(dst)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(src) and not os.path.islink(src):
            if os.path.lexists(dst):
                raise FileExistsError(errno.EEXIST, "the target of a folder move exists", dst)
            os.rename(src, dst)
        else:
            os.replace(src, dst)
        return created

    def _missing_parents(self, path: str) -> list[str]:
        missing, parent = [], os.path.dirname(path)
        while parent and not os.path.isdir(parent) and any(within(parent, root) for root in self.roots):
            missing.append(parent)
            parent = os.path.dirname(parent)
        return missing

    def write_bytes(self, path: str, data: bytes) -> None:
        """A file whole or not at all: locally a fresh temporary file beside it, renamed over it
        (a link at `path` is replaced, never written through); gs://, one upload."""
        path = self.inside(path)
        if not is_local(path):
            self._store.write(path, data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    def make_temp_dir(self, prefix: str) -> str:
        """A fresh, private folder in the system's temp folder (never a predictable or existing
        name), made a root of this gate; returns its absolute path."""
        path = tempfile.mkdtemp(prefix=prefix)
        self.add_root(path)
        self._temps.add(_root(path))
        return path

    def remove_temp_dir(self, path: str) -> None:
        """A temp folder this gate made (make_temp_dir), with everything in it."""
        if _root(path) not in self._temps:
            raise PathRefused(f"{path} is not a temp folder this run made")
        shutil.rmtree(_root(path), ignore_errors=True)

    def link(self, target: str, folder: str, name: str = "w") -> str:
        """A new link folder/name -> the absolute path of target (folder: one of this gate's temp
        folders); an existing entry there is an error, never reused."""
        path = self.inside(os.path.join(folder, name))
        os.symlink(os.path.abspath(target), path, target_is_directory=True)
        return path

    def transaction(self, trash: dict[str, str], journal: str | None = None,
                    header: dict | None = None) -> Transaction:
        return Transaction(self, trash, journal, header)


class Transaction:
    """Several moves and writes as one: undone in reverse on an exception, or, on success, finished by
    removing what they replaced. Replaced files are moved ("retired") into the trash folder of their
    root (trash: {root: folder inside it}), so an undo is a rename back.

    With a `journal` folder, every step is written there (one small file per step, before the step is
    taken), after a `header` the caller chooses: a process killed inside the transaction (kill -9, a
    lost worker) cannot undo itself, and the next run into the same root rolls it back from the journal
    (roll_back). Each undo checks what is there first, so a step that was journaled but never taken is
    skipped and a roll-back that is itself cut short can simply be run again."""

    def __init__(self, gate: Gate, trash: dict[str, str], journal: str | None = None, header: dict | None = None):
        self.gate = gate
        self.trash = {_root(root): folder for root, folder in trash.items()}
        self.steps: list[tuple] = []
        self._n = 0
        self.journal = journal.rstrip("/") if journal else None
        self.header = header or {}

    def __enter__(self) -> Transaction:
        if self.journal:
            self.gate.write_bytes(f"{self.journal}/{JOURNAL_HEADER}", json.dumps(self.header).encode())
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self.journal:  # committed: nothing to roll back any more
                self.gate.remove_tree(self.journal)
            for folder in self.trash.values():
                self.gate.remove_tree(folder)
            return
        self.undo()
        if self.journal:
            self.gate.remove_tree(self.journal)

    def _journal(self, kind: str, a: str, b: str | None, created: list[str]) -> None:
        """Writes the step about to be taken (write-ahead: the entry exists before the change does)."""
        if self.journal:
            entry = {"kind": kind, "a": a, "b": b, "created": created}
            self.gate.write_bytes(f"{self.journal}/{len(self.steps):06d}.json", json.dumps(entry).encode())

    def _trash_path(self, path: str) -> str:
        resolved = resolve(path)
        for root, folder in sorted(self.trash.items(), key=lambda item: -len(item[0])):
            if within(resolved, root):
                self._n += 1
                return f"{folder.rstrip('/')}/{self._n:05d}/{resolved[len(root) + 1:]}"
        raise PathRefused(f"{path}: no trash folder for its root ({self.gate.describe()})")

    def retire(self, path: str) -> None:
        """Takes `path` (a file or a folder) out of the way, to be removed on success; absent: nothing."""
        if not self.gate.exists(path):
            return
        trash = self._trash_path(path)
        self._step_move(path, trash)

    def move(self, src: str, dst: str) -> None:
        self.retire(dst)
        self._step_move(src, dst)

    def _step_move(self, src: str, dst: str) -> None:
        created = self.gate._missing_parents(resolve(dst)) if is_local(dst) else []
        self._journal("move", src, dst, created)
        self.gate.move(src, dst)
        self.steps.append(("move", src, dst, created))

    def write_bytes(self, path: str, data: bytes) -> None:
        self.retire(path)
        created = self.gate._missing_parents(resolve(path)) if is_local(path) else []
        self._journal("new", path, None, created)
        self.gate.write_bytes(path, data)
        self.steps.append(("new", path, None, created))

    def undo(self) -> None:
        """Every step taken back, last first; a step that cannot be undone is logged, the rest still run."""
        for kind, a, b, created in reversed(self.steps):
            try:
                if kind == "move":
                    self.gate.move(b, a)
                else:
                    self.gate.remove(a)
                for folder in created:
                    self.gate.remove_empty_dirs(folder, os.path.dirname(folder))
            except Exception as exc:  # keep undoing the rest
                log.error("undo: could not put %s back (%s)", a, exc)
        for folder in self.trash.values():
            with contextlib.suppress(Exception):
                if not self.gate.files(folder):
                    self.gate.remove_tree(folder)
        self.steps = []




# =========================================================================== roll-back after a kill

JOURNAL_HEADER = "header.json"
_ENTRY_KEYS = {"kind", "a", "b", "created"}


def read_journal(gate: Gate, journal: str) -> tuple[dict, list[dict]]:
    """The header and the steps of a killed transaction's journal, validated: untrusted input (any
    path in it is checked against the gate's roots before it is acted on). A UsageError when damaged."""
    journal = journal.rstrip("/")
    header, steps = {}, []
    for path in sorted(gate.files(journal)):
        name = path.rsplit("/", 1)[-1]
        try:
            value = json.loads(gate.read_bytes(path))
        except ValueError:
            raise PathRefused(f"{journal}: {name} is not a journal entry; move the folder away") from None
        if name == JOURNAL_HEADER:
            header = value if isinstance(value, dict) else {}
            continue
        ok = isinstance(value, dict) and set(value) == _ENTRY_KEYS and value["kind"] in ("move", "new") \
            and isinstance(value["a"], str) and (value["b"] is None or isinstance(value["b"], str)) \
            and isinstance(value["created"], list) and all(isinstance(c, str) for c in value["created"])
        if not ok or not name[:-len(".json")].isdigit():
            raise PathRefused(f"{journal}: {name} is not a journal entry; move the folder away")
        steps.append(value)
    return header, steps


def roll_back(gate: Gate, steps: list[dict]) -> int:
    """Undoes a killed transaction's journaled steps, last first, each only where the files say it was
    taken: a move whose target exists and whose source does not is moved back; a new file is removed.
    Every path is checked against the gate's roots first (PathRefused, nothing changed). Returns the
    number of steps undone."""
    for step in steps:
        for path in (step["a"], step["b"], *step["created"]):
            if path is not None:
                gate.inside(path)
    undone = 0
    for step in reversed(steps):
        src, dst = step["a"], step["b"]
        if step["kind"] == "move":
            if gate.exists(dst) and not gate.exists(src):
                gate.move(dst, src)
                undone += 1
        elif gate.exists(src):
            gate.remove(src)
            undone += 1
        for folder in step["created"]:
            gate.remove_empty_dirs(folder, os.path.dirname(folder))
    return undone
