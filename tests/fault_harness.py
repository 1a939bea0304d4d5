"""Fault harness (issue 17 item 8): a seeded random sequence of real `emotion` runs, with faults, and
the data-safety invariants checked after every step.

One world per seed, every path below BASE:

    BASE/world/              the parent folder of every root (its entries are checked)
        NOTES.txt            a user's file next to the roots
        raw/                 the input: a few dozen images (conftest.make_split_tree, 2 sample files:
                             one real face and an empty file, and a .DS_Store); never written
        outside/             a sibling folder of the roots; never written
        ingest/  preds_a/  preds [b]/  table/  cmp/  model/
                             the roots: two predict outputs (one with glob characters: written through
                             a temp link), predict's --table root, compare's output, train's --model-dir
    BASE/tmp/                TMPDIR of the runs (their temp links)
    BASE/cwd/                the runs' working folder (must stay empty)
    BASE/logs/               stdout and stderr of every run

Before the sequence, user files are planted in every root: a notes file at the root, files in folders
whose names no stage owns, a hidden file, and in two roots per seed (the "attacks": one predict output,
and ingest's, compare's or train's folder) a user's file under a name the stage owns (ingest's
stats.json, predictions/mine.parquet, summary.json, compare/comparison.json, history.csv): a run without
--overwrite must stop with exit 2 and leave it as it was; once a run with --overwrite has started on that
root, the file is the run's to replace. A seed's first ingest runs without --overwrite (into an
attacked folder: refused, then again with it).

Steps (each a real process: python -m beam_pipelines.cli ...): `emotion ingest` (sometimes --num-shards 2,
so a re-run replaces a different set of files), `emotion predict` (images or the harness's TFRecords, into
either predict output, with and without --table, with a fresh or a re-used --run-id, with the shipped
model or the harness's own trained one), `emotion compare` (two outputs, or two run ids of the table) and
`emotion train` (vgg_xs, 1 epoch of 2 steps of 8, sometimes --fresh) on the harness's ingest output.

Faults, one per step (plan() decides them from the seed alone):

    sigkill / sigint    the process group is signalled after a random fraction of the stage's measured
                        duration (what `kill -9` and Ctrl-C do)
    sigkill_commit /    the same, aimed at the commit: 0-30 ms after the run's _run.json says "committing"
    sigint_commit       (before, inside or just after its transaction); train: within 2 s of its export
                        starting
    readonly_root       the step's root made immutable (chattr +i; works for root, unlike chmod)
    readonly_file       one existing file the run would replace (its manifest, a result, a table file)
    readonly_dir        one existing folder the run would change (predictions/, tfrecords/, export/,
                        checkpoints/, the table's _runs/ or a partition)
    staging_blocked     a file where the run's _staging/ folder goes (the output's or the table's)
    external            SIGKILL (2 in 3) or SIGINT sent by another process (kill(1)) to the run's process or its
                        group, at a random moment from 5% to 120% of the stage's expected duration: start-up,
                        listing, writing, commit, clean-up or exit, wherever it falls (a pair's run may get one too)
    pair                two runs on the same root started together (the second 0-1.5 s later): one must
                        be refused, naming the other's pid, or both succeed one after the other; the
                        kernel's lock table (/proc/locks) is sampled every 10 ms and two of the pair
                        holding the same root's lock at once is a violation

Every run starts from one of three working folders (cwd/, cwd2/ -- both must stay empty -- or outside/,
which must stay as it was) with its paths spelled one of five ways: absolute, relative to that folder,
through BASE/alias (a link to world/), with "./" inside, or with a trailing "/". What a run records
(journal, manifests, locks) must therefore be the same whatever the spelling; the harness's own recovery
of a killed run goes through the alias. The report counts the spellings, the kills delivered and the
kills survived (a step with a kill and no violation).

After every step (check()): every planted file byte for byte; the input, outside/ and the parent folder
as they were, the runs' working folder empty; every committed output loads and its manifest lists
exactly its files (tests/test_gate.assert_manifest_lists_exactly_its_files); predict: predictions
readable, rows = summary's predicted, totals balanced; ingest: stats.json balanced, TFRecords framed
and as many as written; compare: its four files; train: _train.json lists exactly what is there,
metadata.json and export/model.keras through model.export.load; every table partition has its runs
row (pointing to it, with as many rows as it says) and every runs row its partition; a step none of
whose runs committed (refused, failed, killed, interrupted) leaves the results of each output it ran
into, and the table, byte for byte as they were (check_all_or_nothing); a second run refused by the lock a
killed run left is a violation (stale_lock); after a successful run on a root: no _staging/, lock or
stray file left there (nor an emotion-* temp folder of that run); exit codes 0, 2 (exactly one
"emotion CMD: error:" line besides timestamped log lines, no Traceback), 130 (only after SIGINT: the
last line "emotion CMD: interrupted", no Traceback), -9 (only after SIGKILL) or -2 (only after SIGINT,
before the run had ended: the signal came in the interpreter's start-up or on its way out; like a
kill -9 it is judged by the data, which must be whole: counted as sigint_deaths). A killed commit whose
roll-back is refused (the journal not provably the run's: one line, exit 2, for the next run) is
counted (recovery_refusals), not fatal to the harness: its output must still say "committing" and hold
every file it held before, in place or retired (check_nothing_lost).

Stale locks after SIGKILL (gate.RootLock): locally the lock is an flock on ROOT/_run.lock (_table.lock,
_train.lock). The kernel drops it when the process dies; the file stays, naming the dead run, and the
next run opens it, takes the flock and writes itself in. So the harness's next run simply runs, as a
user's would: no flag, no manual step. A successful run removes the file as it lets go.

Every violation carries the seed, the step index, the command and a line to reproduce it:
    python bench/fault_soak.py --first-seed SEED --seeds 1 --steps STEP+1 --keep
(the plan is the seed's alone; what a signal hits depends on timing, so a reproduction replays the same
steps and faults, not always the same instant).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import pathlib
import random
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

TESTS = pathlib.Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from conftest import REPO, SAMPLE, make_split_tree  # noqa: E402
from test_gate import assert_manifest_lists_exactly_its_files, snapshot  # noqa: E402

from beam_pipelines import compare as compare_stage  # noqa: E402
from beam_pipelines.base import killed_runs  # noqa: E402
from beam_pipelines.base import manifest as run_manifest  # noqa: E402
from beam_pipelines.ingest import launcher as ingest_stage  # noqa: E402
from beam_pipelines.predict import launcher as predict  # noqa: E402
from beam_pipelines.table import claim  # noqa: E402
from model import ownership  # noqa: E402
from model.errors import UsageError  # noqa: E402

STAGES = ("ingest", "predict", "compare", "train")
FAULTS = ("sigkill", "sigint", "sigkill_commit", "sigint_commit", "readonly_root", "readonly_file", "readonly_dir",
          "staging_blocked", "pair", "external")
FAULT_WEIGHTS = (4, 2, 2, 2, 1, 1, 1, 1, 1, 2, 3)  # "none" first, then FAULTS in order
# Seconds a clean run takes on a loaded 2-core machine; replaced by what the harness measures.
EXPECTED_S = {"ingest": 10.0, "predict": 11.0, "compare": 3.0, "train": 16.0}
RUN_TIMEOUT_S = 300
RUN_IDS = ("fh-1", "fh-2")  # re-used run ids of the table

OUTPUT_ROOTS = {"ingest": "ingest", "preds_a": "predict", "preds_b": "predict", "cmp": "compare"}
ROOT_NAMES = {"ingest": "ingest", "preds_a": "preds_a", "preds_b": "preds [b]", "table": "table", "cmp": "cmp",
              "model": "model"}
STAGE_NAMES = {"ingest": ingest_stage.OUTPUT_NAMES, "predict": predict.OUTPUT_NAMES,
               "compare": compare_stage.OUTPUT_NAMES}
LOCKS = {"output": run_manifest.LOCK, "table": claim.LOCK, "model": ownership.LOCK}
# A user's file under a name the stage owns, per attackable root.
ATTACKS = {"ingest": ("stats.json", b'{"mine": "my own summary, not an ingest output"}\n'),
           "preds_a": ("predictions/mine.parquet", b"not parquet: the user's own file\n"),
           "preds_b": ("summary.json", b'{"note": "my summary"}\n'),
           "cmp": ("compare/comparison.json", b'{"note": "my comparison"}\n'),
           "model": ("history.csv", b"epoch,my_own_column\n0,1\n")}

_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d ")
_DONE = re.compile(r"^\d\d:\d\d:\d\d (ingest|predict): \d+ matched ->|^\d\d:\d\d:\d\d compare: \d+ images in both|"
                   r"^\d\d:\d\d:\d\d train: exported", re.M)
_IO_ERROR = re.compile(r"(PermissionError|PermissionDeniedError|NotADirectoryError|Operation not permitted|"
                       r"Not a directory|Read-only file system)")
# What native runtimes print on stderr themselves (TFLite's delegate notice, absl/glog lines).
_NATIVE_NOISE = re.compile(r"^(INFO: |WARNING: All log messages before absl|[IWE]\d{4} \d\d:\d\d)")


# =========================================================================== the plan


@dataclasses.dataclass
class Step:
    index: int
    stage: str
    argv: list[str]
    fault: str = "none"
    fraction: float = 0.0  # sigkill/sigint: of the expected duration
    pair_argv: list[str] | None = None
    pair_delay: float = 0.0
    roots: tuple[str, ...] = ()  # root keys this step (or its pair) writes
    overwrite_roots: tuple[str, ...] = ()  # roots a process of this step runs into with --overwrite
    pair_kind: str = ""

    @property
    def command(self) -> str:
        text = "emotion " + shlex.join(self.argv)
        if self.pair_argv:
            text += f"  &&  (after {self.pair_delay:.1f}s) emotion " + shlex.join(self.pair_argv)
        return text


class World:
    """The paths of one seed's world (see the module docstring)."""

    def __init__(self, base: pathlib.Path):
        self.base = base
        self.parent = base / "world"
        self.raw = self.parent / "raw"
        self.outside = self.parent / "outside"
        self.tmp, self.cwd, self.logs = base / "tmp", base / "cwd", base / "logs"
        self.cwd2 = base / "cwd2"  # a second working folder (must stay empty too)
        self.alias = base / "alias"  # a link to world/: another spelling of every root
        self.roots = {key: self.parent / name for key, name in ROOT_NAMES.items()}

    def __getitem__(self, key: str) -> pathlib.Path:
        return self.roots[key]


