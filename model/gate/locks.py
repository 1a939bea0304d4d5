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
from model.gate.names import canonical, is_local

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


TOOL = "emotion-pipeline"  # what a lock file this tool wrote says it is
LOCK_MAX_BYTES = 4096
_WAIT_FOR_HOLDER_S = 1.0  # a lock file just created by another run is empty for a moment


def parse_holder(data: bytes) -> dict | None:
    """A lock file's holder (run id, host, pid, start), read back as untrusted input: a JSON object this
    tool wrote (it says `tool`, or is of the earlier form with run_id and pid); None for anything else."""
    try:
        holder = json.loads(data) if data and len(data) <= LOCK_MAX_BYTES else None
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(holder, dict):
        return None
    if holder.get("tool") != TOOL and not {"run_id", "pid", "host", "started"} <= set(holder):
        return None
    return holder


def describe_holder(holder: dict | None) -> str:
    """'run R (pid P on H, since S)', or what can be said of a holder that names none of it."""
    holder = holder or {}
    run_id, pid = holder.get("run_id"), holder.get("pid")
    if not isinstance(run_id, str) or not isinstance(pid, int):
        return "another run (its lock file does not name it)"
    return f"run {run_id[:80]} (pid {pid} on {str(holder.get('host'))[:80]}, since {str(holder.get('started'))[:40]})"


class RootLock:
    """One writer per root: ROOT/<name> holds the writer's run id, host, pid, start and the root's
    canonical path.

    Locally it is an flock, which the kernel drops when its process dies, so a dead run's lock is taken
    over by the next run without guessing. The file is read back from disk, so it is untrusted: it is
    opened without following a link (O_NOFOLLOW) or blocking (O_NONBLOCK), and refused (one line,
    nothing written) unless it is a regular file with one link whose content is a lock this tool wrote;
    a file this run creates is created exclusively (O_EXCL). So a link or hard link to a user's file,
    a user's own file under the lock's name, a FIFO or a device is never truncated, written or removed.
    On gs:// it is an object created only if absent (a generation precondition); one left by a dead
    process of this host is replaced (compare-and-swap on its generation); one from elsewhere (a failed
    Dataflow job) names itself and how to remove it. Where google-cloud-storage is not installed (the
    training image), a gs:// root is not locked."""

    def __init__(self, root: str, run_id: str, flag: str = "--output", name: str = "_run.lock"):
        self.root, self.flag, self.name = root.rstrip("/"), flag, name
        self.path = f"{self.root}/{name}"
        self.holder = {"tool": TOOL, "run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(),
                       "started": _now(), "root": canonical(self.root) if is_local(self.root) else self.root}
        self._fd = None
        self._created_root = False

    def _busy(self, holder: dict | None) -> UsageError:
        return UsageError(
            f"{self.flag} {self.root} is in use by {describe_holder(holder)}; wait for it to finish or choose "
            f"another {self.flag}" + ("" if is_local(self.path) else f" (if that run is dead, delete {self.path})"))

    def _foreign(self, what: str) -> UsageError:
        return UsageError(f"{self.flag} {self.root} holds {self.name}, {what}, not a lock file this tool wrote: "
                          f"move it away or choose another {self.flag}")

    def acquire(self) -> None:
        if not is_local(self.path):
            self._acquire_remote()
            return
        self._created_root = writable_folder(self.root, self.flag)
        try:
            self._fd = self._acquire_local()
        except BaseException:
            self._remove_created_root()
            raise
        self._write_holder()

    def _acquire_local(self) -> int:
        """The locked descriptor of the lock file (created here, or a dead run's taken over)."""
        import fcntl
        import time

        waited = 0.0
        while True:
            fd, created = self._open()
            if fd is None:  # gone between two looks: try again
                continue
            try:
                # A file we just created: another run may be looking at it for a moment (below).
                fcntl.flock(fd, fcntl.LOCK_EX if created else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = parse_holder(os.pread(fd, LOCK_MAX_BYTES + 1, 0))
                os.close(fd)
                if holder is None and waited < _WAIT_FOR_HOLDER_S:  # just created: its holder writes itself
                    time.sleep(0.05)
                    waited += 0.05
                    continue
                raise self._busy(holder) from None
            # The holder before us removes the file as it lets go: if what we locked is no longer the
            # file at the path, lock the new one instead.
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            if not created and parse_holder(os.pread(fd, LOCK_MAX_BYTES + 1, 0)) is None:
                os.close(fd)
                if waited < _WAIT_FOR_HOLDER_S:  # created by another run that has not written itself yet
                    time.sleep(0.05)
                    waited += 0.05
                    continue
                raise self._foreign("a file of someone else's (or empty)") from None
            return fd

    def _open(self) -> tuple[int | None, bool]:
        """(descriptor, created): a new file made exclusively, or the existing one when it is a regular
        file with one link; a link, a hard link, a FIFO, a device or a folder is refused unopened."""
        import stat

        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        except OSError as exc:
            raise UsageError(f"cannot write in {self.flag} {self.root} ({exc.strerror}): choose another "
                             f"{self.flag} or fix its permissions") from None
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return None, False
        if not stat.S_ISREG(st.st_mode):
            kind = "a link" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) \
                else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
            raise self._foreign(kind)
        if st.st_nlink != 1:
            raise self._foreign(f"a file with {st.st_nlink} links (a hard link to another file)")
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return None, False
        except OSError as exc:
            raise UsageError(f"cannot open {self.path} ({exc.strerror}): choose another {self.flag} or fix its "
                             "permissions") from None
        now = os.fstat(fd)
        if now.st_ino != st.st_ino or not stat.S_ISREG(now.st_mode) or now.st_nlink != 1:
            os.close(fd)
            raise self._foreign("a file that changed while it was opened")
        return fd, False

    def _write_holder(self) -> None:
        """Our holder in the file we created or took over (a lock this tool wrote: ours to rewrite)."""
        data = (json.dumps(self.holder) + "\n").encode()
        try:
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
        except OSError as exc:
            self.release()
            raise UsageError(f"cannot write {self.path} ({exc.strerror}): choose another {self.flag} or fix its "
                             "permissions") from None

    def _acquire_remote(self) -> None:
        blob = _gcs_blob(self.path)
        if blob is None:
            log.warning("%s %s: google-cloud-storage is not installed; the folder is not locked", self.flag, self.root)
            return
        from google.api_core.exceptions import PreconditionFailed

        if blob.exists():
            blob.reload()
            holder = parse_holder(blob.download_as_bytes())
            if holder is None:
                raise self._foreign("an object of someone else's")
            pid = holder.get("pid")
            if holder.get("host") != self.holder["host"] or not isinstance(pid, int) or _pid_alive(pid):
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
            raise self._busy(parse_holder(blob.download_as_bytes())) from None

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            with contextlib.suppress(FileNotFoundError):  # while still held (see acquire); ours: checked
                if os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(self._fd).st_ino:
                    os.unlink(self.path)
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
    if (parse_holder(blob.download_as_bytes()) or {}).get("run_id") == run_id:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        with contextlib.suppress(NotFound, PreconditionFailed):
            blob.delete(if_generation_match=blob.generation)


def new_id(prefix: str) -> str:
    """A fresh run id: PREFIX-<UTC time>-<random>."""
    return f"{prefix}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
