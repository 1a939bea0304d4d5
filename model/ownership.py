"""Training owns its --model-dir as the pipelines own their --output.

    DIR/_train.json   the manifest: run id, state, the names training writes (NAMES) and every file
                      under them that a training or an export wrote (relative paths)
    DIR/_train.lock   who is training into DIR now (gate.RootLock: one writer per model directory)

The life of a training run (TrainingClaim, on the chief; other workers write only their scratch):

  1. lock: a second `emotion train` into DIR stops with the holder's name (exit 2).
  2. check, before anything is written: every file under NAMES is listed in _train.json, or the run
     stops naming it (--overwrite makes such files the run's own, to replace). A manifest left in
     state "running" is a killed run's: everything under NAMES is taken as its (its own start had
     checked that nothing else was there), so a preempted run resumes from its checkpoints.
  3. _train.json says "running" while the run writes; export's commit functions record what they
     commit (record); the run's end rewrites it: state "complete" (or "failed"), and exactly the
     files under NAMES.

Files outside NAMES (a user's notes next to the model) are never listed, read or touched. The
manifest is untrusted input: its entries are checked as plain relative paths under NAMES before use.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys

from model import gate

MANIFEST = "_train.json"
LOCK = "_train.lock"
NAMES = ("checkpoints", "logs", "history.csv", "plots", "best.weights.h5", "teacher_targets.npz", ".workers",
         "export", "metadata.json", "MODEL_CARD.md")
EXPORT_NAMES = ("export", "metadata.json", "MODEL_CARD.md")  # what an export commits
# An export directory written before manifests existed: its files, recognized by name.
_LEGACY = ("export/model.keras", "export/saved_model/", "metadata.json", "MODEL_CARD.md")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def model_gate(root: str) -> gate.Gate:
    return gate.Gate([root], store=gate.TensorFlowStore())


def present(root: str, names=NAMES) -> list[str]:
    """Relative paths of the files under `names` in root."""
    return TrainingClaim(root).present(names)


def read_manifest(root: str) -> dict | None:
    """DIR/_train.json, validated; None when there is none."""
    return TrainingClaim(root).read_manifest()


def owned(root: str, manifest: dict | None, names=NAMES) -> set[str]:
    """The files under `names` that are training's (see the module docstring)."""
    return TrainingClaim(root).owned(manifest, names)


def _write(root: str, manifest: dict) -> None:
    model_gate(root).write_bytes(f"{root}/{MANIFEST}", (json.dumps(manifest, indent=2) + "\n").encode())


def record(root: str, adopt=(), create: bool = False) -> None:
    """After an export's commit: the manifest keeps the files it listed that still exist and adds what
    is now under `adopt` (names the caller has just written whole: export/ and metadata.json after a
    commit, MODEL_CARD.md after writing it). create=True: a directory with no manifest gets one (an
    export() called directly); otherwise such a directory is left without."""
    root = root.rstrip("/")
    manifest = read_manifest(root)
    if manifest is None and not create:
        return
    manifest = manifest or {"manifest_version": 1, "stage": "export", "state": "complete", "host": socket.gethostname()}
    here = set(present(root))
    kept = {rel for rel in manifest.get("files", []) if rel in here}
    _write(root, {**manifest, "updated": _now(), "files": sorted(kept | set(present(root, adopt)))})


def check_export_owned(root: str) -> None:
    """Before an export replaces export/, metadata.json and MODEL_CARD.md: they are an earlier
    export's (or a running training's), or a UsageError names the files that are not."""
    claim = TrainingClaim(root)
    claim.foreign(claim.read_manifest(), hint=" (emotion train --overwrite replaces them)", names=EXPORT_NAMES)


def is_chief_task() -> bool:
    """Whether this process is the chief of its training job, from TF_CONFIG alone (before any
    strategy exists): no cluster, the "chief" task, or worker 0 of a cluster without a chief."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    except ValueError:
        return True
    cluster, task = config.get("cluster") or {}, config.get("task") or {}
    if not cluster or not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster


class TrainingClaim(gate.RootClaim):
    """Lock, check and manifest of a training run into --model-dir (see the module docstring): a
    gate.RootClaim with training's names and words. `replaced`: the files --overwrite made this run's
    (training does not read them as its own)."""

    FLAG, MANIFEST, LOCK, NAMES = "--model-dir", MANIFEST, LOCK, NAMES
    UNREADABLE = ("{path} is not a manifest training wrote (a link, a FIFO or a device); move it away or choose "
                  "another {flag}")
    NOT_MANIFEST = "{path} is not a manifest training wrote; move it away or choose another {flag}"
    UNLISTED = "{path} lists {rel}, which training does not write; move the manifest away"
    FOREIGN = ("{flag} {root} already holds {n} file(s) no training or export wrote ({shown}); choose another "
               "{flag}, move them away{hint}")

    def __init__(self, model_dir: str, overwrite: bool = False, chief: bool = True, run_id: str | None = None):
        super().__init__(model_dir, run_id or gate.new_id("train"), store=gate.TensorFlowStore())
        self.overwrite, self.chief = overwrite, chief
        self.replaced: set[str] = set()
        self.previous: dict | None = None

    def owned(self, manifest: dict | None, names=None) -> set[str]:
        """The files under `names` (all of training's by default) that are training's: those the
        manifest lists; a killed run's ("running"): all of them; no manifest: a legacy export's."""
        here = set(self.present(names))
        if manifest is None:
            legacy = here if {"metadata.json", "export/model.keras"} <= here else set()
            return {rel for rel in legacy if any(rel == p or (p.endswith("/") and rel.startswith(p)) or
                                                 (rel.startswith("export/") and rel.endswith(".tflite"))
                                                 for p in _LEGACY)}
        if manifest.get("state") == "running":
            return here
        return set(manifest.get("files", []))

    def __enter__(self) -> TrainingClaim:
        return super().__enter__() if self.chief else self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.chief:
            super().__exit__(exc_type, exc, tb)

    def claim(self) -> TrainingClaim:
        self.previous = self.read_manifest()
        ours = self.owned(self.previous)
        self.replaced = set(self.foreign(self.previous, self.overwrite, ", or pass --overwrite to replace them"))
        self.manifest = {
            "manifest_version": 1, "stage": "train", "run_id": self.run_id, "started": _now(),
            "host": socket.gethostname(), "command": " ".join(["emotion", *sys.argv[1:]]),
            "names": list(NAMES), "previous": (self.previous or {}).get("run_id"),
        }
        _write(self.root, {**self.manifest, "state": "running", "files": sorted(ours | self.replaced)})
        return self

    def end(self, exc_type, exc) -> None:
        files = self.present()
        if not files and self.previous is None:  # nothing written: leave no trace
            model_gate(self.root).remove(f"{self.root}/{MANIFEST}")
        else:
            state = "complete" if exc_type is None or (exc_type is SystemExit and not exc.code) else "failed"
            _write(self.root, {**self.manifest, "state": state, "finished": _now(), "files": files})
