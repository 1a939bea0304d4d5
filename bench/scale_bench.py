"""Scale benchmark: ingest of a 1x and a 10x FER2013 archive with the multi-process DirectRunner.

    PYTHONPATH=bench python bench/scale_bench.py --input /tmp/fer2013 --factor 10 --work /tmp/scale

The 10x archive is made by copying every image `factor` times with small perturbations
(a brightness offset and a one-pixel shift that differ per copy), so the copies are distinct
images and nothing collapses in de-duplication. Reports wall time and peak memory of the
whole process tree for both sizes, side by side, and the per-image rates.
"""

import argparse
import json
import os
import sys

import cv2
import numpy as np
from _measure import measure


def make_archive(src: str, dst: str, factor: int) -> int:
    done_marker = os.path.join(dst, f".complete-{factor}")
    if os.path.exists(done_marker):
        return sum(len(f) for _, _, f in os.walk(dst)) - 1
    n = 0
    for dirpath, _, files in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        for name in files:
            data = np.fromfile(os.path.join(dirpath, name), np.uint8)
            gray = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
            for copy in range(factor):
                out_dir = os.path.join(dst, rel)
                os.makedirs(out_dir, exist_ok=True)
                img = gray
                if copy:
                    img = np.roll(gray, shift=(copy % 3) - 1, axis=copy % 2)
                    img = np.clip(img.astype(np.int16) + (copy - factor // 2), 0, 255).astype(np.uint8)
                cv2.imwrite(os.path.join(out_dir, f"c{copy}_{os.path.splitext(name)[0]}.png"), img)
                n += 1
    open(done_marker, "w").close()
    return n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--factor", type=int, default=10)
    p.add_argument("--work", default="/tmp/scale")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    big = os.path.join(args.work, f"x{args.factor}")
    n_big = make_archive(args.input, big, args.factor)
    beam = ["--runner", "DirectRunner", "--direct_num_workers", str(args.workers),
            "--direct_running_mode", "multi_processing"]
    results = {}
    for name, src in (("x1", args.input), (f"x{args.factor}", big)):
        out = os.path.join(args.work, f"out-{name}")
        r = measure([sys.executable, "-m", "beam_pipelines.cli", "ingest", "--input", src, "--output", out, *beam])
        with open(os.path.join(out, "stats.json")) as f:
            stats = json.load(f)
        results[name] = {
            "images": stats["totals"]["matched"],
            "written": stats["totals"]["written"],
            "num_shards": stats["num_shards"],
            "seconds": r["seconds"],
            "images_per_s": round(stats["totals"]["matched"] / r["seconds"], 1),
            "peak_rss_mib": r["peak_rss_mib"],
        }
    one, big_r = results["x1"], results[f"x{args.factor}"]
    results["time_ratio"] = round(big_r["seconds"] / one["seconds"], 2)
    results["memory_ratio"] = round(big_r["peak_rss_mib"] / one["peak_rss_mib"], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
