"""The fault harness in CI (issue 17 item 8): one fixed seed, a sequence of real `emotion` runs with
faults (SIGKILL, SIGINT, read-only roots, files and folders, a file in the way of _staging/, two runs on
one root at once) and every data-safety invariant checked after every step. See tests/fault_harness.py;
bench/fault_soak.py runs the same over many seeds.

Sized for about 2 minutes on 2 cores: the sequence stops starting steps after BUDGET_S. A violation
fails the test with the seed, the step, the command and the line that reproduces it.

KNOWN lists violations the product still has (reported, not yet fixed): they make the test xfail,
naming them, instead of failing it; any other violation fails it. Remove an entry once it is fixed.
"""

from __future__ import annotations

import json
import pathlib

import pytest

import fault_harness
from fault_harness import FAULTS, STAGES, World, plan

SEED = 6
STEPS = 16
BUDGET_S = 110

# kind -> what it is. Empty: every finding of the harness so far is fixed. The last three were
# exit_code_io (a write made to fail ended in a traceback and exit 1; now one line and exit 2),
# sigint_at_exit (Ctrl-C while a finished run exits; now ignored once main has returned) and
# killed_in_commit (kill -9 inside the commit left the output half old, half new; the commit is now
# journaled and the next run rolls it back first -- the harness does what that run does, outputs.recover,
# before it checks all-or-nothing). Also fixed before: rolled_back_after_commit.
KNOWN: dict[str, str] = {}


def test_the_plan_is_the_seeds_alone_and_covers_every_stage_and_fault(tmp_path):
    world = World(tmp_path)
    steps, attacked = plan(SEED, STEPS, world)
    again, _ = plan(SEED, STEPS, world)
    assert [s.command for s in steps] == [s.command for s in again]
    assert [(s.fault, s.fraction, s.pair_delay) for s in steps] == [(s.fault, s.fraction, s.pair_delay) for s in again]
    assert {s.stage for s in steps} == set(STAGES)
    assert {s.fault for s in steps} >= set(FAULTS)
    assert len(attacked) == 2
    assert any("--table" in s.argv and "--run-id" in s.argv for s in steps)  # a re-used run id
    assert any("--table" not in s.argv for s in steps if s.stage == "predict")
    # Another seed, another sequence.
    assert [s.command for s in plan(SEED + 1, STEPS, world)[0]] != [s.command for s in steps]


def test_a_seeded_sequence_of_runs_with_faults_keeps_every_invariant(tmp_path):
    lines = []
    report = fault_harness.run_seed(tmp_path, SEED, STEPS, budget_s=BUDGET_S, log=lines.append, keep=True)
    summary = {k: v for k, v in report.items() if k not in ("step_log", "violations")}
    print("\n".join(lines))
    print(json.dumps(summary, indent=1))
    assert report["steps"] >= 6, f"only {report['steps']} steps ran within {BUDGET_S}s"
    assert report["checks"] == report["steps"]
    unknown = [v for v in report["violations"] if v["kind"] not in KNOWN]
    assert not unknown, "\n".join(
        f"[{v['kind']}] step {v['step']} ({v['fault']}): {v['detail'][:800]}\n  command: {v['command']}\n"
        f"  reproduce: {v['reproduce']}" for v in unknown)
    known = sorted({v["kind"] for v in report["violations"]})
    if known:
        pytest.xfail("known product findings: " + "; ".join(
            f"{k} ({KNOWN[k]}) at steps {[v['step'] for v in report['violations'] if v['kind'] == k]}"
            for k in known))
    assert pathlib.Path(report["world"]).exists()
