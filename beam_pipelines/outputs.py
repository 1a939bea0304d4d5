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
     (state "committing"); in one transaction (gate.Transaction) the old files of this stage's names
     are retired, the staged ones moved into place, anything else the run commits with them (predict's
     --table partition) moved too, and _run.json rewritten (state "complete"). A failure anywhere in it
     puts every file back, so the output and the table change together or not at all.

_run.json is read back as untrusted input: a manifest whose files are not plain relative paths, or
whose staging folder is not _staging/<a run id>, is refused (one line) before anything is removed,
and every remove or move goes through model/gate/, which refuses any path outside the
run's own folders whatever the manifest or a link says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from model import gate
from beam_pipelines.common import join
from model.errors import UsageError
from beam_pipelines.storage import pipeline_gate
from model.gate import Gate, RootLock
from beam_pipelines.listing import has_glob_characters, is_local, list_entries

MANIFEST = "_run.json"
LOCK = "_run.lock"
STAGING = "_staging"
MANIFEST_VERSION = 1
JOURNAL = ".journal"  # in the run's staging folder: the commit's steps, for a roll-back after a kill

log = logging.getLogger("emotion")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def new_run_id(stage: str) -> str:
    return gate.new_id(stage)


def read_manifest(output: str) -> dict | None:
    """The output's _run.json, validated (see validate_manifest); None when there is none."""
    raw = read_manifest_bytes(output)
    if raw is None:
        return None
    path = join(output, MANIFEST)
    try:
        manifest = json.loads(raw)
    except ValueError:
        manifest = None
    return validate_manifest(manifest, path)


MANIFEST_MAX_BYTES = 256 << 20  # a manifest lists every file of a run: far below this


def read_manifest_bytes(output: str) -> bytes | None:
    """_run.json's bytes (None when absent); locally only a regular file is opened (not a link, a FIFO or
    a device: those are refused in one line, unopened)."""
    path = join(output, MANIFEST)
    if is_local(path):
        if not os.path.lexists(path):
            return None
        try:
            return pipeline_gate([output]).read_bytes(path, limit=MANIFEST_MAX_BYTES)
        except gate.PathRefused:
            raise UsageError(f"{path} is not a manifest this pipeline wrote (a link, a FIFO, a device or a "
                             "folder); move it away or choose another --output") from None
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return f.read()


def validate_manifest(manifest, path: str) -> dict:
    """A manifest is untrusted input: an object whose files are plain relative paths (no '..', not
    absolute) and whose staging folder, if any, is _staging/<a run id>; UsageError otherwise."""
    if not isinstance(manifest, dict):
        raise UsageError(f"{path} is not a manifest this pipeline wrote; move it away or choose another --output")
    files = manifest.get("files", [])
    if not isinstance(files, list):
        raise UsageError(f"{path}: its files are not a list; it was not written by this pipeline (move it away)")
    for rel in files:
        gate.check_relative(rel, path)
        if rel in (MANIFEST, LOCK) or rel.split("/")[0] == STAGING:
            raise UsageError(f"{path} lists {rel}, which no run writes; it was not written by this pipeline "
                             "(move it away)")
    staging = manifest.get("staging")
    if staging is not None:
        name = staging[len(STAGING) + 1:] if isinstance(staging, str) and staging.startswith(STAGING + "/") else None
        if name is None or gate.name_problem(name) or name != manifest.get("run_id"):
            raise UsageError(f"{path}: staging {str(staging)[:80]!r} is not {STAGING}/<its run id>; it was not "
                             "written by this pipeline (move it away)")
    return manifest


def _write_json(path: str, value: dict, output: str) -> None:
    """Written whole or not at all, through the gate (local: a temporary file renamed over it)."""
    pipeline_gate([output]).write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


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


# --------------------------------------------------------------------------- the lock


class OutputLock(RootLock):
    """One run per output folder (see the module docstring and gate.RootLock)."""

    def __init__(self, output: str, run_id: str):
        super().__init__(output, run_id, flag="--output", name=LOCK)
        self.output = self.root


def release_remote_lock(output: str, run_id: str) -> None:
    """Deletes a gs:// output lock if it is still this run's (a later taker's lock is left alone)."""
    gate.release_remote_lock(join(output, LOCK), run_id)


# --------------------------------------------------------------------------- the claim

