"""The gate: every remove, move and link a run makes, and every write outside its staging folder
(manifests, commits, the table's runs row, report.html), checked against the run's own roots.

A run owns a few roots: its --output, its --table root, its --model-dir, and the temporary folders it
created itself (Gate.make_temp_dir). Every path an operation touches is resolved first (local: the
real path of its folder, links followed, plus its own name, so a link is removed, never its target;
gs://: the object name, refused if it holds a `.` or `..` segment) and refused unless it lies strictly
inside one of those roots, whatever a manifest, a metadata file or a link says. A refusal is a
PathRefused (a UsageError: one line, exit 2).

Names that become paths are validated where they enter (check_name: run ids, model versions; and
check_relative: the entries of a manifest), so a refusal here is the second line of defence.

The pipelines' workers write their results into the run's staging folder (_staging/<run id>/, made
by the run itself, under its --output or --table root) through Beam's sinks; those files reach their
place only through a Transaction of this module.

Beam-free and TensorFlow-free on import: beam_pipelines/ and model/ both use it. Remote (gs://)
operations go through the store its owner names: Beam's FileSystems ("beam", the pipelines) or
tf.io.gfile ("tensorflow", training and export: the training image has no Beam). Local operations are
os/shutil calls, literal (no globbing), here and nowhere else: tests/test_gate.py fails when code
outside this module calls shutil.rmtree, os.remove/unlink/rename/replace/rmdir, FileSystems.delete/
rename or tf.io.gfile.remove/rmtree/rename.

The API (every path is local or gs://):

    gate = Gate([output, table_root], remote="beam")
    gate.inside(path)                  the checked path, or PathRefused
    gate.remove(path)                  one file or link (absent: nothing)
    gate.remove_tree(path)             a folder and everything under it (a link: only the link)
    gate.remove_empty_dirs(path, stop) empty folders from path up to (not including) stop
    gate.move(src, dst)                a file (replacing a file at dst) or a folder (dst must not exist)
    gate.write_bytes(path, data)       a new file, whole or not at all (local: temp file + rename)
    gate.make_temp_dir(prefix)         a fresh folder (tempfile.mkdtemp), made a root of this gate
    gate.link(target, folder)          a fresh link folder/<name> to the absolute target
    with gate.transaction({root: trash_folder}) as tx:
        tx.move(src, dst); tx.retire(path); tx.write_bytes(path, data)
                                       all or nothing: an exception undoes every step, in reverse;
                                       on success the retired files (in the trash folders) are removed

    RootLock(root, run_id, flag, name)  one writer per root (see its docstring)

The invariants a harness can check after any run, failed or not: nothing outside the roots changed;
every manifest (outputs' _run.json, training's _train.json) lists exactly the files under the names
its owner writes; no trash or staging folder is left after a run that ended (killed runs excepted:
the next run removes what their manifest names).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid

from beam_pipelines.errors import UsageError

log = logging.getLogger("emotion")

NAME_MAX = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class PathRefused(UsageError):
    """An operation on a path outside the run's roots (or a path that cannot be checked)."""


# =========================================================================== names


def name_problem(value) -> str | None:
    """Why `value` cannot be a name that becomes part of a path, or None when it can."""
    if not isinstance(value, str):
        return f"a name must be a string, not {type(value).__name__}"
    if not value or len(value) > NAME_MAX or not _NAME.fullmatch(value):
        return (f"a name is 1 to {NAME_MAX} letters, digits, '.', '_' and '-', starting with a letter or a "
                "digit")
    return None


def check_name(value, what: str) -> str:
    """`value` when it is a safe name (run id, model version, ...); otherwise a UsageError naming `what`."""
    problem = name_problem(value)
    if problem:
        shown = repr(value) if not isinstance(value, str) or len(value) <= 60 else repr(value[:60]) + "..."
        raise UsageError(f"{what} {shown} cannot name a folder: {problem}")
    return value


