"""One writer per root (RootLock: an flock locally, a create-if-absent object on gs://) and run ids."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import uuid

from model.errors import UsageError
from model.gate.names import is_local

log = logging.getLogger("emotion")


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