class _Planner:
    """Draws the steps of one seed. It remembers what it planned (not what happened): an attacked root's
    first run goes without --overwrite (it must be refused), its second with it; compare --table names
    run ids that earlier planned steps used."""

    def __init__(self, rng: random.Random, w: World, attacked: list[str]):
        self.rng, self.w, self.attacked = rng, w, set(attacked)
        self.runs_into: dict[str, int] = {}
        self.table_ids: list[str] = []

    def overwrite(self, root: str) -> bool:
        n = self.runs_into.get(root, 0)
        self.runs_into[root] = n + 1
        if root in self.attacked and n < 2:
            return n == 1
        return self.rng.random() < 0.1

    def predict(self, output: str, table_: bool | None = None, model_ok: bool = True):
        rng, w = self.rng, self.w
        argv = ["predict", "--input", str(w.raw if rng.random() < 0.7 else w["ingest"]), "--output", str(w[output])]
        roots, over = [output], []
        if table_ if table_ is not None else rng.random() < 0.6:
            argv += ["--table", str(w["table"])]
            roots.append("table")
            if rng.random() < 0.6:
                run_id = rng.choice(RUN_IDS)
                argv += ["--run-id", run_id]
                self.table_ids.append(run_id)
        if model_ok and rng.random() < 0.25:
            argv += ["--model", str(w["model"])]
        if self.overwrite(output):
            argv.append("--overwrite")
            over.append(output)
        return argv, tuple(roots), tuple(over)

    def stage(self, stage: str):
        rng, w = self.rng, self.w
        if stage == "predict":
            return self.predict(rng.choice(["preds_a", "preds_b"]))
        if stage == "ingest":
            argv = ["ingest", "--input", str(w.raw), "--output", str(w["ingest"]), "--val-fraction", "0.25"]
            if rng.random() < 0.3:
                argv += ["--num-shards", "2"]
            root = "ingest"
        elif stage == "compare":
            ids = sorted(set(self.table_ids))
            if ids and rng.random() < 0.4:
                a, b = (rng.sample(ids, 2) if len(ids) > 1 else ids * 2)
                argv = ["compare", "--table", str(w["table"]), "--a", a, "--b", b, "--output", str(w["cmp"])]
            else:
                argv = ["compare", "--a", str(w["preds_a"]), "--b", str(w["preds_b"]), "--output", str(w["cmp"])]
            root = "cmp"
        else:
            argv = ["train", "--data", str(w["ingest"]), "--model-dir", str(w["model"]), "--arch", "vgg_xs",
                    "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "8", "--mixed-precision", "off"]
            if rng.random() < 0.5:
                argv.append("--fresh")
            root = "model"
        over = ()
        if self.overwrite(root):
            argv.append("--overwrite")
            over = (root,)
        return argv, (root,), over

    def pair(self, step: Step) -> None:
        """The second run of a pair: the same stage into the same root (predict: the same output, or
        another output with the same --table)."""
        rng, w = self.rng, self.w
        step.pair_delay = rng.uniform(0.0, 1.5)
        if step.stage == "predict":
            output = next(k for k in ("preds_a", "preds_b") if str(w[k]) == step.argv[step.argv.index("--output") + 1])
            if rng.random() < 0.5:
                argv, roots, over = self.predict(output)
                step.pair_kind = "same output"
            else:
                if "--table" not in step.argv:
                    step.argv += ["--table", str(w["table"])]
                    step.roots += ("table",)
                argv, roots, over = self.predict("preds_b" if output == "preds_a" else "preds_a", table_=True)
                step.pair_kind = "same table"
        else:
            argv, roots, over = self.stage(step.stage)
            step.pair_kind = "same output" if step.stage != "train" else "same model dir"
        step.pair_argv = argv
        step.roots = tuple(dict.fromkeys(step.roots + roots))
        step.overwrite_roots = tuple(dict.fromkeys(step.overwrite_roots + over))


def plan(seed: int, steps: int, w: World) -> tuple[list[Step], list[str]]:
    """The steps of a seed and its attacked roots: a function of the seed alone (the outcomes of a run,
    which depend on timing, never change what comes next). It opens with an ingest and a predict
    --table (no fault); every stage and fault then appears as early as the draw allows."""
    rng = random.Random(seed)
    attacked = sorted([rng.choice(["preds_a", "preds_b"]), rng.choice(["ingest", "cmp", "model"])])
    planner = _Planner(rng, w, attacked)
    stage_queue = ["compare", "train", "ingest", "predict"]
    rng.shuffle(stage_queue)
    fault_queue = list(FAULTS)
    rng.shuffle(fault_queue)
    result: list[Step] = []
    while len(result) < steps:
        i = len(result)
        if i == 0 or (planner.runs_into.get("ingest", 0) == 1 and "ingest" in planner.attacked):
            stage, fault = "ingest", "none"  # an attacked ingest folder: refused, then --overwrite
        elif not any(s.stage == "predict" for s in result):
            stage, fault = "predict", "none"
        else:
            stage = stage_queue.pop(0) if stage_queue and rng.random() < 0.7 else \
                rng.choices(STAGES, weights=(2, 5, 2, 2))[0]
            fault = fault_queue.pop(0) if fault_queue and rng.random() < 0.8 else \
                rng.choices(("none", *FAULTS), weights=FAULT_WEIGHTS)[0]
            if fault == "staging_blocked" and stage == "train":  # training has no _staging/ of its own
                stage = "predict"
        if stage == "predict" and fault == "none" and not any(s.stage == "predict" for s in result):
            output = "preds_a" if "preds_a" not in planner.attacked else "preds_b"
            argv, roots, over = planner.predict(output, table_=True, model_ok=False)
        else:
            argv, roots, over = planner.stage(stage)
        step = Step(i, stage, argv, fault=fault, roots=roots, overwrite_roots=over)
        if fault in ("sigkill", "sigint", "external"):
            step.fraction = rng.uniform(0.05, 1.2)
        elif fault in ("sigkill_commit", "sigint_commit"):
            step.fraction = rng.uniform(0.0, 1.0)  # train: of the 2 s after its export starts
        if fault == "pair":
            planner.pair(step)
        result.append(step)
    return result, attacked


# =========================================================================== runs


@dataclasses.dataclass
class Run:
    argv: list[str]
    popen: subprocess.Popen
    started: float
    log: pathlib.Path
    signal_sent: str = ""
    rc: int | None = None
    stderr: str = ""
    seconds: float = 0.0
    spelled: list[str] | None = None  # the argv as launched (another spelling of its paths)
    cwd: str = ""

    @property
    def stage(self) -> str:
        return self.argv[0]


def _immutable(path: pathlib.Path, on: bool) -> bool:
    return subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True).returncode == 0


