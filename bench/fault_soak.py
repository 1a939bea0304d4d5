"""Fault soak: the fault harness (tests/fault_harness.py) over many seeds.

    python bench/fault_soak.py --seeds 20 --steps 12 --json /tmp/soak.json [--first-seed 1000] [--budget-s 600] [--jobs 2]

Each seed gets a fresh world (its own roots, user files and input) and a sequence of --steps steps of
real `emotion` runs with faults (SIGKILL, SIGINT, read-only roots/files/folders, a file in the way of
_staging/, two runs on one root at once, SIGKILL/SIGINT from another process at random times), each run
started from another working folder with another spelling of its roots, checked after every step. The JSON holds, per seed and in
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
    p.add_argument("--jobs", type=int, default=1, help="seeds run side by side (each in its own process)")
    args = p.parse_args(argv)

    base = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="fault-soak-"))
    base.mkdir(parents=True, exist_ok=True)
    started = time.time()
    deadline = started + args.budget_s if args.budget_s is not None else None
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    reports = []
    if args.jobs > 1:  # seeds side by side: concurrent runs on different worlds, as on a shared machine
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            for report in pool.map(_seed, [(base, seed, args.steps, args.keep, args.quiet, deadline) for seed in seeds]):
                if report is not None:
                    reports.append(report)
                    _print_seed(report)
    else:
        for seed in seeds:
            report = _seed((base, seed, args.steps, args.keep, args.quiet, deadline))
            if report is None:
                print(f"budget of {args.budget_s:.0f}s spent: stopping after {len(reports)} seed(s)", flush=True)
                break
            reports.append(report)
            _print_seed(report)
    total = fault_harness.summarize(reports)
    total["seconds"] = round(time.time() - started, 1)
    total["workdir"] = str(base)
    out = {"total": total, "seeds": reports, "argv": sys.argv[1:] if argv is None else argv}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in total.items() if k != "violations"}, indent=2))
    print(f"survived: {total['steps']} steps over {total['seeds']} seed(s), {total['kills_survived']} of "
          f"{total['kills']} kills (SIGKILL/SIGINT delivered) with every invariant held; "
          f"{len(total['violations'])} violation(s)")
    for v in total["violations"]:
        print(f"VIOLATION seed {v['seed']} step {v['step']} [{v['kind']}] {v['detail'][:300]}\n"
              f"  command: {v['command']}\n  reproduce: {v['reproduce']}")
    return 1 if total["violations"] else 0


def _seed(job):
    """One seed's report, or None when the budget's deadline has passed before it starts."""
    base, seed, steps, keep, quiet, deadline = job
    if deadline is not None and time.time() > deadline:
        return None
    log = (lambda line: line.startswith("VIOLATION") and print(line, flush=True)) if quiet else \
        (lambda line: print(line, flush=True))
    return fault_harness.run_seed(base, seed, steps, log=log, keep=keep)


def _print_seed(report: dict) -> None:
    print(f"seed {report['seed']}: {report['steps']} steps, {report['runs']} runs, {report.get('kills', 0)} kills, "
          f"{len(report['violations'])} violation(s) in {report['seconds']}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
