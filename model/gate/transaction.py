"""Transaction: several moves and writes of a gate as one, all or nothing across its roots, and the commit
journal it writes step by step (model/gate/recovery.py reads it back after a kill). See the package
docstring."""

from __future__ import annotations

import contextlib
import json
import logging
import os

from model.gate.names import PathRefused, _root, canonical, is_local, resolve, within

log = logging.getLogger("emotion")

# =========================================================================== the journal's format

# Written by Transaction, read back by recovery.read_journal.
JOURNAL_VERSION = 2
JOURNAL_HEADER = "header.json"


def identity(path: str) -> str:
    """What proves a moved file or folder is the one a journal step moved: its inode (a rename keeps
    it), and for a file its size and modification time; "" on gs:// (no inode: checked by path)."""
    import stat

    if not is_local(path):
        return ""
    st = os.lstat(path)
    return f"d:{st.st_ino}" if stat.S_ISDIR(st.st_mode) else f"f:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def content_digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


class Transaction:
    """Several moves and writes as one: undone in reverse on an exception, or, on success, finished by
    removing what they replaced. Replaced files are moved ("retired") into the trash folder of their
    root (trash: {root: folder inside it}), so an undo is a rename back.

    With a `journal` folder, every step is written there (one small file per step, before the step is
    taken), after a header: a process killed inside the transaction (kill -9, a lost worker) cannot
    undo itself, and the next run into the same root rolls it back from the journal (read_journal,
    roll_back). The journal is canonical and bound (see read_journal): the header names the run, its
    roots by role (`roles`: {"output": path, "table": path}, stored resolved) and each role's scratch
    folder (the trash folder's parent, relative to its root); each step names its paths as (role, path
    relative to that root) and carries the run id, its number and a digest of what it moves (identity)
    or writes (content_digest), so that a roll-back acts only on what this run provably did.

    `gate`: the Gate (model/gate/ops.py) that checks and takes every step; Gate.transaction() makes one."""

    def __init__(self, gate, trash: dict[str, str], journal: str | None = None, header: dict | None = None,
                 roles: dict[str, str] | None = None):
        self.gate = gate
        self.trash = {_root(root): folder for root, folder in trash.items()}
        self.steps: list[tuple] = []
        self._n = 0
        self.journal = journal.rstrip("/") if journal else None
        roles = roles or {f"root{i}": root for i, root in enumerate(trash)}
        self.roles = {role: canonical(root) for role, root in roles.items() if root}
        scratch = {}
        for folder in trash.values():  # each root's trash folder lies in its scratch (staging) folder
            role, rel = self._ref(folder)
            scratch[role] = rel.rsplit("/", 1)[0]
        self.header = {"journal_version": JOURNAL_VERSION, **(header or {}), "roots": self.roles, "scratch": scratch}

    def _ref(self, path: str) -> list:
        """[role, path relative to that role's root]: the journal's one spelling of a path."""
        resolved = resolve(path)
        for role, root in sorted(self.roles.items(), key=lambda item: -len(item[1])):
            if within(resolved, root):
                return [role, resolved[len(root.rstrip("/")) + 1:]]
        raise PathRefused(f"{path}: not inside one of this transaction's roots ({', '.join(self.roles.values())})")

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

    def _journal(self, kind: str, a: str, b: str | None, created: list[str], digest: str) -> None:
        """Writes the step about to be taken (write-ahead: the entry exists before the change does)."""
        if self.journal:
            entry = {"run_id": self.header.get("run_id"), "seq": len(self.steps), "kind": kind, "a": self._ref(a),
                     "b": self._ref(b) if b is not None else None, "created": [self._ref(c) for c in created],
                     "digest": digest}
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
        self._journal("move", src, dst, created, identity(self.gate.inside(src)))
        self.gate.move(src, dst)
        self.steps.append(("move", src, dst, created))

    def write_bytes(self, path: str, data: bytes) -> None:
        self.retire(path)
        created = self.gate._missing_parents(resolve(path)) if is_local(path) else []
        self._journal("new", path, None, created, content_digest(data))
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

