"""Output ownership: a run removes only what an earlier run wrote, and shows results only when whole.

An output folder (local or gs://) that a pipeline has written holds, next to its results:

  _run.json          the manifest: run id, stage, input, options, counts, and every file the
                     pipelines wrote there (relative paths). Only files listed here are ever removed.
  _run.lock          who is running into this folder now (one run at a time; gone when it ends).
  _staging/<run id>/ the results of a run in progress; moved into place by the pipeline's last
                     step, so a failed or killed run leaves the previous results as they were.

The life of a run (OutputClaim, in the launcher, then commit() in the pipeline's last step):

  1. lock: a second run into the same folder stops with the holder's name (exit 2). Locally the
     lock is an flock, which the kernel drops when its process dies, so a dead run's lock is
     taken over by the next run without any guessing. On gs:// it is an object created only if
     absent; one left by a dead process of this host is replaced (compare-and-swap on its
     generation); one from elsewhere (a failed Dataflow job) names itself and how to remove it.
  2. check, before anything is written or removed: every file under the names this stage writes
     (tfrecords/, summary.json, ...) is either listed in _run.json or the run stops, naming it
     (--overwrite replaces such files).
  3. the pipeline writes under _staging/<run id>/; _run.json (state "running") lists the staging
     folder so that a killed run's leftovers are ours to remove next time.
  4. commit (the pipeline's last step, on a worker on Dataflow): _run.json lists old and new files
     (state "committing"), the old files of this stage's names are removed, the staged ones moved
     into place, and _run.json is rewritten (state "complete").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
import uuid

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.common import join
from beam_pipelines.errors import UsageError
from beam_pipelines.listing import has_glob_characters, is_local, list_entries

MANIFEST = "_run.json"
LOCK = "_run.lock"
STAGING = "_staging"
MANIFEST_VERSION = 1

log = logging.getLogger("emotion")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def new_run_id(stage: str) -> str:
    return f"{stage}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def read_manifest(output: str) -> dict | None:
    path = join(output, MANIFEST)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        try:
            return json.loads(f.read())
        except ValueError:
            raise UsageError(f"{path} is not a manifest this pipeline wrote; move it away or choose another --output")


def _write_json(path: str, value: dict) -> None:
    """Local: write a temporary file and rename it over (atomic). gs://: one object upload is atomic."""
    data = (json.dumps(value, indent=2) + "\n").encode()
    if is_local(path):
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with FileSystems.create(path, mime_type="application/json") as f:
            f.write(data)


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- the lock


class OutputLock:
    """One run per output folder (see the module docstring)."""

    def __init__(self, output: str, run_id: str):
        self.path = join(output, LOCK)
        self.output = output
        self.holder = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started": _now()}
        self._fd = None
        self._generation = None

    def _busy(self, holder: dict) -> UsageError:
        return UsageError(
            f"--output {self.output} is in use by run {holder.get('run_id')} (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {holder.get('started')}); wait for it to finish or choose another --output"
            + ("" if is_local(self.path) else f" (if that run is dead, delete {self.path})")
        )

    def acquire(self) -> None:
        if is_local(self.path):
            self._created_output = not os.path.exists(self.output)
            os.makedirs(self.output, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read_holder(fd)
                    os.close(fd)
                    self._remove_created_output()
                    raise self._busy(holder) from None
                # The holder before us removes the file as it lets go: if what we locked is no longer
                # the file at the path, lock the new one instead.
                try:
                    if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(self.holder) + "\n").encode(), 0)
            self._fd = fd
            return
        blob = _gcs_blob(self.path)
        data = json.dumps(self.holder) + "\n"
        from google.api_core.exceptions import PreconditionFailed

        if blob.exists():
            blob.reload()
            holder = json.loads(blob.download_as_bytes())
            if holder.get("host") != self.holder["host"] or _pid_alive(int(holder.get("pid", 0))):
                raise self._busy(holder)
            log.info("output: taking over the lock of dead run %s", holder.get("run_id"))
            generation = blob.generation
        else:
            generation = 0  # create only if absent
        try:
            blob.upload_from_string(data, content_type="application/json", if_generation_match=generation)
        except PreconditionFailed:
            blob.reload()
            raise self._busy(json.loads(blob.download_as_bytes())) from None

    def release(self) -> None:
        if self._fd is not None:
            os.unlink(self.path)  # while still held (see acquire)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
            self._remove_created_output()
        elif not is_local(self.path):
            release_remote_lock(self.output, self.holder["run_id"])


    def _remove_created_output(self) -> None:
        """A refused run leaves no trace: not even the output folder it created for its lock."""
        if getattr(self, "_created_output", False):
            try:
                os.rmdir(self.output)
            except OSError:  # not empty: results were written
                pass


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}


