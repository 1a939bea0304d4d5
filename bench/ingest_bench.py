"""Ingest benchmark: Beam ingest (DirectRunner) vs a plain single-process loop, side by side.

    PYTHONPATH=bench python bench/ingest_bench.py --input /tmp/fer2013 --repeats 3   # from the repo root

Whole processes are timed from outside (imports included), alternating plain/Beam so both
see the same machine noise; peak memory is the process tree's. Prints a JSON result with
both wall times, their ratio and peak memory, and what ingest found in the data.
"""

import argparse
import json
import statistics
import sys

from _measure import measure

from beam_pipelines.base.storage import pipeline_gate


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--beam-args", default="", help="extra Beam options, e.g. '--direct_num_workers 2 ...'")
    args = p.parse_args()
    scratch = pipeline_gate([])  # every remove goes through the gate (model/gate/)
    tmp = scratch.make_temp_dir(prefix="ingest-bench-")
    runs = {"plain": [], "beam": []}
    # One untimed pass warms the page cache for both.
    measure([sys.executable, "bench/plain_ingest_loop.py", "--input", args.input, "--output", f"{tmp}/warm"])
    for _ in range(args.repeats):
        runs["plain"].append(measure([sys.executable, "bench/plain_ingest_loop.py", "--input", args.input,
                                      "--output", f"{tmp}/plain"]))
        runs["beam"].append(measure([sys.executable, "-m", "beam_pipelines.cli", "ingest", "--input", args.input,
                                     "--output", f"{tmp}/beam", *args.beam_args.split()]))
    with open(f"{tmp}/beam/stats.json") as f:
        stats = json.load(f)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    result = {
        "input": args.input,
        "images": stats["totals"]["matched"],
        "plain_seconds": [r["seconds"] for r in runs["plain"]],
        "beam_seconds": [r["seconds"] for r in runs["beam"]],
        "ratio_beam_over_plain": round(med["beam"] / med["plain"], 2),
        "ratio_per_pair": [round(b["seconds"] / p["seconds"], 2) for p, b in zip(runs["plain"], runs["beam"])],
        "plain_peak_rss_mib": max(r["peak_rss_mib"] for r in runs["plain"]),
        "beam_peak_rss_mib": max(r["peak_rss_mib"] for r in runs["beam"]),
        "ingest_found": {k: stats[k] for k in ("totals", "written_per_split", "rejected", "duplicates", "warnings")},
    }
    print(json.dumps(result, indent=2))
    scratch.remove_temp_dir(tmp)


if __name__ == "__main__":
    main()