class LockWatch(threading.Thread):
    """Samples the kernel's lock table while a pair runs: two of `pids` holding a lock on the same root's
    lock file (any inode seen at its path) at the same moment is an overlap."""

    def __init__(self, pids: list[int], lock_paths: dict[str, pathlib.Path]):
        super().__init__(daemon=True)
        self.pids, self.lock_paths = set(pids), lock_paths
        self.inodes: dict[int, str] = {}
        self.held: dict[int, set[str]] = {}
        self.overlaps: list[str] = []
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            time.sleep(0.01)

    def sample(self) -> None:
        for root, path in self.lock_paths.items():
            with contextlib.suppress(OSError):
                self.inodes[os.stat(path).st_ino] = root
        holders: dict[str, set[int]] = {}
        try:
            lines = pathlib.Path("/proc/locks").read_text().splitlines()
        except OSError:
            return
        for line in lines:
            parts = line.split()
            if len(parts) < 6 or parts[1] != "FLOCK":  # "->" lines are waiters, not holders
                continue
            pid, inode = int(parts[4]), int(parts[5].rsplit(":", 1)[1])
            if pid in self.pids and inode in self.inodes:
                holders.setdefault(self.inodes[inode], set()).add(pid)
                self.held.setdefault(pid, set()).add(self.inodes[inode])
        self.samples += 1
        for root, pids in holders.items():
            if len(pids) > 1:
                self.overlaps.append(f"pids {sorted(pids)} both held the lock of {root}")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


# =========================================================================== the harness