def _gcs_blob(path: str):
    from google.cloud import storage

    bucket, _, name = path[len("gs://"):].partition("/")
    return storage.Client().bucket(bucket).blob(name)


def release_remote_lock(output: str, run_id: str) -> None:
    """Deletes a gs:// lock if it is still this run's (a later taker's lock is left alone)."""
    blob = _gcs_blob(join(output, LOCK))
    if blob.exists():
        blob.reload()
        if json.loads(blob.download_as_bytes()).get("run_id") == run_id:
            from google.api_core.exceptions import NotFound, PreconditionFailed

            try:
                blob.delete(if_generation_match=blob.generation)
            except (NotFound, PreconditionFailed):
                pass


# --------------------------------------------------------------------------- the claim


@dataclasses.dataclass(frozen=True)
class CommitPlan:
    """What the pipeline's last step needs to move a run's results into place (picklable)."""

    output: str
    run_id: str
    stage: str
    names: tuple[str, ...]
    remove: tuple[str, ...]  # files to remove before moving (relative): ours from before, or --overwrite
    keep: tuple[str, ...]  # files of other stages' names, still ours, carried in the manifest
    manifest: dict  # run description (input, options, command); counts and files are added at commit
    remote_lock: bool

    @property
    def staging(self) -> str:
        return join(self.output, STAGING, self.run_id)

    @property
    def write_root(self) -> str:
        """Where the pipeline writes: the staging folder, or a link to it without glob characters.
        Beam's file sinks read their own output prefix as a pattern, so a folder named
        `faces [2024]` is written through a link whose name is plain (local disk only)."""
        if not has_glob_characters(self.staging):
            return self.staging
        return os.path.join(tempfile.gettempdir(), f"emotion-{self.run_id}")

    def make_write_root(self) -> None:
        if self.write_root != self.staging and not os.path.islink(self.write_root):
            os.makedirs(self.staging, exist_ok=True)
            os.symlink(self.staging, self.write_root, target_is_directory=True)

    def remove_write_root(self) -> None:
        if self.write_root != self.staging and os.path.islink(self.write_root):
            os.unlink(self.write_root)


class OutputClaim:
    """The launcher's side of a run into --output: lock, check, stage; abort on failure."""

    def __init__(self, output: str, stage: str, names: list[str], overwrite: bool = False,
                 description: dict | None = None, run_id: str | None = None):
        self.output, self.stage, self.names, self.overwrite = output.rstrip("/"), stage, tuple(names), overwrite
        self.run_id = run_id or new_run_id(stage)
        self.description = description or {}
        self.lock = OutputLock(self.output, self.run_id)
        self.previous = None
        self.plan: CommitPlan | None = None

    def __enter__(self) -> CommitPlan:
        if not is_local(self.output) and has_glob_characters(self.output):
            raise UsageError(f"--output {self.output}: a gs:// output may not contain *, ? or [ (Beam's file "
                             "sinks read them as patterns); choose another name")
        self.lock.acquire()
        try:
            self.plan = self._check()
            self._write_running_manifest()
            self.plan.make_write_root()
        except BaseException:
            self.lock.release()
            raise
        return self.plan

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                self.abort()
        finally:
            if exc_type is not None or is_local(self.output) or not self.description.get("remote"):
                self.lock.release()

    def _check(self) -> CommitPlan:
        self.previous = read_manifest(self.output)
        owned = set(self.previous.get("files", [])) if self.previous else set()
        ours_before = sorted(rel for rel in owned if _under(rel, self.names))
        keep = sorted(owned - set(ours_before))
        present = [rel for name in self.names for rel in _files_under(self.output, name)]
        foreign = sorted(set(present) - owned)
        if foreign and not self.overwrite:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UsageError(
                f"--output {self.output} already holds {len(foreign)} file(s) no earlier run of this pipeline wrote "
                f"({shown}); choose another --output, move them away, or pass --overwrite to replace them"
            )
        # Leftovers of a killed run are ours: the manifest names its staging folder.
        if self.previous and self.previous.get("staging"):
            remove_tree(join(self.output, self.previous["staging"]))
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "run_id": self.run_id,
            "stage": self.stage,
            "started": _now(),
            "host": socket.gethostname(),
            "command": " ".join(["emotion", self.stage, *sys.argv[2:]]) if len(sys.argv) > 1 else self.stage,
            **{k: v for k, v in self.description.items() if k != "remote"},
        }
        return CommitPlan(self.output, self.run_id, self.stage, self.names,
                          tuple(sorted(set(ours_before) | set(foreign))), tuple(keep), manifest,
                          remote_lock=not is_local(self.output))

    def _write_running_manifest(self) -> None:
        previous_files = sorted(self.previous.get("files", [])) if self.previous else []
        _write_json(join(self.output, MANIFEST), {
            **self.plan.manifest, "state": "running", "files": previous_files,
            "staging": f"{STAGING}/{self.run_id}",
            "previous": {k: self.previous.get(k) for k in ("run_id", "stage", "finished")} if self.previous else None,
        })

    def dry_run_plan(self) -> CommitPlan:
        """The plan of a --dry_run, built without reading or writing the output."""
        return CommitPlan(self.output, self.run_id, self.stage, self.names, (), (), {"run_id": self.run_id},
                          remote_lock=not is_local(self.output))

    def abort(self) -> None:
        """A failed run: its staging removed, the manifest as it was before the run."""
        self.plan.remove_write_root()
        remove_tree(self.plan.staging)
        if self.previous is not None:
            _write_json(join(self.output, MANIFEST), self.previous)
        else:
            delete_files([join(self.output, MANIFEST)])
        log.info("output: run %s failed; %s left as it was", self.run_id, self.output)


