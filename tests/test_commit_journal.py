"""A run killed inside its commit (kill -9, a lost Dataflow worker) is rolled back by the next run.

The commit moves a run's staged results into place one file at a time; a process killed halfway cannot
undo itself. Each step is journaled before it is taken (model/gate/ops.Transaction), and the next run
into the same output reads the journal, undoes what was done and puts _run.json back, before anything
else. These tests kill a real `emotion` process with os._exit (no clean-up, like SIGKILL) at chosen
steps of its commit and check that the next run finds the previous output byte for byte.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import REPO, SHIPPED_MODEL, make_split_tree
from test_gate import snapshot

from beam_pipelines import cli
from beam_pipelines.base import killed_runs
from beam_pipelines.base import manifest as run_manifest

# Runs `emotion ARGS` in a child whose commit dies at step DIE_AT (the N-th journaled move; "manifest":
# just before the final _run.json is written). os._exit: no finally, no atexit, no undo -- a kill.
DYING_RUN = """
import os, sys
from model.gate import ops
die_at = os.environ["DIE_AT"]
count = [0]
original_move, original_write = ops.Transaction._step_move, ops.Transaction.write_bytes
def step_move(self, src, dst):
    count[0] += 1
    if die_at == "before-" + str(count[0]):
        os._exit(137)
    original_move(self, src, dst)
    if die_at == "after-" + str(count[0]):
        os._exit(137)
def write_bytes(self, path, data):
    if die_at == "manifest" and path.endswith("_run.json"):
        os._exit(137)
    original_write(self, path, data)
ops.Transaction._step_move, ops.Transaction.write_bytes = step_move, write_bytes
original_prune = ops.Gate.remove_empty_dirs
def remove_empty_dirs(self, path, stop):
    if die_at == "cleanup" and path.rstrip("/").endswith("_staging"):
        os._exit(137)  # committed, its staging removed, the empty _staging/ not yet
    original_prune(self, path, stop)
ops.Gate.remove_empty_dirs = remove_empty_dirs
from beam_pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""