class Harness:
    """One seed's world, its plan, and the checks after every step; violations and counts in .report."""

    def __init__(self, base: pathlib.Path, seed: int, steps: int, budget_s: float | None = None,
                 log=print, repro_script: str = "bench/fault_soak.py"):
        self.w = World(pathlib.Path(base))
        self.seed, self.n_steps, self.budget_s, self.log = seed, steps, budget_s, log
        self.repro_script = repro_script
        self.steps, self.attacked = plan(seed, steps, self.w)
        self.rng = random.Random(f"{seed}:runtime")
        self.expected = dict(EXPECTED_S)
        self.planted: dict[pathlib.Path, bytes] = {}
        self.attack_files: dict[str, pathlib.Path] = {}
        self.immutable: set[pathlib.Path] = set()
        self.alive: list[Run] = []
        self.violations: list[dict] = []
        self.records: list[dict] = []
        self.last_ok: dict[str, bool] = {}  # root key -> did the last run into it exit 0
        self.loaded: dict[str, str] = {}  # root key -> fingerprint of what was last loaded fine
        # Roots left with new results under an old _run.json (rolled_back_after_commit, reported once):
        # their manifest checks wait for the next successful run into them.
        self.broken: set[str] = set()
        self.counts = {"steps": 0, "runs": 0, "stages": {}, "faults": {}, "faults_delivered": {}, "exit_codes": {},
                       "pairs": {}, "attack_refusals": 0, "stale_lock_takeovers": 0, "checks": 0, "refusals": {},
                       "spellings": {}, "kills": 0, "kills_survived": 0, "recovery_refusals": {},
                       "sigint_deaths": 0}
        self.refused_recovery: dict[str, str] = {}
        self.notes: list[str] = []

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        w = self.w
        for folder in (w.parent, w.tmp, w.cwd, w.cwd2, w.logs, w.outside):
            folder.mkdir(parents=True, exist_ok=True)
        if not w.alias.is_symlink():
            w.alias.symlink_to(w.parent, target_is_directory=True)
        make_split_tree(w.raw, per_class=4, splits=("train", "test"), seed=self.seed % 1000 + 3)
        face = next(p for p in sorted((SAMPLE / "happy").iterdir()) if p.stat().st_size > 0)
        shutil.copyfile(face, w.raw / "test" / "happy" / "sample_face.jpg")
        (w.raw / "train" / "sad" / "empty.jpg").write_bytes(b"")  # rejected: empty_file
        (w.raw / "train" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # skipped non-data
        (w.outside / "data.csv").write_text("id,value\n1,2\n")
        (w.outside / "deep" / "keep.bin").parent.mkdir()
        (w.outside / "deep" / "keep.bin").write_bytes(os.urandom(64))
        self._plant(w.parent / "NOTES.txt", b"the parent folder's notes\n")
        for key, root in w.roots.items():
            self._plant(root / "NOTES.txt", f"notes about {key}\n".encode())
            self._plant(root / "my_stuff" / "notes.md", f"# {key}\nmy own work, next to the outputs\n".encode())
            self._plant(root / ".user_config", b"[user]\nkeep = me\n")
        self._plant(w["table"] / "queries" / "daily.sql", b"SELECT 1;\n")
        self._plant(w["model"] / "experiments" / "idea.txt", b"try a bigger net\n")
        for key in self.attacked:
            rel, data = ATTACKS[key]
            self.attack_files[key] = w[key] / rel
            self._plant(w[key] / rel, data)
        self.raw_snapshot = snapshot(w.raw)
        self.outside_snapshot = snapshot(w.outside)
        self.parent_allowed = {p.name for p in w.parent.iterdir()}

    def _plant(self, path: pathlib.Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.planted[path] = data

    # ------------------------------------------------------------------ running

    def run(self) -> dict:
        started = time.time()
        self.setup()
        try:
            for step in self.steps:
                if self.budget_s is not None and time.time() - started > self.budget_s:
                    self.notes.append(f"budget of {self.budget_s:.0f}s spent after {step.index} steps")
                    break
                self.run_step(step)
        finally:
            self.cleanup()
        return self.report(time.time() - started)

    def run_step(self, step: Step) -> None:
        t0 = time.time()
        violations_before = len(self.violations)
        self.counts["steps"] += 1
        self.counts["stages"][step.stage] = self.counts["stages"].get(step.stage, 0) + 1
        self.counts["faults"][step.fault] = self.counts["faults"].get(step.fault, 0) + 1
        for key in step.overwrite_roots:  # --overwrite makes the user's file there the run's to replace
            if key in self.attack_files:
                self.planted.pop(self.attack_files.pop(key), None)
        tmp_before = set(os.listdir(self.w.tmp))
        stale = [key for key in step.roots if self._lock_path(key).exists()]  # left by a killed run
        before = {key: (self._manifest_bytes(key), self._committed_files(key)) for key in step.roots if key != "model"}
        fault_info, undo = self.apply_fault(step)
        try:
            runs = self.launch(step)
        finally:
            undo()
        record = {"step": step.index, "stage": step.stage, "fault": step.fault, "target": fault_info,
                  "command": step.command, "exit": [r.rc for r in runs], "seconds": round(time.time() - t0, 1),
                  "signal": [r.signal_sent for r in runs]}
        if step.fault == "pair":
            record["pair"] = step.pair_kind
        self.records.append(record)
        self.check_runs(step, runs)
        for key in stale:
            mine = [r for r in runs if key in self._roots_of(r.argv)]
            if any(r.rc == 0 for r in mine):
                self.counts["stale_lock_takeovers"] += 1
            elif step.pair_argv is None and any(r.rc == 2 and "is in use by run" in r.stderr for r in mine):
                self.violation(step, "stale_lock", f"refused by the lock a killed run left in {self.w[key].name}")
        self.check_all_or_nothing(step, runs, before)
        for key in step.roots:
            # A run into the root ended well (the other of a pair may have been refused): the root must
            # now be clean of staging, locks and strays.
            self.last_ok[key] = any(r.rc == 0 for r in runs if key in self._roots_of(r.argv))
            if self.last_ok[key]:
                self.broken.discard(key)
        all_ok = all(r.rc == 0 for r in runs)
        if all_ok:
            new_temps = sorted(n for n in set(os.listdir(self.w.tmp)) - tmp_before if n.startswith("emotion-"))
            if new_temps:
                self.violation(step, "temp_left", f"successful run left {new_temps} in TMPDIR")
        self.check(step)
        killed = sum(1 for r in runs if r.signal_sent in ("SIGKILL", "SIGINT"))
        self.counts["kills"] += killed
        if killed and len(self.violations) == violations_before:
            self.counts["kills_survived"] += killed
        self.log(f"[seed {self.seed} step {step.index}] {step.stage:<8} fault={step.fault:<15} "
                 f"exit={record['exit']} {record['seconds']}s{' ' + fault_info if fault_info else ''}")

    def _manifest_bytes(self, key: str) -> bytes | None:
        path = self.w[key] / run_manifest.MANIFEST
        return path.read_bytes() if key != "table" and path.is_file() else None

    def _committed_files(self, key: str) -> dict[str, str]:
        """sha256 of each committed file of a root: an output's files under its stage's names; the
        table's partitions, runs rows and BigQuery files. Users' files are not counted."""
        root = self.w[key]
        if not root.is_dir():
            return {}
        if key == "table":
            files = [p for p in root.rglob("*") if p.relative_to(root).parts[0] not in (claim.STAGING, claim.LOCK)]
        else:
            files = [p for name in STAGE_NAMES[OUTPUT_ROOTS[key]] for p in [root / name, *(root / name).rglob("*")]]
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
                if p.is_file() and not p.is_symlink() and p not in self.planted}

    def roll_back_killed_commits(self, step: Step, runs: list[Run]) -> None:
        """A run killed inside its commit leaves its output (and table) mixed until the next run into it
        rolls the commit back from its journal, before anything else; one killed just after it leaves
        its clean-up undone. Do now what that next run does first (killed_runs.recover, what OutputClaim
        does), so all-or-nothing and the manifests are checked on the result."""
        for run in runs:
            if run.rc != -signal.SIGKILL:
                continue
            keys = self._roots_of(run.argv)
            alias = lambda key: str(self.w.alias / self.w[key].name)  # noqa: E731 (another spelling)
            table_root = [alias("table")] if "table" in keys else []
            for key in keys - {"table", "model"}:
                try:
                    if killed_runs.recover(alias(key), also_roots=table_root):
                        self.log(f"[seed {self.seed} step {step.index}] recovered the run killed in {key}'s commit")
                except UsageError as exc:
                    # What the next run into it would print (one line, exit 2): an outcome, not a crash of
                    # the harness. Nothing may be lost meanwhile (check_all_or_nothing checks it).
                    self.refused_recovery[key] = str(exc)
                    reason = re.sub(r"[^\s']*/world/|[^\s']*/alias/", "", str(exc))
                    reason = re.sub(r"[a-z]+-\d{8}T\d{6}Z-[0-9a-f]{8}|fh-\d", "<run>", reason)[:90]
                    self.counts["recovery_refusals"][reason] = self.counts["recovery_refusals"].get(reason, 0) + 1
                    self.log(f"[seed {self.seed} step {step.index}] the roll-back of {key} was refused: {exc}")

    def check_all_or_nothing(self, step: Step, runs: list[Run], before: dict) -> None:
        """A run that did not commit (refused, failed, killed or interrupted before its commit) leaves
        its output's results and the table byte for byte as they were; one that committed has a new
        complete _run.json (and then its table partition: check_table holds the table together)."""
        def committed(key: str) -> bool:
            now = self._manifest_bytes(key)
            return now is not None and now != before[key][0] and json.loads(now).get("state") == "complete"

        self.refused_recovery: dict[str, str] = {}
        self.roll_back_killed_commits(step, runs)
        for key in sorted(before, key=lambda k: k == "table"):  # the outputs first, then their table
            outs = [key] if key != "table" else \
                [k for r in runs if "table" in self._roots_of(r.argv) for k in self._roots_of(r.argv) if k != "table"]
            if any(committed(k) for k in outs):
                continue
            if any(k in self.refused_recovery for k in outs):
                self.check_nothing_lost(step, key, before[key][1], [k for k in outs if k in self.refused_recovery])
                continue
            after = self._committed_files(key)
            if after != before[key][1]:
                old = before[key][1]
                changed = sorted(k for k in set(old) | set(after) if old.get(k) != after.get(k))
                state = None
                with contextlib.suppress(Exception):
                    state = json.loads(self._manifest_bytes(outs[0]) or b"{}").get("state") if outs else None
                killed = any(r.rc == -signal.SIGKILL for r in runs)
                interrupted = any(r.signal_sent == "SIGINT" and r.rc in (130, -signal.SIGINT) for r in runs)
                if interrupted and (key == "table" and any(k in self.broken for k in outs) or
                                    key != "table" and self._manifest_bytes(key) == before[key][0]):
                    # Ctrl-C just after the commit: the results are the new run's, _run.json the old one's.
                    kind = "rolled_back_after_commit"
                    self.broken.add(key)
                else:
                    kind = "killed_in_commit" if killed and state == "committing" else "not_all_or_nothing"
                self.violation(step, kind, f"{self.w[key].name}: no run committed (exits {[r.rc for r in runs]}, "
                               f"_run.json {state!r}) but {len(changed)} committed file(s) changed: {changed[:6]}")

    def check_nothing_lost(self, step: Step, key: str, old: dict[str, str], refused: list[str]) -> None:
        """A killed commit whose roll-back was refused (the journal could not be proven the run's own)
        leaves its output half old, half new until the user decides; what must hold meanwhile: the
        output's _run.json still says "committing" (no reader takes it for a finished run), and every file
        the root held before is still there, in its place or among the retired files of its staging."""
        for k in refused:
            state = json.loads(self._manifest_bytes(k) or b"{}").get("state")
            if state != "committing":
                self.violation(step, "refused_recovery", f"{self.w[k].name}: the roll-back was refused "
                               f"({self.refused_recovery[k][:200]}) but _run.json says {state!r}")
        root = self.w[key]
        held = {hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
                if p.is_file() and not p.is_symlink()}
        lost = sorted(name for name, digest in old.items() if digest not in held)
        if lost:
            self.violation(step, "refused_recovery", f"{root.name}: the roll-back was refused and {len(lost)} file(s) "
                           f"of the previous output are gone: {lost[:6]}")

    def _lock_path(self, key: str) -> pathlib.Path:
        return self.w[key] / LOCKS["table" if key == "table" else "model" if key == "model" else "output"]

    def _roots_of(self, argv: list[str]) -> set[str]:
        paths = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--output", "--table", "--model-dir")}
        return {key for key, root in self.w.roots.items() if str(root) in paths}

    def launch(self, step: Step) -> list[Run]:
        runs = [self.start(step.argv, f"{step.index:03d}a")]
        if step.pair_argv is None:
            sig = signal.SIGKILL if step.fault.startswith("sigkill") else signal.SIGINT
            if step.fault in ("sigkill", "sigint"):
                delay = max(0.5, step.fraction * self.expected[step.stage])
                self.signal_after(runs[0], delay, sig)
            elif step.fault == "external":
                self.external_kill(runs[0], step)
            elif step.fault in ("sigkill_commit", "sigint_commit"):
                self.signal_at_commit(runs[0], step, sig)
            self.wait(runs[0])
            if runs[0].rc == 0 and step.fault == "none":
                self.expected[step.stage] = 0.5 * self.expected[step.stage] + 0.5 * runs[0].seconds
            return runs
        locks = {key: self._lock_path(key) for key in step.roots}
        time.sleep(step.pair_delay)
        runs.append(self.start(step.pair_argv, f"{step.index:03d}b"))
        if self.rng.random() < 0.3:  # one of the pair killed from outside as well
            killer = threading.Thread(target=self.external_kill, args=(self.rng.choice(runs), step), daemon=True)
            killer.start()
        watch = LockWatch([r.popen.pid for r in runs], locks)
        watch.start()
        try:
            for run in runs:
                self.wait(run)
        finally:
            watch.stop()
        step_overlaps = sorted(set(watch.overlaps))
        if step_overlaps:
            self.violation(step, "pair_overlap", "; ".join(step_overlaps))
        outcome = "both ran" if all(r.rc == 0 for r in runs) else \
            "one refused" if sorted(r.rc for r in runs) == [0, 2] else f"exits {[r.rc for r in runs]}"
        key = f"{step.pair_kind}: {outcome}"
        self.counts["pairs"][key] = self.counts["pairs"].get(key, 0) + 1
        return runs

    def start(self, argv: list[str], tag: str) -> Run:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(self.w.tmp),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        env.pop("EMOTION_VERBOSE", None)
        log = self.w.logs / f"{tag}.log"
        cwd, spelled, how = self.spell(argv)
        self.counts["spellings"][how] = self.counts["spellings"].get(how, 0) + 1
        f = open(log, "wb")
        popen = subprocess.Popen([sys.executable, "-m", "beam_pipelines.cli", *spelled], cwd=cwd, env=env,
                                 stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
        f.close()
        run = Run(argv, popen, time.time(), log, spelled=spelled, cwd=str(cwd))
        self.alive.append(run)
        self.counts["runs"] += 1
        return run

    def spell(self, argv: list[str]) -> tuple[pathlib.Path, list[str], str]:
        """(working folder, argv, how): each run starts from one of the working folders, its paths
        spelled one of several ways -- absolute, relative to that folder, through the link alias/ to
        the world, with a "./" inside or a "/" at the end -- so that what a run records (journal,
        manifests, locks) must be the same whatever the spelling and wherever the next run starts."""
        w = self.w
        cwd = self.rng.choice([w.cwd, w.cwd2, w.outside])
        how = self.rng.choice(["absolute", "relative", "alias", "dot", "slash"])
        base = str(w.base)

        def one(value: str) -> str:
            if not value.startswith(base + "/"):
                return value
            if how == "relative":
                return os.path.relpath(value, cwd)
            if how == "alias" and value.startswith(str(w.parent)):
                return str(w.alias) + value[len(str(w.parent)):]
            if how == "dot":
                head, _, tail = value.rpartition("/")
                return f"{head}/./{tail}"
            if how == "slash":
                return value + "/"
            return value
        return cwd, [one(a) for a in argv], f"{how} from {cwd.name}"

    def external_kill(self, run: Run, step: Step) -> None:
        """SIGKILL or SIGINT sent by another process (kill(1)), to the run's process alone or its
        group, at a random moment of its expected duration (anywhere: start-up, listing, writing,
        commit, clean-up, exit)."""
        rng = random.Random(f"{self.seed}:{step.index}:external:{run.popen.pid}")
        sig = rng.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGINT])
        delay = max(0.05, step.fraction * self.expected[run.stage])
        target = str(run.popen.pid) if rng.random() < 0.5 else f"-{run.popen.pid}"
        deadline = run.started + delay
        while time.time() < deadline:
            if run.popen.poll() is not None:
                return
            time.sleep(0.01)
        if run.popen.poll() is not None:
            return
        name = "external_" + signal.Signals(sig).name.lower()
        killer = subprocess.run(["kill", f"-{signal.Signals(sig).name[3:]}", "--", target], capture_output=True)
        if killer.returncode == 0:
            run.signal_sent = signal.Signals(sig).name
            self.counts["faults_delivered"][name] = self.counts["faults_delivered"].get(name, 0) + 1

    def signal_after(self, run: Run, delay: float, sig: int) -> None:
        deadline = run.started + delay
        while time.time() < deadline:
            if run.popen.poll() is not None:
                return  # it finished first
            time.sleep(0.02)
        self._send(run, sig, "sigkill" if sig == signal.SIGKILL else "sigint")

    def signal_at_commit(self, run: Run, step: Step, sig: int) -> None:
        """Signals the run as it commits: `fraction` of 30 ms after its _run.json says "committing" (the
        transaction follows at once and takes a few ms); train: `fraction` of 2 s after its export has
        started writing."""
        root = self.w[step.roots[0]]
        manifest = root / (ownership.MANIFEST if step.stage == "train" else run_manifest.MANIFEST)
        before = manifest.read_bytes() if manifest.is_file() else None
        while run.popen.poll() is None:
            if step.stage == "train":
                if root.is_dir() and any(n.startswith(".export-staging-") for n in os.listdir(root)):
                    time.sleep(step.fraction * 2.0)
                    break
            else:
                with contextlib.suppress(OSError, ValueError):
                    data = manifest.read_bytes()
                    if data != before and json.loads(data).get("state") == "committing":
                        time.sleep(step.fraction * 0.03)  # before, inside or just after the transaction
                        break
            time.sleep(0.002)
        self._send(run, sig, "sigkill_commit" if sig == signal.SIGKILL else "sigint_commit")

    def _send(self, run: Run, sig: int, name: str) -> None:
        if run.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.popen.pid, sig)  # the process group, as a terminal's Ctrl-C
                run.signal_sent = signal.Signals(sig).name
                self.counts["faults_delivered"][name] = self.counts["faults_delivered"].get(name, 0) + 1

    def wait(self, run: Run) -> None:
        try:
            run.rc = run.popen.wait(timeout=max(1.0, RUN_TIMEOUT_S - (time.time() - run.started)))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.popen.pid, signal.SIGKILL)
            run.rc = run.popen.wait()
            run.stderr = f"(killed by the harness after {RUN_TIMEOUT_S}s)\n"
        run.seconds = time.time() - run.started
        run.stderr += run.log.read_text(errors="replace")
        if run.rc == -signal.SIGKILL and not run.signal_sent:
            run.signal_sent = "timeout"
        with contextlib.suppress(ValueError):
            self.alive.remove(run)
        code = str(run.rc)
        self.counts["exit_codes"][code] = self.counts["exit_codes"].get(code, 0) + 1

    def cleanup(self) -> None:
        for run in list(self.alive):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.popen.pid, signal.SIGKILL)
            run.popen.wait()
        for path in list(self.immutable):
            _immutable(path, False)
            self.immutable.discard(path)

    # ------------------------------------------------------------------ faults

    def apply_fault(self, step: Step):
        """Sets up a write fault for the step; returns (what was done, undo)."""
        rng = random.Random(f"{self.seed}:{step.index}")
        root_key = step.roots[0]
        root = self.w[root_key]
        kind = step.fault
        if kind == "staging_blocked":
            target_root = self.w["table"] if "table" in step.roots and rng.random() < 0.5 else root
            blocker = target_root / run_manifest.STAGING
            if blocker.exists() or blocker.is_symlink():
                kind = "readonly_dir"  # a killed run's staging is there: block something else
            else:
                target_root.mkdir(parents=True, exist_ok=True)
                data = b"a file where _staging/ goes\n"
                blocker.write_bytes(data)

                def undo_blocker():
                    if not blocker.is_file() or blocker.read_bytes() != data:
                        self.violation(step, "user_file", f"{blocker} (a file in the way of _staging/) was changed")
                    with contextlib.suppress(FileNotFoundError):
                        blocker.unlink()
                return f"file at {blocker.relative_to(self.w.parent)}", undo_blocker
        if kind in ("readonly_file", "readonly_dir"):
            candidates = self._fault_targets(step, files=kind == "readonly_file", rng=rng)
            if candidates:
                return self._make_immutable(rng.choice(candidates))
            kind = "readonly_root"
        if kind == "readonly_root":
            root.mkdir(parents=True, exist_ok=True)
            return self._make_immutable(root)
        return "", lambda: None

    def _fault_targets(self, step: Step, files: bool, rng: random.Random) -> list[pathlib.Path]:
        found = []
        for key in step.roots:
            root = self.w[key]
            if not root.is_dir():
                continue
            if key == "table":
                names = [claim.RUNS, claim.BIGQUERY, claim.MANIFEST] + [p.name for p in root.glob("model_version=*")]
            elif key == "model":
                names = [*ownership.NAMES, ownership.MANIFEST]
            else:
                names = [*STAGE_NAMES[OUTPUT_ROOTS[key]], run_manifest.MANIFEST]
            for name in names:
                path = root / name
                if path.is_symlink() or not path.exists():
                    continue
                if path.is_file():
                    if files:
                        found.append(path)
                    continue
                for sub in sorted(path.rglob("*")):
                    if sub.is_symlink() or sub in self.planted:
                        continue
                    if (sub.is_file() and files) or (sub.is_dir() and not files):
                        found.append(sub)
                if not files:
                    found.append(path)
        return sorted(p for p in found if p not in self.planted)

    def _make_immutable(self, path: pathlib.Path):
        if not _immutable(path, True):
            return f"(chattr +i {path} failed: no write fault)", lambda: None
        self.immutable.add(path)
        inode = path.stat().st_ino

        def undo():
            self.immutable.discard(path)
            if path.exists() and path.stat().st_ino == inode:
                _immutable(path, False)
                return
            # The run moved it (a folder above it renamed aside, as export's commit does): find it by
            # its inode, or a later run could never remove it and the harness would blame the product.
            for found in [self.w.parent, *self.w.parent.rglob("*")]:
                with contextlib.suppress(OSError):
                    if not found.is_symlink() and found.stat().st_ino == inode:
                        _immutable(found, False)
                        return
        return f"chattr +i {path.relative_to(self.w.parent)}", undo

    # ------------------------------------------------------------------ checks of the runs

    def violation(self, step: Step, kind: str, detail: str) -> None:
        repro = (f"{pathlib.Path(sys.executable).name} {self.repro_script} --first-seed {self.seed} --seeds 1 "
                 f"--steps {step.index + 1} --keep")
        v = {"seed": self.seed, "step": step.index, "kind": kind, "detail": detail[:2000], "fault": step.fault,
             "command": step.command, "reproduce": repro}
        self.violations.append(v)
        self.log(f"VIOLATION seed {self.seed} step {step.index} [{kind}] {detail[:600]}\n"
                 f"  command: {step.command}\n  reproduce: {repro}")

    def check_runs(self, step: Step, runs: list[Run]) -> None:
        for run in runs:
            cmd, err = run.stage, run.stderr
            lines = [line for line in err.splitlines() if line.strip()]
            other = [line for line in lines if not _LOG_LINE.match(line) and not _NATIVE_NOISE.match(line)]
            where = f"(stderr in {run.log})"
            if run.rc == 0:
                if run.signal_sent == "SIGINT" and "Traceback" in err:
                    self.violation(step, "sigint_at_exit", f"{cmd} finished, then printed a traceback for the SIGINT "
                                   f"while exiting (exit 0) {where}: " + " | ".join(other[-3:]))
            elif run.rc == 2:
                reason = next((line for line in other if line.startswith(f"emotion {cmd}: error: ")), "?")
                # Grouped by kind: the world's folder and the pid dropped, a run id shown as <run>.
                reason = re.sub(r"[^\s']*/world/|\(pid \d+.*", "", reason)
                reason = re.sub(r"[a-z]+-\d{8}T\d{6}Z-[0-9a-f]{8}", "<run>", reason)
                reason = re.sub(r"\d+ file\(s\).*", "N file(s) ...", reason)[:90]
                self.counts["refusals"][reason] = self.counts["refusals"].get(reason, 0) + 1
                if "Traceback" in err or len(other) != 1 or not other[0].startswith(f"emotion {cmd}: error: "):
                    self.violation(step, "exit2_format", f"exit 2 without exactly one error line {where}: "
                                   + " | ".join(other[-6:]))
            elif run.rc == 130:
                if run.signal_sent != "SIGINT":
                    self.violation(step, "exit_code", f"exit 130 without a SIGINT {where}")
                elif "Traceback" in err or not lines or lines[-1] != f"emotion {cmd}: interrupted" \
                        or sum("interrupted" in line for line in lines) != 1:
                    self.violation(step, "sigint_format", f"after SIGINT: {' | '.join(other[-6:])} {where}")
            elif run.rc == -signal.SIGKILL and run.signal_sent == "SIGKILL":
                pass
            elif run.rc == -signal.SIGINT and run.signal_sent == "SIGINT" and not _DONE.search(err) \
                    and not any(line.startswith(f"emotion {cmd}: error: ") for line in other):
                # Died of the Ctrl-C itself, before the run had ended: in the interpreter's start-up, before
                # cli.main put its handler in, or on the way out. Like a kill -9, what decides is the data:
                # nothing lost, no partial output (check_all_or_nothing and check() after every step).
                self.counts["sigint_deaths"] += 1
            elif run.rc == -signal.SIGINT and run.signal_sent == "SIGINT" and \
                    (_DONE.search(err) or any(line.startswith(f"emotion {cmd}: error: ") for line in other)):
                # Ctrl-C after the run had finished (or been refused), while the interpreter shuts down
                # (TensorFlow and Beam tear down for a second or two): cli.main has put the default
                # handler back, so the process dies of the signal with no line.
                self.violation(step, "sigint_at_exit", f"{cmd} had ended, then died of the SIGINT while exiting "
                               f"(exit -2, no 'interrupted' line) {where}")
            elif run.signal_sent == "timeout":
                self.violation(step, "hang", f"{cmd} ran past {RUN_TIMEOUT_S}s {where}")
            else:
                tail = " | ".join(other[-4:])
                # A write the fault made fail, surfacing as a traceback: the data stayed safe (the
                # other checks say so), but the exit is not one line.
                kind = "exit_code_io" if run.rc == 1 and step.fault.startswith(("readonly", "staging")) and \
                    _IO_ERROR.search(err) else "exit_code"
                self.violation(step, kind, f"{cmd} exited {run.rc} (signal sent: {run.signal_sent or 'none'}) "
                               f"{where}: {tail}")
            if run.rc == 2 and "is in use by run" in err and step.pair_argv is not None:
                self.counts["pairs"]["refusals naming the holder"] = self.counts["pairs"].get(
                    "refusals naming the holder", 0) + 1
                named = re.search(r"is in use by run \S+ \(pid (\w+)", err)
                others = {r.popen.pid for r in runs if r is not run}
                if not named or not named.group(1).isdigit() or int(named.group(1)) not in others:
                    self.violation(step, "holder", f"refused naming pid {named.group(1) if named else '?'}, the "
                                   f"other run is pid {sorted(others)} {where}")
        # An attacked root: a run without --overwrite into it must not succeed.
        for run in runs:
            if "--overwrite" in run.argv:
                continue
            for key in self._roots_of(run.argv):
                if key in self.attack_files:
                    if run.rc == 0:
                        self.violation(step, "attack", f"{run.stage} into {key} succeeded although "
                                       f"{self.attack_files[key].relative_to(self.w.parent)} (a user's file under a "
                                       "name it owns) is there and --overwrite was not given")
                    elif run.rc == 2 and str(self.attack_files[key].relative_to(self.w[key])) in run.stderr:
                        self.counts["attack_refusals"] += 1

    # ------------------------------------------------------------------ invariants

    def check(self, step: Step) -> None:
        self.counts["checks"] += 1
        w = self.w
        for path, data in self.planted.items():
            if path.is_symlink() or not path.is_file():
                self.violation(step, "user_file", f"{path} is gone")
            elif path.read_bytes() != data:
                self.violation(step, "user_file", f"{path} was changed")
        if snapshot(w.raw) != self.raw_snapshot:
            self.violation(step, "outside", f"the input {w.raw} changed")
        if snapshot(w.outside) != self.outside_snapshot:
            self.violation(step, "outside", f"{w.outside} changed")
        extra = sorted(set(os.listdir(w.parent)) - self.parent_allowed)
        if extra:
            self.violation(step, "outside", f"new entries in the parent folder: {extra}")
        for folder in (w.cwd, w.cwd2):
            if os.listdir(folder):
                self.violation(step, "outside", f"written into the runs' working folder: {os.listdir(folder)}")
        for key, stage in OUTPUT_ROOTS.items():
            if key not in self.broken:
                self._check(step, key, self.check_output, key, stage)
        self._check(step, "table", self.check_table)
        self._check(step, "model", self.check_model)

    def _check(self, step: Step, key: str, fn, *args) -> None:
        try:
            problems = fn(*args) if args else fn()
        except Exception as exc:  # a check that cannot even read the folder
            problems = [("check", f"{type(exc).__name__}: {str(exc)[:300]}")]
        for kind, detail in problems:
            self.violation(step, kind, f"{self.w[key].name}: {detail}")

    def _strays(self, key: str, root: pathlib.Path, owned: set[str]) -> list[str]:
        planted = {p.relative_to(root).parts[0] for p in self.planted if root in p.parents}
        return sorted(n for n in os.listdir(root) if n not in owned and n not in planted)

    def check_output(self, key: str, stage: str) -> list[tuple[str, str]]:
        root = self.w[key]
        problems = []
        if not root.is_dir():
            return problems
        names = STAGE_NAMES[stage]
        manifest_path = root / run_manifest.MANIFEST
        manifest = json.loads(manifest_path.read_bytes()) if manifest_path.is_file() else None
        state = manifest.get("state") if manifest else None
        if self.last_ok.get(key):
            if state != "complete":
                problems.append(("manifest", f"the last run exited 0 but _run.json says {state!r}"))
            left = [n for n in (run_manifest.STAGING, run_manifest.LOCK) if (root / n).exists() or (root / n).is_symlink()]
            strays = self._strays(key, root, {*names, run_manifest.MANIFEST})
            if left or strays:
                problems.append(("left_behind", f"after a successful run: {left + strays}"))
        if state == "complete":
            try:
                assert_manifest_lists_exactly_its_files(root, names)
            except AssertionError as exc:
                problems.append(("manifest", f"_run.json does not list exactly its files: {str(exc)[:800]}"))
                return problems
            fingerprint = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
            if self.loaded.get(key) != fingerprint:
                problems += [("load", p) for p in LOADERS[stage](root)]
                if not problems:
                    self.loaded[key] = fingerprint
        return problems

    def check_table(self) -> list[tuple[str, str]]:
        import pyarrow.parquet as pq

        root = self.w["table"]
        problems = []
        if not root.is_dir():
            return problems
        if self.last_ok.get("table"):
            left = [n for n in (claim.STAGING, claim.LOCK) if (root / n).exists() or (root / n).is_symlink()]
            strays = self._strays("table", root, {claim.RUNS, claim.BIGQUERY, claim.MANIFEST}
                                  | {p.name for p in root.glob("model_version=*") if p.is_dir()})
            if left or strays:
                problems.append(("left_behind", f"after a successful run: {left + strays}"))
            listed = sorted(json.loads((root / claim.MANIFEST).read_text())["files"]) \
                if (root / claim.MANIFEST).is_file() else None
            held = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink()
                          and claim.reserved(str(p.relative_to(root))) and p.name != claim.MANIFEST
                          and p not in self.planted)
            if listed != held:
                problems.append(("table", f"_table.json does not list exactly the table's files: missing "
                                 f"{sorted(set(held) - set(listed or []))[:4]}, listed but absent "
                                 f"{sorted(set(listed or []) - set(held))[:4]}"))
        partitions = {str(p) for p in root.glob("model_version=*/run_date=*/run_id=*")}
        rows = {}
        for path in sorted((root / claim.RUNS).glob("*.parquet")) if (root / claim.RUNS).is_dir() else []:
            try:
                row = claim.read_run(str(root), path.stem)
                rows[path.stem] = (row, claim.run_partition(str(root), row))
            except Exception as exc:
                problems.append(("table", f"runs row {path.name} unreadable: {exc}"))
        for run_id, (row, partition) in rows.items():
            if partition not in partitions:
                problems.append(("table", f"runs row {run_id} has no partition ({partition} missing)"))
                continue
            try:
                n = pq.ParquetDataset(partition).read().num_rows
            except Exception as exc:
                problems.append(("table", f"partition of {run_id} unreadable: {exc}"))
                continue
            if n != row["predicted"]:
                problems.append(("table", f"partition of {run_id} holds {n} rows, its runs row says "
                                          f"{row['predicted']}"))
        for partition in sorted(partitions - {p for _, p in rows.values()}):
            problems.append(("table", f"partition {os.path.relpath(partition, root)} has no runs row"))
        return problems

    def check_model(self) -> list[tuple[str, str]]:
        root = self.w["model"]
        problems = []
        if not root.is_dir():
            return problems
        manifest_path = root / ownership.MANIFEST
        manifest = json.loads(manifest_path.read_bytes()) if manifest_path.is_file() else None
        state = manifest.get("state") if manifest else None
        if self.last_ok.get("model"):
            if state != "complete":
                problems.append(("manifest", f"the last training exited 0 but _train.json says {state!r}"))
            left = [ownership.LOCK] if (root / ownership.LOCK).exists() else []
            strays = self._strays("model", root, {*ownership.NAMES, ownership.MANIFEST})
            if left or strays:
                problems.append(("left_behind", f"after a successful training: {left + strays}"))
        if state in ("complete", "failed"):
            present = ownership.present(str(root))
            if sorted(manifest.get("files", [])) != present:
                listed = set(manifest.get("files", []))
                problems.append(("manifest", f"_train.json ({state}) does not list exactly its files: missing "
                                 f"{sorted(set(present) - listed)[:5]}, listed but absent "
                                 f"{sorted(listed - set(present))[:5]}"))
        if state == "complete" and (root / "metadata.json").exists():
            fingerprint = hashlib.sha256(manifest_path.read_bytes() + (root / "metadata.json").read_bytes()).hexdigest()
            if self.loaded.get("model") != fingerprint:
                found = load_model(root)
                problems += [("load", p) for p in found]
                if not found:
                    self.loaded["model"] = fingerprint
        return problems

    # ------------------------------------------------------------------ report

    def report(self, seconds: float) -> dict:
        return {"seed": self.seed, "steps_planned": self.n_steps, "seconds": round(seconds, 1),
                "attacked": self.attacked, **self.counts, "violations": self.violations, "step_log": self.records,
                "notes": self.notes}