def relative_problem(rel) -> str | None:
    """Why `rel` is not a plain relative path (as a manifest lists), or None."""
    if not isinstance(rel, str) or not rel:
        return "not a non-empty string"
    if rel.startswith("/") or "\\" in rel or "://" in rel or any(ord(c) < 32 for c in rel):
        return "not a relative path"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "has an empty, '.' or '..' part"
    return None


def check_relative(rel, what: str) -> str:
    problem = relative_problem(rel)
    if problem:
        raise UsageError(f"{what}: entry {str(rel)[:80]!r} {problem}; it was not written by this pipeline "
                         "(move the folder away or choose another one)")
    return rel


# =========================================================================== paths


def is_local(path: str) -> bool:
    return "://" not in path


def resolve(path: str) -> str:
    """The path an operation on `path` acts on: local, the real path of its folder plus its own name
    (a link is not followed: removing it removes the link); gs://, the object name as given."""
    if is_local(path):
        absolute = os.path.abspath(path)
        if absolute == "/":
            return absolute
        parent, name = os.path.split(absolute)
        return os.path.join(os.path.realpath(parent), name)
    scheme, _, rest = path.partition("://")
    parts = rest.rstrip("/").split("/")
    if not parts[0] or any(part in (".", "..") for part in parts[1:]):
        raise PathRefused(f"{path}: an object path with an empty bucket or a '.' or '..' part")
    return f"{scheme}://{'/'.join(parts)}"


def _root(path: str) -> str:
    return os.path.realpath(os.path.abspath(path)) if is_local(path) else resolve(path)


def within(path: str, root: str) -> bool:
    """True when the resolved `path` lies strictly inside the resolved `root`."""
    return path != root and path.startswith(root.rstrip("/") + "/")


# =========================================================================== remote stores


class _BeamStore:
    """gs:// through Beam's FileSystems (the pipelines)."""

    @staticmethod
    def _fs():
        from apache_beam.io.filesystems import FileSystems

        return FileSystems

    def exists(self, path):
        return self._fs().exists(path)

    def files(self, folder):
        from beam_pipelines.listing import list_entries

        return [entry.path for entry in list_entries(folder)]

    def delete(self, paths):
        if paths:
            self._fs().delete(list(paths))

    def rename(self, sources, targets):
        if sources:
            self._fs().rename(list(sources), list(targets))

    def write(self, path, data):
        with self._fs().create(path, mime_type="application/octet-stream") as f:
            f.write(data)


class _TensorFlowStore:
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


_STORES = {"beam": _BeamStore, "tensorflow": _TensorFlowStore}


# =========================================================================== the gate


class Gate:
    """The run's roots, and every operation that changes a file under them (see the module docstring)."""

    def __init__(self, roots, remote: str = "beam"):
        self.roots: list[str] = []
        self._temps: set[str] = set()
        self.remote = remote
        self._store = _STORES[remote]()
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

    def transaction(self, trash: dict[str, str]) -> Transaction:
        return Transaction(self, trash)


class Transaction:
    """Several moves and writes as one: undone in reverse on an exception, or, on success, finished by
    removing what they replaced. Replaced files are moved ("retired") into the trash folder of their
    root (trash: {root: folder inside it}), so an undo is a rename back."""

    def __init__(self, gate: Gate, trash: dict[str, str]):
        self.gate = gate
        self.trash = {_root(root): folder for root, folder in trash.items()}
        self.steps: list[tuple] = []
        self._n = 0

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            for folder in self.trash.values():
                self.gate.remove_tree(folder)
            return
        self.undo()

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
        self.steps.append(("move", path, trash, self.gate.move(path, trash)))

    def move(self, src: str, dst: str) -> None:
        self.retire(dst)
        self.steps.append(("move", src, dst, self.gate.move(src, dst)))

    def write_bytes(self, path: str, data: bytes) -> None:
        self.retire(path)
        created = self.gate._missing_parents(resolve(path)) if is_local(path) else []
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


# =========================================================================== one writer per root


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writable_folder(path: str, flag: str) -> bool:
    """Creates the local folder `path` if needed; a UsageError (one line) when it is a file, lies under
    a file, or cannot be created or written. Returns True when it created it."""
    if not is_local(path):
        return False
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag} {path} is a file, not a folder: choose another {flag}")
    created = not os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {flag} {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path} is not writable: choose another {flag} or fix its permissions")
    return created


