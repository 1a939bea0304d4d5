"""The gate's operations: Gate (every remove, move, link and write outside staging, refused outside the
run's roots) and the remote stores it acts through. Its transactions are model/gate/transaction.py's. See
the package docstring."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile

from model.gate.names import REFUSED_ERRNOS, PathRefused, _root, is_local, refusal, regular_file, resolve, within
from model.gate.transaction import Transaction

log = logging.getLogger("emotion")


@contextlib.contextmanager
def _refused(doing: str):
    """Around a local change: the file system's refusal (REFUSED_ERRNOS) becomes one line (UsageError)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in REFUSED_ERRNOS:
            raise
        raise refusal(exc, doing) from None


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
        """`store` acts on gs:// paths: Beam's FileSystems in the pipelines (beam_pipelines.base.storage),
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

    def read_bytes(self, path: str, limit: int | None = None) -> bytes:
        """A file's bytes. Locally only a regular file is opened (never through a link, never a FIFO or
        a device: PathRefused), and one larger than `limit` bytes is refused unread."""
        path = self.inside(path)
        if not is_local(path):
            data = self._store.read(path)
            if limit is not None and len(data) > limit:
                raise PathRefused(f"{path} is larger than any file this tool writes there ({limit} bytes): move it away")
            return data
        import stat

        st = regular_file(path)
        if limit is not None and st.st_size > limit:
            raise PathRefused(f"{path} is larger than any file this tool writes there ({limit} bytes): move it away")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            now = os.fstat(f.fileno())
            if now.st_ino != st.st_ino or not stat.S_ISREG(now.st_mode):  # replaced in between
                raise PathRefused(f"{path} changed while it was opened: move it away")
            data = f.read() if limit is None else f.read(limit + 1)
        if limit is not None and len(data) > limit:
            raise PathRefused(f"{path} is larger than any file this tool writes there ({limit} bytes): move it away")
        return data

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
            with _refused(f"create the folder {path}"):
                os.makedirs(path, exist_ok=True)

    def remove(self, path: str) -> None:
        """One file or link; nothing when it is absent. A folder is refused (use remove_tree)."""
        path = self.inside(path)
        if is_local(path):
            if os.path.isdir(path) and not os.path.islink(path):
                raise IsADirectoryError(errno.EISDIR, "a folder, not a file", path)
            with contextlib.suppress(FileNotFoundError), _refused(f"remove {path}"):
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
        with _refused(f"remove {path}"):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)  # never follows links inside the tree
            elif os.path.lexists(path):
                os.remove(path)

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
        folder = os.path.isdir(src) and not os.path.islink(src)
        if folder and os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "the target of a folder move exists", dst)
        with _refused(f"move {src} to {dst}"):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if folder:
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
        with _refused(f"write {path}"):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)[:64]}.", suffix=".tmp",
                                       dir=os.path.dirname(path))
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

    def transaction(self, trash: dict[str, str], journal: str | None = None, header: dict | None = None,
                    roles: dict[str, str] | None = None) -> Transaction:
        return Transaction(self, trash, journal, header, roles)