# =========================================================================== loaders


def load_predict(root: pathlib.Path) -> list[str]:
    import pyarrow.parquet as pq

    problems = []
    summary = json.loads((root / "summary.json").read_text())
    t = summary["totals"]
    if t["matched"] != t["predicted"] + t["rejected"] + t["skipped_non_data"] or not t.get("balanced"):
        problems.append(f"summary.json totals do not balance: {t}")
    n = pq.ParquetDataset(str(root / "predictions")).read().num_rows
    if n != t["predicted"]:
        problems.append(f"predictions/ holds {n} rows, summary.json says {t['predicted']} predicted")
    rejected = root / "rejected"
    if rejected.is_dir() and any(rejected.iterdir()):
        r = pq.ParquetDataset(str(rejected)).read().num_rows
        if r != t["rejected"]:
            problems.append(f"rejected/ holds {r} rows, summary.json says {t['rejected']}")
    json.loads((root / "evaluation" / "metrics.json").read_text())
    return problems


def tfrecord_count(path: pathlib.Path) -> int:
    """Records in a TFRecord file, from its framing (length, crc, data, crc); ValueError if it is cut."""
    data, n, at = path.read_bytes(), 0, 0
    while at < len(data):
        if at + 12 > len(data):
            raise ValueError(f"{path.name}: a cut record header at byte {at}")
        length = struct.unpack("<Q", data[at:at + 8])[0]
        at += 12 + length + 4
        if at > len(data):
            raise ValueError(f"{path.name}: a cut record at byte {at}")
        n += 1
    return n


