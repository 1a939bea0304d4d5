"""The shipped model's two int8 files side by side: dynamic-range (the export's engine file) and full-integer
(activation ranges calibrated on train images), judged by the bar model/quantize.py holds every engine file
to (argmax agreement with the float model on val, one view) and timed in one run, on the same pixels.

    .venv/bin/python bench/int8_modes.py --model shipped --data /tmp/fer-out --calibration 512 2000 \\
        --repeats 2 --threads 2 --json /tmp/int8_modes.json

Prints the CPU flags that matter to the int8 kernels (avx2, avx512*, vnni, amx) first. Test is never
read: calibration is on train, agreement on val, timing on val pixels. Timing: --timing-images val images in
batches of --batch-size, one untimed batch first, then best of --repeats passes, the files taking turns
within each repeat so that other load on the machine falls on both alike; the ratio is of images per second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from model import engines, quantize  # noqa: E402


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")) or "vnni" in f)


def images_per_second(engine, pixels: np.ndarray, batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(pixels), batch):
        engine.probabilities(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - started)


def main(argv=None) -> dict:
    from model.loading import load

    p = argparse.ArgumentParser(prog="bench/int8_modes.py")
    p.add_argument("--model", default="shipped")
    p.add_argument("--data", default="/tmp/fer-out")
    p.add_argument("--calibration", type=int, nargs="+", default=[quantize.CALIBRATION_IMAGES],
                   help="train images to calibrate on (one full-integer file per count)")
    p.add_argument("--timing-images", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args(argv)

    from model import resolve_model_dir

    print("cpu flags:", " ".join(cpu_flags()) or "unknown", flush=True)
    model, metadata = load(resolve_model_dir(args.model))
    val = quantize.split_pixels(args.data, "val")
    files = {"dynamic-range": quantize.convert_int8(model)}
    for n in args.calibration:
        files[f"full-integer ({n} train images)"] = quantize.convert_int8(
            model, quantize.split_pixels(args.data, "train", n, seed=0))
    result = {"model": metadata["model_version"], "cpu_flags": cpu_flags(), "threads": args.threads, "files": {}}
    for name, content in files.items():
        check = quantize.agreement(model, content, val)
        result["files"][name] = {"bytes": len(content), **check,
                                 "meets_bar": check["argmax_agreement"] >= quantize.AGREEMENT_FLOOR}
        print(f"{name:<32} val agreement {check['argmax_agreement']:.4f}  max |dp| "
              f"{check['max_probability_difference']:.3f}  mean |dp| {check['mean_probability_difference']:.4f}  "
              f"{len(content):,} bytes", flush=True)
    timing = val[: args.timing_images]
    runners = {name: engines.LiteRTEngine(content, threads=args.threads) for name, content in files.items()}
    for engine in runners.values():
        engine.probabilities(timing[: args.batch_size])  # plans the interpreters: not timed
    best = {name: 0.0 for name in runners}
    for repeat in range(args.repeats):
        order = list(runners)[repeat % len(runners):] + list(runners)[: repeat % len(runners)]
        for name in order:
            best[name] = max(best[name], images_per_second(runners[name], timing, args.batch_size))
    reference = best["dynamic-range"]
    for name, speed in best.items():
        result["files"][name]["images_per_second"] = round(speed, 1)
        result["files"][name]["speed_vs_dynamic_range"] = round(speed / reference, 3)
        print(f"{name:<32} {speed:8.1f} images/s  {speed / reference:.2f}x dynamic-range "
              f"(best of {args.repeats}, {len(timing)} val images, batch {args.batch_size}, {args.threads} threads)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