class RootLock:
    """One writer per root: ROOT/<name> holds the writer's run id, host, pid and start.

    Locally it is an flock, which the kernel drops when its process dies, so a dead run's lock is taken
    over by the next run without guessing. On gs:// it is an object created only if absent (a
    generation precondition); one left by a dead process of this host is replaced (compare-and-swap on
    its generation); one from elsewhere (a failed Dataflow job) names itself and how to remove it.
    Where google-cloud-storage is not installed (the training image), a gs:// root is not locked."""

    def __init__(self, root: str, run_id: str, flag: str = "--output", name: str = "_run.lock"):
        self.root, self.flag, self.name = root.rstrip("/"), flag, name
        self.path = f"{self.root}/{name}"
        self.holder = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started": _now()}
        self._fd = None
        self._created_root = False

    def _busy(self, holder: dict) -> UsageError:
        return UsageError(
            f"{self.flag} {self.root} is in use by run {holder.get('run_id')} (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {holder.get('started')}); wait for it to finish or choose another "
            f"{self.flag}" + ("" if is_local(self.path) else f" (if that run is dead, delete {self.path})"))

    def acquire(self) -> None:
        if not is_local(self.path):
            self._acquire_remote()
            return
        import fcntl

        self._created_root = writable_folder(self.root, self.flag)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as exc:
                self._remove_created_root()
                raise UsageError(f"cannot write in {self.flag} {self.root} ({exc.strerror}): choose another "
                                 f"{self.flag} or fix its permissions") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                self._remove_created_root()
                raise self._busy(holder) from None
            # The holder before us removes the file as it lets go: if what we locked is no longer the
            # file at the path, lock the new one instead.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(self.holder) + "\n").encode(), 0)
        self._fd = fd

    def _acquire_remote(self) -> None:
        blob = _gcs_blob(self.path)
        if blob is None:
            log.warning("%s %s: google-cloud-storage is not installed; the folder is not locked", self.flag, self.root)
            return
        from google.api_core.exceptions import PreconditionFailed

        if blob.exists():
            blob.reload()
            holder = json.loads(blob.download_as_bytes())
            if holder.get("host") != self.holder["host"] or _pid_alive(int(holder.get("pid", 0))):
                raise self._busy(holder)
            log.info("%s: taking over the lock of dead run %s", self.flag, holder.get("run_id"))
            generation = blob.generation
        else:
            generation = 0  # create only if absent
        try:
            blob.upload_from_string(json.dumps(self.holder) + "\n", content_type="application/json",
                                    if_generation_match=generation)
        except PreconditionFailed:
            blob.reload()
            raise self._busy(json.loads(blob.download_as_bytes())) from None

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            os.unlink(self.path)  # while still held (see acquire)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            self._remove_created_root()
        elif not is_local(self.path):
            release_remote_lock(self.path, self.holder["run_id"])

    def _remove_created_root(self) -> None:
        """A refused or failed run leaves no trace: not even the folder it created for its lock."""
        if self._created_root:
            with contextlib.suppress(OSError):  # not empty: results were written
                os.rmdir(self.root)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _gcs_blob(path: str):
    try:
        from google.cloud import storage
    except ImportError:
        return None
    bucket, _, name = path[len("gs://"):].partition("/")
    return storage.Client().bucket(bucket).blob(name)


def release_remote_lock(lock_path: str, run_id: str) -> None:
    """Deletes a gs:// lock object if it is still this run's (a later taker's lock is left alone)."""
    blob = _gcs_blob(lock_path)
    if blob is None or not blob.exists():
        return
    blob.reload()
    if json.loads(blob.download_as_bytes()).get("run_id") == run_id:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        with contextlib.suppress(NotFound, PreconditionFailed):
            blob.delete(if_generation_match=blob.generation)


def new_id(prefix: str) -> str:
    """A fresh run id: PREFIX-<UTC time>-<random>."""
    return f"{prefix}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