def load_ingest(root: pathlib.Path) -> list[str]:
    import pyarrow.parquet as pq

    problems = []
    stats = json.loads((root / "stats.json").read_text())
    t = stats["totals"]
    if t["matched"] != t["written"] + t["rejected"] + t["skipped_non_data"] or not t.get("balanced"):
        problems.append(f"stats.json totals do not balance: {t}")
    records = sum(tfrecord_count(p) for p in sorted((root / "tfrecords").glob("*.tfrecord")))
    if records != t["written"]:
        problems.append(f"tfrecords/ holds {records} records, stats.json says {t['written']} written")
    rejected = root / "rejected"
    if rejected.is_dir() and any(rejected.iterdir()):
        r = pq.ParquetDataset(str(rejected)).read().num_rows
        if r != t["rejected"]:
            problems.append(f"rejected/ holds {r} rows, stats.json says {t['rejected']}")
    return problems


def load_compare(root: pathlib.Path) -> list[str]:
    import pyarrow.parquet as pq

    summary = json.loads((root / "compare" / "comparison.json").read_text())
    for name in ("agreement", "per_class", "disagreements"):
        pq.read_table(root / "compare" / f"{name}.parquet")
    manifest = json.loads((root / run_manifest.MANIFEST).read_text())
    if manifest.get("counts", {}).get("images_in_both") != summary.get("images_in_both"):
        return [f"comparison.json says {summary.get('images_in_both')} images in both, _run.json "
                f"{manifest.get('counts')}"]
    return []