def remove_tree(path: str) -> None:
    if is_local(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        parent = os.path.dirname(path)
        if os.path.basename(parent) == STAGING and os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
        return
    delete_files([entry.path for entry in list_entries(path)])


def delete_files(paths: list[str]) -> None:
    """Deletes exactly these files, those that exist (Beam's local delete would read them as globs)."""
    paths = [path for path in paths if FileSystems.exists(path)]
    if not paths:
        return
    if is_local(paths[0]):
        for path in paths:
            os.remove(path)
    else:
        FileSystems.delete(paths)


# --------------------------------------------------------------------------- commit


def commit(plan: CommitPlan, counts: dict) -> dict:
    """Moves the staged results into place and writes the final manifest; returns it.

    Runs once, as the pipeline's last step, after every write of the run has finished."""
    prefix = plan.staging + "/"
    staged = sorted(entry.path[len(prefix):] for entry in list_entries(plan.staging))
    staged = [rel for rel in staged if _under(rel, plan.names)]  # not scratch (.spill, beam-temp)
    manifest_path = join(plan.output, MANIFEST)
    _write_json(manifest_path, {**plan.manifest, "state": "committing",
                                "files": sorted(set(plan.keep) | set(plan.remove) | set(staged)),
                                "staging": f"{STAGING}/{plan.run_id}"})
    delete_files([join(plan.output, rel) for rel in plan.remove if rel not in set(staged)])
    sources = [join(plan.staging, rel) for rel in staged]
    targets = [join(plan.output, rel) for rel in staged]
    if is_local(plan.output):
        for target in targets:
            os.makedirs(os.path.dirname(target), exist_ok=True)
        for source, target in zip(sources, targets):
            os.replace(source, target)  # replaces an older file of ours in one step
    elif sources:
        FileSystems.rename(sources, targets)
    plan.remove_write_root()
    remove_tree(plan.staging)
    manifest = {**plan.manifest, "state": "complete", "finished": _now(), "counts": counts,
                "files": sorted(set(plan.keep) | set(staged)), "staging": None}
    _write_json(manifest_path, manifest)
    if plan.remote_lock:
        release_remote_lock(plan.output, plan.run_id)
    return manifest


class CommitOutputs(beam.PTransform):
    """The pipeline's last step: once every PCollection in `after` is complete, commit `plan`
    with the counts found in the single element of `counts` (this runs on a worker on Dataflow,
    where the launcher does not wait for the job)."""

    def __init__(self, plan: CommitPlan, counts, after: list):
        super().__init__()
        self.plan, self.counts, self.after = plan, counts, after

    def expand(self, pbegin):
        plan = self.plan
        return (
            pbegin
            | "Trigger" >> beam.Create([None])
            | "MoveIntoPlace" >> beam.Map(lambda _, counts, *done: commit(plan, counts),
                                          beam.pvalue.AsSingleton(self.counts),
                                          *[beam.pvalue.AsList(p) for p in self.after])
        )
