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

import dataclasses
import json
import logging
import socket
import sys

import apache_beam as beam

from beam_pipelines.base.files import join
from beam_pipelines.base.killed_runs import finish_killed_cleanup, roll_back_killed_commit
from beam_pipelines.base.listing import has_glob_characters, is_local, list_entries
from beam_pipelines.base.manifest import (
    JOURNAL,
    MANIFEST,
    MANIFEST_VERSION,
    STAGING,
    OutputRoot,
    _files_under,
    _now,
    _write_json,
    check_path_room,
    new_run_id,
    release_remote_lock,
    remove_tree,
)
from beam_pipelines.base.storage import pipeline_gate
from model import gate
from model.errors import UsageError
from model.gate import Gate
from model.gate.claim import under

log = logging.getLogger("emotion")


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


class OutputClaim(OutputRoot):
    """The launcher's side of a run into --output: lock, check, stage; abort on failure (a
    gate.RootClaim on the output, see manifest.OutputRoot)."""

    def __init__(self, output: str, stage: str, names: list[str], overwrite: bool = False,
                 description: dict | None = None, run_id: str | None = None, also_roots: tuple = ()):
        """`also_roots`: the other roots this run commits into with the output (predict's --table), which
        a roll-back of an earlier killed commit may also have to put back."""
        description = description or {}
        super().__init__(output, gate.check_name(run_id, "--run-id") if run_id else new_run_id(stage),
                         remote=bool(description.get("remote")))
        self.output, self.stage, self.names, self.overwrite = self.root, stage, tuple(names), overwrite
        self.also_roots = tuple(root for root in also_roots if root)
        self.description = description
        self.previous = None
        self.previous_raw: bytes | None = None
        self.plan: CommitPlan | None = None

    def check_root(self) -> None:
        if not is_local(self.output) and has_glob_characters(self.output):
            raise UsageError(f"--output {self.output}: a gs:// output may not contain *, ? or [ (Beam's file "
                             "sinks read them as patterns); choose another name")
        check_path_room(self.output, "--output")

    def claim(self) -> CommitPlan:
        self.plan = self._check()
        self._write_running_manifest()
        try:
            self.plan = self.plan.with_write_root()
        except BaseException:
            self.abort()
            raise
        return self.plan

    def end(self, exc_type, exc) -> None:
        if exc_type is not None:
            self.abort()

    def _check(self) -> CommitPlan:
        g = pipeline_gate([self.output])
        self.previous = self.read_manifest()
        if self.previous and self.previous.get("state") == "committing" and \
                roll_back_killed_commit(self.output, self.previous, self.also_roots, self.overwrite):
            self.previous = self.read_manifest()
        self.previous_raw = self.read_manifest_bytes()
        owned = self.owned(self.previous)
        ours_before = sorted(rel for rel in owned if under(rel, self.names))
        keep = sorted(owned - set(ours_before))
        foreign = self.foreign(self.previous, self.overwrite)
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
            self.remove_staging(join(self.output, self.previous["staging"]))
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
            current = self.read_manifest()
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


def commit(plan: CommitPlan, counts: dict, also=None, also_values=()) -> dict:
    """Moves the staged results into place and writes the final manifest, in one transaction with
    `also` (predict's table commit: an object with .root, .trash, a call (tx, *also_values) and
    .finish(gate)); returns the manifest. Either everything is committed, or an exception leaves the
    output (and the table) as they were before this step.

    Runs once, as the pipeline's last step, after every write of the run has finished."""
    g = plan.gate()
    prefix = plan.staging + "/"
    staged = sorted(entry.path[len(prefix):] for entry in list_entries(plan.staging))
    staged = [rel for rel in staged if under(rel, plan.names)]  # not scratch (.spill, beam-temp)
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
