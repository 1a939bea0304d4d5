"""After a kill: the roll-back of a commit that was cut short (its journal read as untrusted input by
model/gate/recovery.py, acted on only when it is provably the killed run's own) and the removal of a
killed run's staging folder. `OutputClaim` calls `recover` before a new run claims the folder."""

from __future__ import annotations

import json
import logging

from beam_pipelines.base.files import join
from beam_pipelines.base.manifest import (
    JOURNAL,
    MANIFEST,
    STAGING,
    OutputRoot,
    new_run_id,
    remove_tree,
)
from beam_pipelines.base.storage import pipeline_gate
from model import gate
from model.errors import UsageError

log = logging.getLogger("emotion")


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
            OutputRoot.validate_manifest(json.loads(data), join(output, MANIFEST))
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
    with OutputRoot(output, new_run_id("recover")) as root:
        manifest = root.read_manifest()
        if not manifest:
            return False
        if manifest.get("state") == "committing":
            return roll_back_killed_commit(output, manifest, also_roots)
        return manifest.get("state") == "complete" and finish_killed_cleanup(output, manifest, also_roots)
