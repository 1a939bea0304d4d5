"""RootClaim: one root the tool owns (an --output, a --table, a --model-dir), claimed by a run.

What every root shares, whatever writes into it:

  ROOT/<manifest>   what the tool wrote there: every file under the root's own names (relative paths),
                    read back as untrusted input (a regular file, a size limit, a JSON object whose
                    files are plain relative paths under the root's names), refused in one line.
  ROOT/<lock>       one writer at a time (RootLock); a gs:// root of a run that commits on a worker
                    keeps its lock past the launcher (the commit releases it).
  owned vs present  a file under one of the root's names that the manifest does not list is the
                    user's: the run stops, naming it (one line), before anything is written.
  staging           a dead run's staging folder is removed through the gate, then the root's staging
                    folder if it is left empty.

A kind of root is a subclass that names its flag, manifest, lock and names, and words its refusals
(outputs.OutputClaim, table.claim.TableClaim, model.ownership.TrainingClaim); gs:// goes through the
store its owner passes, as for Gate. The life of a claim: `check_root` (before the lock, nothing
written), the lock, `claim` (under it), and on exit `end` then the lock released.
"""

from __future__ import annotations

import json

from model.errors import UsageError
from model.gate.locks import RootLock
from model.gate.names import PathRefused, canonical, check_relative, is_local
from model.gate.ops import Gate

MANIFEST_MAX_BYTES = 256 << 20  # a manifest lists every file of a run: far below this


def under(rel: str, names) -> bool:
    """Whether the relative path `rel` is one of `names` or lies under one."""
    return any(rel == name or rel.startswith(name + "/") for name in names)


def shown(files: list[str]) -> str:
    """The first three of `files`, and how many more."""
    return ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def remove_staging(g: Gate, folder: str, root: str, staging: str = "_staging") -> None:
    """Removes the folder `folder` inside `root` (through the gate `g`), then root's staging folder if
    `folder` was in it and it is left empty."""
    g.remove_tree(folder)
    parent = folder.rstrip("/").rsplit("/", 1)[0]
    if parent.rsplit("/", 1)[-1] == staging:
        g.remove_empty_dirs(parent, root)