# What a run writes below its root at most: _staging/<run id>/<name>/beam-temp-<...>-<uuid>/<uuid>.<suffix>
DEEPEST_BELOW_ROOT = 320


def check_path_room(root: str, flag: str) -> None:
    """A root so deep that the paths a run writes under it would pass the system's PATH_MAX (or with a
    folder name past NAME_MAX) is refused in one line before anything is written (else: ENAMETOOLONG
    from a worker, halfway through)."""
    if not is_local(root):
        return
    path = os.path.abspath(root)
    limit = 4096
    with contextlib.suppress(OSError, ValueError):
        existing = path
        while not os.path.isdir(existing):
            existing = os.path.dirname(existing)
        limit = os.pathconf(existing, "PC_PATH_MAX")
    if any(len(part.encode()) > 255 for part in path.split("/")):
        raise UsageError(f"{flag} {root[:120]}...: a folder name longer than 255 bytes; choose a shorter {flag}")
    if len(gate.canonical(path).encode()) + DEEPEST_BELOW_ROOT > limit:
        raise UsageError(f"{flag} {root[:120]}... is {len(path.encode())} bytes long: the paths a run writes under it "
                         f"would pass the system's limit of {limit}; choose a shorter {flag}")


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
    write_link: str = ""  # the link the pipeline writes through (see write_root), in temp_root
    temp_root: str = ""  # a fresh temp folder this run created for write_link
    previous_manifest: str | None = None  # _run.json as it was before this run: a roll-back writes it back

    @property
    def staging(self) -> str:
        return join(self.output, STAGING, self.run_id)

    @property
    def write_root(self) -> str:
        """Where the pipeline writes: the staging folder, or a link to it without glob characters.
        Beam's file sinks read their own output prefix as a pattern, so a folder named
        `faces [2024]` is written through a link whose name is plain (local disk only)."""
        return self.write_link or self.staging

    def gate(self) -> Gate:
        """The run's roots: its --output, and the temp folder it made for its link."""
        return pipeline_gate([self.output, self.temp_root])

    def with_write_root(self) -> CommitPlan:
        """The plan with its write root made: when the staging path has glob characters, a link to
        its absolute path in a fresh temp folder (tempfile.mkdtemp: no predictable name to plant)."""
        if not has_glob_characters(self.staging) or not is_local(self.staging):
            return self
        g = self.gate()
        g.makedirs(self.staging)
        temp = g.make_temp_dir(prefix="emotion-")
        return dataclasses.replace(self, temp_root=temp, write_link=g.link(self.staging, temp))

    def remove_write_root(self, g: Gate | None = None) -> None:
        if self.write_link:
            g = g or self.gate()
            g.remove(self.write_link)
            g.remove_empty_root(self.temp_root)