def load_model(root: pathlib.Path) -> list[str]:
    if "tensorflow" not in sys.modules:
        from model.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()  # without TensorFlow's start-up lines on the harness's stderr
    from model import export

    try:
        model, metadata = export.load(str(root))
    except Exception as exc:
        return [f"model.export.load: {type(exc).__name__}: {str(exc)[:300]}"]
    if metadata.get("model_version", "").split("-")[0] != model.name:
        return [f"metadata.json names {metadata.get('model_version')}, the model is {model.name}"]
    return []


LOADERS = {"predict": load_predict, "ingest": load_ingest, "compare": load_compare}


# =========================================================================== entry points


def run_seed(base: pathlib.Path, seed: int, steps: int, budget_s: float | None = None, log=print,
             keep: bool = False) -> dict:
    """One seed's sequence in a fresh world under base/seed-<seed>; its report. The world is removed
    afterwards unless keep (or a violation) says otherwise."""
    world = pathlib.Path(base) / f"seed-{seed}"
    if world.exists():
        _unlock_tree(world)
        shutil.rmtree(world)
    harness = Harness(world, seed, steps, budget_s=budget_s, log=log)
    report = harness.run()
    report["world"] = str(world)
    if not keep and not report["violations"]:
        _unlock_tree(world)
        shutil.rmtree(world, ignore_errors=True)
    return report


