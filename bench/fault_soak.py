"""Fault soak: the fault harness (tests/fault_harness.py) over many seeds.

    python bench/fault_soak.py --seeds 20 --steps 12 --json /tmp/soak.json [--first-seed 1000] [--budget-s 600]

Each seed gets a fresh world (its own roots, user files and input) and a sequence of --steps steps of
real `emotion` runs with faults (SIGKILL, SIGINT, read-only roots/files/folders, a file in the way of
_staging/, two runs on one root at once), checked after every step. The JSON holds, per seed and in
total, the steps run, the runs, the steps of each stage and fault kind (and how many signals were
delivered before the run ended on its own), the exit codes, the outcomes of the concurrent pairs, and
every invariant violation with its seed, step, command and the line that reproduces it:

    python bench/fault_soak.py --first-seed SEED --seeds 1 --steps STEP+1 --keep

(--keep leaves the world, with each run's stderr in its logs/ folder, for a look.) Exit 1 when any
violation was found. --budget-s stops starting new seeds once that many seconds have passed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

import fault_harness  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/fault_soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="how many seeds")
    p.add_argument("--first-seed", type=int, default=0, help="the first seed (then first+1, ...)")
    p.add_argument("--steps", type=int, default=12, help="steps per seed")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--workdir", default=None, help="where the worlds go (default: a fresh temp folder)")
    p.add_argument("--budget-s", type=float, default=None, help="start no new seed after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep every world (default: only those with violations)")
    p.add_argument("--quiet", action="store_true", help="print only violations and the totals")
    args = p.parse_args(argv)

    base = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="fault-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    log = (lambda line: line.startswith("VIOLATION") and print(line, flush=True)) if args.quiet else \
        (lambda line: print(line, flush=True))
    started = time.time()
    reports = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        if args.budget_s is not None and reports and time.time() - started > args.budget_s:
            print(f"budget of {args.budget_s:.0f}s spent: stopping after {len(reports)} seed(s)", flush=True)
            break
        report = fault_harness.run_seed(base, seed, args.steps, log=log, keep=args.keep)
        reports.append(report)
        print(f"seed {seed}: {report['steps']} steps, {report['runs']} runs, {len(report['violations'])} "
              f"violation(s) in {report['seconds']}s", flush=True)
    total = fault_harness.summarize(reports)
    total["seconds"] = round(time.time() - started, 1)
    total["workdir"] = str(base)
    out = {"total": total, "seeds": reports, "argv": sys.argv[1:] if argv is None else argv}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in total.items() if k != "violations"}, indent=2))
    for v in total["violations"]:
        print(f"VIOLATION seed {v['seed']} step {v['step']} [{v['kind']}] {v['detail'][:300]}\n"
              f"  command: {v['command']}\n  reproduce: {v['reproduce']}")
    return 1 if total["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