class OutputClaim:
    """The launcher's side of a run into --output: lock, check, stage; abort on failure."""

    def __init__(self, output: str, stage: str, names: list[str], overwrite: bool = False,
                 description: dict | None = None, run_id: str | None = None, also_roots: tuple = ()):
        """`also_roots`: the other roots this run commits into with the output (predict's --table), which
        a roll-back of an earlier killed commit may also have to put back."""
        self.output, self.stage, self.names, self.overwrite = output.rstrip("/"), stage, tuple(names), overwrite
        self.also_roots = tuple(root for root in also_roots if root)
        self.run_id = gate.check_name(run_id, "--run-id") if run_id else new_run_id(stage)
        self.description = description or {}
        self.lock = OutputLock(self.output, self.run_id)
        self.previous = None
        self.previous_raw: bytes | None = None
        self.plan: CommitPlan | None = None

    def __enter__(self) -> CommitPlan:
        if not is_local(self.output) and has_glob_characters(self.output):
            raise UsageError(f"--output {self.output}: a gs:// output may not contain *, ? or [ (Beam's file "
                             "sinks read them as patterns); choose another name")
        check_path_room(self.output, "--output")
        self.lock.acquire()
        try:
            self.plan = self._check()
            self._write_running_manifest()
            try:
                self.plan = self.plan.with_write_root()
            except BaseException:
                self.abort()
                raise
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
        g = pipeline_gate([self.output])
        self.previous = read_manifest(self.output)
        if self.previous and self.previous.get("state") == "committing" and \
                roll_back_killed_commit(self.output, self.previous, self.also_roots, self.overwrite):
            self.previous = read_manifest(self.output)
        self.previous_raw = read_manifest_bytes(self.output)
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
        remove = tuple(sorted(set(ours_before) | set(foreign)))
        for rel in remove:  # before anything changes: each lies inside --output, links resolved
            g.inside(join(self.output, rel))
        # A run killed inside its commit left the files it replaced in its staging folder's .retired/:
        # the only copy of the previous results. Never removed without being asked.
        if self.previous and self.previous.get("state") == "committing" and self.previous.get("staging") \
                and not self.overwrite:
            retired = join(self.output, self.previous["staging"], ".retired")
            if _files_under(self.output, f"{self.previous['staging']}/.retired"):
                raise UsageError(
                    f"--output {self.output}: run {self.previous.get('run_id')} was killed while committing; the "
                    f"files it replaced are in {retired}: move them back, or pass --overwrite to discard them")
        # Leftovers of a killed run are ours: the (validated) manifest names its staging folder.
        if self.previous and self.previous.get("staging"):
            g.remove_tree(join(self.output, self.previous["staging"]))
            g.remove_empty_dirs(join(self.output, STAGING), self.output)
        elif self.previous and self.previous.get("state") == "complete" and self.previous.get("run_id") != self.run_id:
            finish_killed_cleanup(self.output, self.previous, self.also_roots)  # (a re-used run id: its own)
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "run_id": self.run_id,
            "stage": self.stage,
            "started": _now(),
            "host": socket.gethostname(),
            "command": " ".join(["emotion", self.stage, *sys.argv[2:]]) if len(sys.argv) > 1 else self.stage,
            **{k: v for k, v in self.description.items() if k != "remote"},
        }
        return CommitPlan(self.output, self.run_id, self.stage, self.names, remove, tuple(keep), manifest,
                          remote_lock=not is_local(self.output),
                          previous_manifest=self.previous_raw.decode("utf-8", "replace")
                          if self.previous_raw is not None else None)

    def _write_running_manifest(self) -> None:
        previous_files = sorted(self.previous.get("files", [])) if self.previous else []
        _write_json(join(self.output, MANIFEST), {
            **self.plan.manifest, "state": "running", "files": previous_files,
            "staging": f"{STAGING}/{self.run_id}",
            "previous": {k: self.previous.get(k) for k in ("run_id", "stage", "finished")} if self.previous else None,
        }, self.output)

    def _committed(self) -> bool:
        try:
            current = read_manifest(self.output)
        except (UsageError, ValueError, OSError):
            return False
        return bool(current) and current.get("run_id") == self.run_id and current.get("state") == "complete"

    def _restore_manifest(self) -> None:
        """_run.json byte for byte as it was before this run (or gone, if there was none)."""
        g = pipeline_gate([self.output])
        path = join(self.output, MANIFEST)
        if self.previous_raw is not None:
            g.write_bytes(path, self.previous_raw)
        else:
            g.remove(path)

    def dry_run_plan(self) -> CommitPlan:
        """The plan of a --dry_run, built without reading or writing the output."""
        return CommitPlan(self.output, self.run_id, self.stage, self.names, (), (), {"run_id": self.run_id},
                          remote_lock=not is_local(self.output))

    def abort(self) -> None:
        """A failed run: its staging removed, the manifest as it was before the run. An interruption
        that lands after the commit finished (Ctrl-C in the last milliseconds) is not a failure: the
        output is this run's, whole, and its manifest says so; putting the old manifest back would
        describe files that are no longer there."""
        g = self.plan.gate()
        if self._committed():  # only the commit's clean-up may have been cut short: finish it
            self.plan.remove_write_root(g)
            remove_tree(self.plan.staging, self.output)
            log.info("output: run %s was committed before the interruption; %s is complete", self.run_id,
                     self.output)
            return
        self.plan.remove_write_root(g)
        remove_tree(self.plan.staging, self.output)
        self._restore_manifest()
        log.info("output: run %s failed; %s left as it was", self.run_id, self.output)