def _unlock_tree(path: pathlib.Path) -> None:
    """chattr -i on everything under path (a harness interrupted between a fault and its undo)."""
    subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)


def summarize(reports: list[dict]) -> dict:
    total: dict = {"seeds": len(reports), "steps": 0, "runs": 0, "stages": {}, "faults": {}, "faults_delivered": {},
                   "exit_codes": {}, "pairs": {}, "refusals": {}, "attack_refusals": 0, "stale_lock_takeovers": 0,
                   "spellings": {}, "kills": 0, "kills_survived": 0, "sigint_deaths": 0, "recovery_refusals": {},
                   "violations_by_kind": {}, "violations": []}
    for r in reports:
        total["steps"] += r["steps"]
        total["runs"] += r["runs"]
        total["attack_refusals"] += r["attack_refusals"]
        total["stale_lock_takeovers"] += r.get("stale_lock_takeovers", 0)
        total["kills"] += r.get("kills", 0)
        total["kills_survived"] += r.get("kills_survived", 0)
        total["sigint_deaths"] += r.get("sigint_deaths", 0)
        for field in ("stages", "faults", "faults_delivered", "exit_codes", "pairs", "refusals", "spellings",
                      "recovery_refusals"):
            for k, v in r.get(field, {}).items():
                total[field][k] = total[field].get(k, 0) + v
        for v in r["violations"]:
            total["violations_by_kind"][v["kind"]] = total["violations_by_kind"].get(v["kind"], 0) + 1
            total["violations"].append(v)
    return total


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
