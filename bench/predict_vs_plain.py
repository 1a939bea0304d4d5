"""emotion predict vs a plain process doing the same work (bench/plain_predict_loop.py: OpenCV reads,
the same preprocessing, batched model calls with the same test-time augmentation), side by side.

    PYTHONPATH=bench python bench/predict_vs_plain.py --input /tmp/fer2013/test --repeats 2 [--tta flip]

Whole processes, timed from outside (imports and model load included), alternating plain/Beam so both
see the same machine noise. The throughput ratio is plain seconds / Beam seconds (1.0: Beam costs
nothing on top of the model).
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
    p.add_argument("--tta", default="flip")
    p.add_argument("--beam-args", default="", help="extra Beam options, e.g. '--direct_num_workers 2 ...'")
    args = p.parse_args()
    scratch = pipeline_gate([])  # every remove goes through the gate (model/gate/)
    tmp = scratch.make_temp_dir(prefix="predict-bench-")
    runs = {"plain": [], "beam": []}
    for i in range(args.repeats):
        runs["plain"].append(measure([sys.executable, "bench/plain_predict_loop.py", "--input", args.input,
                                      "--output", f"{tmp}/plain.npy", "--tta", args.tta]))
        runs["beam"].append(measure([sys.executable, "-m", "beam_pipelines.cli", "predict", "--input", args.input,
                                     "--output", f"{tmp}/beam", "--tta", args.tta, *args.beam_args.split()]))
    with open(f"{tmp}/beam/summary.json") as f:
        summary = json.load(f)
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in runs.items()}
    print(json.dumps({
        "input": args.input,
        "images": summary["totals"]["predicted"],
        "tta": args.tta,
        "plain_seconds": [r["seconds"] for r in runs["plain"]],
        "beam_seconds": [r["seconds"] for r in runs["beam"]],
        "throughput_beam_over_plain": round(med["plain"] / med["beam"], 2),
        "plain_peak_rss_mib": max(r["peak_rss_mib"] for r in runs["plain"]),
        "beam_peak_rss_mib": max(r["peak_rss_mib"] for r in runs["beam"]),
    }, indent=2))
    scratch.remove_temp_dir(tmp)


if __name__ == "__main__":
    main()