def roll_back_killed_commit(output: str, killed_manifest: dict, also_roots=(), overwrite: bool = False) -> bool:
    """An earlier run was killed inside its commit (kill -9, a lost worker): its journal says which
    steps it took; they are undone, last first, and _run.json is put back as it was before that run,
    so the output (and the table it committed into) is whole again before this run does anything.

    The journal is untrusted input bound to the killed manifest (gate.read_journal: the same run id;
    the header's previous manifest is the one whose digest the committing manifest recorded) and each
    step is undone only where its digest proves the file is the one it moved or wrote; anything that
    cannot be proven is refused in one line and nothing changes (with --overwrite: nothing is rolled
    back, the run goes on and replaces the output's files). Returns False when there is no journal.
    The caller holds the output's lock (and the table's, for predict: TableClaim is entered first)."""
    killed = gate.check_name(killed_manifest.get("run_id"), f"{join(output, MANIFEST)} run_id")
    staging = join(output, STAGING, killed)
    journal_dir = join(staging, JOURNAL)
    g = pipeline_gate([output, *also_roots])
    if not g.exists(journal_dir):
        return False
    try:
        journal = gate.read_journal(g, journal_dir, killed)
        previous = _previous_manifest(journal.header, killed_manifest, output)
        roots = {"output": output, **{role: root for root in also_roots for role, recorded in
                                      journal.header["roots"].items() if role != "output"
                                      and gate.canonical(root) == recorded}}
        undone = gate.roll_back(g, journal, roots)
    except gate.MissingRoot as exc:
        raise UsageError(
            f"--output {output}: run {killed} was killed while committing into it and into {exc.recorded}; re-run "
            f"with --{exc.role} {exc.recorded} so that both can be rolled back") from None
    except gate.PathRefused as exc:
        if overwrite:
            log.warning("output: run %s was killed while committing and %s; --overwrite: its files are replaced",
                        killed, str(exc)[:300])
            return False
        raise UsageError(f"--output {output}: run {killed} was killed while committing, and {exc}: move the "
                         f"files in {join(staging, '.retired')} back by hand, or pass --overwrite to replace the "
                         "output's files") from None
    if previous is not None:
        g.write_bytes(join(output, MANIFEST), previous)
    else:
        g.remove(join(output, MANIFEST))  # there was none before that run (bound: see _previous_manifest)
    for role, root in roots.items():  # that run's staging folders; every retired file is back in place
        folder = join(root, journal.header["scratch"].get(role) or f"{STAGING}/{killed}")
        if g.files(join(folder, ".retired")):
            log.warning("output: %s still holds files after the roll-back; left for you to look at", folder)
            continue
        remove_tree(folder, root)
    log.warning("output: run %s was killed while committing; %d of its %d journaled step(s) were taken and "
                "are undone; %s is as it was before it", killed, undone, len(journal.steps), output)
    return True


def _previous_manifest(header: dict, killed_manifest: dict, output: str) -> bytes | None:
    """The manifest a roll-back writes back: the header's, when its digest is the one the committing
    manifest recorded (so neither file alone decides) and it is a manifest; PathRefused otherwise."""
    previous = header.get("previous_manifest")
    data = previous.encode() if isinstance(previous, str) else None
    digest = gate.content_digest(data) if data is not None else None
    if killed_manifest.get("previous_digest", "absent") != digest:
        raise gate.JournalRefused("its journal's previous manifest is not the one its _run.json recorded; nothing "
                                  "was rolled back")
    if data is not None:
        try:
            validate_manifest(json.loads(data), join(output, MANIFEST))
        except (ValueError, UsageError):
            raise gate.JournalRefused("its journal's previous manifest is not a manifest; nothing was rolled "
                                      "back") from None
    return data


def finish_killed_cleanup(output: str, manifest: dict, also_roots=()) -> bool:
    """A run killed after its commit, during its clean-up: its results are in place and its manifest
    is complete, but what it replaced still waits in its staging folder (and its table's). Removes
    those folders, which hold only that run's files. True when there was one."""
    run_id = manifest.get("run_id")
    if not run_id:
        return False
    run_id = gate.check_name(run_id, f"{join(output, MANIFEST)} run_id")
    found = False
    for root in (output, *also_roots):
        g = pipeline_gate([root])
        leftover = join(root, STAGING, run_id)
        if g.exists(leftover):
            remove_tree(leftover, root)
            found = True
        elif g.isdir(join(root, STAGING)) and not g.files(join(root, STAGING)):  # killed as it removed it
            g.remove_empty_dirs(join(root, STAGING), root)
            found = True
    return found