class RootClaim:
    """A root owned by the tool (see the module docstring). Class attributes configure a kind of root;
    the wording's fields: {path} (the manifest), {rel} (an entry), {flag}, {root}, {n}, {shown}, {hint}."""

    FLAG = "--output"
    MANIFEST = "_run.json"
    LOCK = "_run.lock"
    STAGING = "_staging"
    NAMES: tuple = ()  # the root's own names (files or folders directly under it)
    FILES_REQUIRED = False  # whether a manifest without "files" is refused
    UNREADABLE = "{path} is not a manifest this tool wrote (a link, a FIFO or a device): move it away"
    NOT_MANIFEST = "{path} is not a manifest this tool wrote: move it away or choose another {flag}"
    FILES_NOT_LIST = ""  # "" : NOT_MANIFEST
    UNLISTED = "{path} lists {rel}, which this tool does not write there: move it away"
    FOREIGN = ("{flag} {root} already holds {n} file(s) this tool did not write ({shown}): move them away or "
               "choose another {flag}{hint}")

    def __init__(self, root: str, run_id: str = "", store=None, remote: bool = False):
        """`store`: gs:// through it (see Gate); `remote`: the run commits on a worker, which releases a
        gs:// root's lock (see __exit__)."""
        self.root, self.run_id, self.store, self.remote = root.rstrip("/"), run_id, store, remote
        self.names = tuple(self.NAMES)
        self.lock = RootLock(self.root, run_id, flag=self.FLAG, name=self.LOCK)

    def gate(self) -> Gate:
        return Gate([self.root], store=self.store)

    # ------------------------------------------------------------------ the manifest, untrusted

    @property
    def manifest_path(self) -> str:
        return f"{self.root}/{self.MANIFEST}"

    def read_manifest_bytes(self) -> bytes | None:
        """The manifest's bytes (None when absent); locally only a regular file is opened (a link, a FIFO,
        a device or a folder is refused in one line, unopened), and none larger than the limit."""
        path, g = self.manifest_path, self.gate()
        try:
            if not g.exists(path):
                return None
            return g.read_bytes(path, limit=MANIFEST_MAX_BYTES)
        except PathRefused:
            raise UsageError(self.UNREADABLE.format(path=path, flag=self.FLAG)) from None

    def read_manifest(self) -> dict | None:
        """The manifest, validated (validate_manifest); None when there is none."""
        raw = self.read_manifest_bytes()
        if raw is None:
            return None
        try:
            manifest = json.loads(raw)
        except ValueError:  # (UnicodeDecodeError included)
            manifest = None
        return self.validate_manifest(manifest, self.manifest_path)

    @classmethod
    def validate_manifest(cls, manifest, path: str) -> dict:
        """A manifest is untrusted input: an object whose files are plain relative paths (no '..', not
        absolute) that this kind of root may list (may_list), and what check_manifest asks; UsageError
        (one line) otherwise."""
        if not isinstance(manifest, dict):
            raise UsageError(cls.NOT_MANIFEST.format(path=path, flag=cls.FLAG))
        files = manifest.get("files", None if cls.FILES_REQUIRED else [])
        if not isinstance(files, list):
            raise UsageError((cls.FILES_NOT_LIST or cls.NOT_MANIFEST).format(path=path, flag=cls.FLAG))
        for rel in files:
            check_relative(rel, path)
            if not cls.may_list(rel):
                raise UsageError(cls.UNLISTED.format(path=path, rel=rel, flag=cls.FLAG))
        cls.check_manifest(manifest, path)
        return manifest

    @classmethod
    def may_list(cls, rel: str) -> bool:
        """Whether a manifest of this kind of root may list `rel` (a checked relative path)."""
        return under(rel, cls.NAMES)

    @classmethod
    def check_manifest(cls, manifest: dict, path: str) -> None:
        """Whatever else a kind of root checks in its manifest (UsageError)."""

    # ------------------------------------------------------------------ present vs owned

    def files_under(self, name: str, g: Gate | None = None) -> list[str]:
        """Relative paths of the files at ROOT/name (a file, or everything under a folder; "" the root)."""
        g = g or self.gate()
        prefix = canonical(self.root).rstrip("/") + "/"
        paths = g.files(f"{self.root}/{name}" if name else self.root)
        return [path[len(prefix):] if path.startswith(prefix) else path[len(self.root) + 1:] for path in paths]

    def present(self, names=None) -> list[str]:
        """Relative paths of the files under the root's own names (or under `names`, some of them)."""
        g = self.gate()
        return sorted(rel for name in (self.names if names is None else names) for rel in self.files_under(name, g))

    def owned(self, manifest: dict | None, names=None) -> set[str]:
        """The files the manifest says are the tool's."""
        return set(manifest.get("files", [])) if manifest else set()

    def refusal(self, foreign: list[str], hint: str = "") -> UsageError:
        """The one line naming the files under the root's names that are not the tool's."""
        return UsageError(self.FOREIGN.format(flag=self.FLAG, root=self.root, n=len(foreign), shown=shown(foreign),
                                              hint=hint))

    def foreign(self, manifest: dict | None, overwrite: bool = False, hint: str = "", names=None) -> list[str]:
        """The files present under the root's names (or `names`) that the manifest does not own; refused
        (the one line, with `hint`) unless `overwrite`."""
        found = sorted(set(self.present(names)) - self.owned(manifest, names))
        if found and not overwrite:
            raise self.refusal(found, hint)
        return found

    def remove_staging(self, folder: str) -> None:
        """A dead run's staging folder inside the root, then the root's staging folder if left empty."""
        remove_staging(self.gate(), folder, self.root, self.STAGING)

    # ------------------------------------------------------------------ the claim's life

    def check_root(self) -> None:
        """Before the lock: whether the root can take a run (nothing written)."""

    def claim(self):
        """Under the lock: the checks and the first writes; returns what `with` binds."""
        return self

    def end(self, exc_type, exc) -> None:
        """Under the lock, as the run ends (exc_type: how it failed, or None)."""

    def __enter__(self):
        self.check_root()
        self.lock.acquire()
        try:
            return self.claim()
        except BaseException:
            self.lock.release()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.end(exc_type, exc)
        finally:
            # A remote run's gs:// lock outlives the launcher: its commit, on a worker, releases it.
            if exc_type is not None or is_local(self.root) or not self.remote:
                self.lock.release()