def dying_run(die_at: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "DIE_AT": die_at}
    return subprocess.run([sys.executable, "-c", DYING_RUN, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def committed(out: pathlib.Path) -> dict[str, bytes]:
    """The output's files, without the run's own bookkeeping (lock)."""
    return {k: v for k, v in snapshot(out).items() if k != run_manifest.LOCK}


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    """Two different raw trees: a first run's output, then the run that is killed."""
    base = tmp_path_factory.mktemp("journal")
    first, second = base / "first", base / "second"
    make_split_tree(first, per_class=2, splits=("train", "test"), seed=1)
    make_split_tree(second, per_class=3, splits=("train", "test"), seed=2)
    return first, second


@pytest.mark.parametrize("die_at", ["before-1", "after-1", "after-3", "before-6", "manifest"])
def test_an_ingest_killed_inside_its_commit_is_rolled_back_by_the_next_run(tmp_path, two_inputs, die_at, capsys):
    first, second = two_inputs
    out = tmp_path / "out"
    assert cli.main(["ingest", "--input", str(first), "--output", str(out), "--quiet"]) == 0
    before = committed(out)
    killed = dying_run(die_at, "ingest", "--input", str(second), "--output", str(out), "--quiet")
    assert killed.returncode == 137, killed.stderr[-2000:]
    manifest = json.loads((out / run_manifest.MANIFEST).read_text())
    assert manifest["state"] == "committing"  # the kill landed inside the commit
    assert (out / manifest["staging"] / run_manifest.JOURNAL).is_dir()
    if die_at != "before-1":
        assert committed(out) != before  # a mixed output, until the next run

    # The next run rolls it back first. A --dry_run-like refusal (a foreign file) still rolls back:
    # here the next run is refused for another reason and the output must already be whole again.
    (out / "tfrecords" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert cli.main(["ingest", "--input", str(second), "--output", str(out), "--quiet"]) == 2
    assert "no earlier run of this pipeline wrote" in capsys.readouterr().err
    (out / "tfrecords" / "notes.txt").unlink()
    assert committed(out) == before

    # And a run that goes through commits on top of the restored output.
    assert cli.main(["ingest", "--input", str(second), "--output", str(out), "--quiet"]) == 0
    after = json.loads((out / run_manifest.MANIFEST).read_text())
    assert after["state"] == "complete" and not (out / run_manifest.STAGING).exists()
    assert committed(out) != before


def test_a_roll_back_cut_short_is_finished_by_the_run_after(tmp_path, two_inputs):
    """Rolling back is idempotent: a second kill, during the roll-back itself, is recovered too."""
    first, second = two_inputs
    out = tmp_path / "out"
    assert cli.main(["ingest", "--input", str(first), "--output", str(out), "--quiet"]) == 0
    before = committed(out)
    assert dying_run("after-4", "ingest", "--input", str(second), "--output", str(out)).returncode == 137
    # The roll-back dies after undoing two steps (the moves back run through Gate.move).
    cut_short = """
import os, sys
from model.gate import ops
count = [0]
original = ops.Gate.move
def move(self, src, dst):
    count[0] += 1
    original(self, src, dst)
    if count[0] == 2:
        os._exit(137)
ops.Gate.move = move
from beam_pipelines.cli import main
sys.exit(main(sys.argv[1:]))
"""
    again = subprocess.run([sys.executable, "-c", cut_short, "ingest", "--input", str(second), "--output", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 137, again.stderr[-2000:]
    assert json.loads((out / run_manifest.MANIFEST).read_text())["state"] == "committing"
    # A plain run rolls back the rest, then commits: the previous files were whole in between.
    assert cli.main(["ingest", "--input", str(first), "--output", str(out), "--quiet"]) == 0
    assert committed(out).keys() == before.keys()
    assert {k: v for k, v in committed(out).items() if k.startswith("tfrecords/")} == \
        {k: v for k, v in before.items() if k.startswith("tfrecords/")}


def test_a_journal_that_points_outside_the_output_is_refused_and_nothing_moves(tmp_path, two_inputs, capsys):
    """The journal is read back from disk: untrusted input, every path checked before any step is undone."""
    first, second = two_inputs
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    assert cli.main(["ingest", "--input", str(first), "--output", str(out), "--quiet"]) == 0
    assert dying_run("after-2", "ingest", "--input", str(second), "--output", str(out)).returncode == 137
    staging = out / json.loads((out / run_manifest.MANIFEST).read_text())["staging"]
    entry = {"kind": "move", "a": str(tmp_path / "stolen.txt"), "b": str(victim / "keep.txt"), "created": []}
    (staging / run_manifest.JOURNAL / "000099.json").write_text(json.dumps(entry))
    mixed = committed(out)
    capsys.readouterr()
    assert cli.main(["ingest", "--input", str(first), "--output", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert snapshot(victim) == {"keep.txt": b"precious"} and not (tmp_path / "stolen.txt").exists()
    assert committed(out) == mixed  # nothing undone: the refusal came first


def test_a_predict_killed_while_committing_into_output_and_table_is_rolled_back_in_both(tmp_path, capsys):
    raw, out, root = tmp_path / "raw", tmp_path / "preds", tmp_path / "table"
    make_split_tree(raw, per_class=1, splits=("test",))
    base = ["predict", "--input", str(raw), "--output", str(out), "--model", str(SHIPPED_MODEL), "--table", str(root),
            "--quiet"]
    assert cli.main([*base, "--run-id", "first"]) == 0
    before_out, before_table = committed(out), snapshot(root)
    killed = dying_run("manifest", *base, "--run-id", "second")  # every move taken, table ones too
    assert killed.returncode == 137, killed.stderr[-2000:]
    assert committed(out) != before_out or snapshot(root) != before_table
    # Without the table the roll-back cannot reach it: one line, nothing changed.
    mixed_out, mixed_table = committed(out), snapshot(root)
    capsys.readouterr()
    assert cli.main(["predict", "--input", str(raw), "--output", str(out), "--model", str(SHIPPED_MODEL),
                     "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--table" in err[0], err
    assert committed(out) == mixed_out and snapshot(root) == mixed_table
    # With it, both are rolled back before the run, which then commits as "third".
    assert cli.main([*base, "--run-id", "third"]) == 0
    runs = sorted(p.name for p in (root / "_runs").iterdir())
    assert runs == ["first.parquet", "third.parquet"], runs
    assert not list(root.rglob("run_id=second"))
    assert not (root / "_staging").exists() and not (out / run_manifest.STAGING).exists()


def test_a_run_killed_after_its_commit_during_its_clean_up_is_finished_by_the_next(tmp_path, two_inputs):
    """Killed with its results in place and _run.json complete, as it removed its empty _staging/: the
    output is the killed run's, whole; what is left is only the clean-up, which recover finishes."""
    first, second = two_inputs
    out = tmp_path / "out"
    assert cli.main(["ingest", "--input", str(first), "--output", str(out), "--quiet"]) == 0
    killed = dying_run("cleanup", "ingest", "--input", str(second), "--output", str(out))
    assert killed.returncode == 137, killed.stderr[-2000:]
    manifest = json.loads((out / run_manifest.MANIFEST).read_text())
    assert manifest["state"] == "complete" and (out / run_manifest.STAGING).is_dir()
    results = committed(out)
    assert killed_runs.recover(str(out)) is True
    assert not (out / run_manifest.STAGING).exists() and committed(out) == results
    assert killed_runs.recover(str(out)) is False  # nothing left to do