def recover(output: str, also_roots=()) -> bool:
    """What the next run into `output` does first (OutputClaim), under the output's lock: a run killed
    inside its commit is rolled back; one killed after it has its clean-up finished. True when there
    was something to do."""
    output, also_roots = output.rstrip("/"), tuple(root for root in also_roots if root)
    lock = OutputLock(output, new_run_id("recover"))
    lock.acquire()
    try:
        manifest = read_manifest(output)
        if not manifest:
            return False
        if manifest.get("state") == "committing":
            return roll_back_killed_commit(output, manifest, also_roots)
        return manifest.get("state") == "complete" and finish_killed_cleanup(output, manifest, also_roots)
    finally:
        lock.release()


def remove_tree(path: str, root: str) -> None:
    """Removes the folder `path` inside `root` (through the gate), then root's _staging/ if it is left
    empty."""
    g = pipeline_gate([root])
    g.remove_tree(path)
    parent = path.rstrip("/").rsplit("/", 1)[0]
    if parent.rsplit("/", 1)[-1] == STAGING:
        g.remove_empty_dirs(parent, root)


# --------------------------------------------------------------------------- commit


def commit(plan: CommitPlan, counts: dict, also=None, also_values=()) -> dict:
    """Moves the staged results into place and writes the final manifest, in one transaction with
    `also` (predict's table commit: an object with .root, .trash, a call (tx, *also_values) and
    .finish(gate)); returns the manifest. Either everything is committed, or an exception leaves the
    output (and the table) as they were before this step.

    Runs once, as the pipeline's last step, after every write of the run has finished."""
    g = plan.gate()
    prefix = plan.staging + "/"
    staged = sorted(entry.path[len(prefix):] for entry in list_entries(plan.staging))
    staged = [rel for rel in staged if _under(rel, plan.names)]  # not scratch (.spill, beam-temp)
    manifest_path = join(plan.output, MANIFEST)
    trash = {plan.output: join(plan.staging, ".retired")}
    if also is not None:
        g.add_root(also.root)
        trash[also.root] = also.trash
    header = {"run_id": plan.run_id, "previous_manifest": plan.previous_manifest}
    roles = {"output": plan.output, **({"table": also.root} if also is not None else {})}
    previous = plan.previous_manifest.encode() if plan.previous_manifest is not None else None
    with g.transaction(trash, journal=join(plan.staging, JOURNAL), header=header, roles=roles) as tx:
        # "committing" from here: a kill before the end is rolled back by the next run (the journal,
        # bound to this manifest by the run id and the previous manifest's digest)
        _write_json(manifest_path, {**plan.manifest, "state": "committing",
                                    "files": sorted(set(plan.keep) | set(plan.remove) | set(staged)),
                                    "staging": f"{STAGING}/{plan.run_id}",
                                    "previous_digest": gate.content_digest(previous) if previous is not None
                                    else None}, plan.output)
        for rel in plan.remove:
            if rel not in set(staged):
                tx.retire(join(plan.output, rel))
        for rel in staged:
            tx.move(join(plan.staging, rel), join(plan.output, rel))  # replaces an older file of ours
        if also is not None:
            also(tx, *also_values)
        manifest = {**plan.manifest, "state": "complete", "finished": _now(), "counts": counts,
                    "files": sorted(set(plan.keep) | set(staged)), "staging": None}
        tx.write_bytes(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
    plan.remove_write_root(g)
    remove_tree(plan.staging, plan.output)
    if also is not None:
        also.finish(g)
    if plan.remote_lock:
        release_remote_lock(plan.output, plan.run_id)
    return manifest


class CommitOutputs(beam.PTransform):
    """The pipeline's last step: once every PCollection in `after` is complete, commit `plan`
    with the counts found in the single element of `counts` (this runs on a worker on Dataflow,
    where the launcher does not wait for the job). `also` is committed in the same transaction,
    with the single elements of `also_inputs` (see commit)."""

    def __init__(self, plan: CommitPlan, counts, after: list, also=None, also_inputs: tuple = ()):
        super().__init__()
        self.plan, self.counts, self.after = plan, counts, after
        self.also, self.also_inputs = also, tuple(also_inputs)

    def expand(self, pbegin):
        plan, also, n = self.plan, self.also, len(self.also_inputs)
        return (
            pbegin
            | "Trigger" >> beam.Create([None])
            | "MoveIntoPlace" >> beam.Map(lambda _, counts, *rest: commit(plan, counts, also, rest[:n]),
                                          beam.pvalue.AsSingleton(self.counts),
                                          *[beam.pvalue.AsSingleton(p) for p in self.also_inputs],
                                          *[beam.pvalue.AsList(p) for p in self.after])
        )
