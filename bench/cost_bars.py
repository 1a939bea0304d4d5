"""Cost per image: `emotion predict` against plain processes, whole processes alternated, best of N.

    PYTHONPATH=bench python bench/cost_bars.py shipped --input /tmp/fer2013/test --repeats 2
    PYTHONPATH=bench python bench/cost_bars.py fast --model /tmp/fast --input /tmp/fer10x --repeats 2 \
        --peer-dir /tmp/ferwheel

shipped: `emotion predict` with its defaults (the shipped model, its recommended flip TTA, the litert engine)
    against a plain Keras float32 process doing the same TTA (bench/plain_predict_loop.py --engine keras)
    and a plain process running the same engine (--engine litert: what Beam costs on top).
fast: `emotion predict --model MODEL` (a fast candidate, e.g. recipes/fast.toml's) against the peer's plain processes (bench/plain_peer_loop.py: its
    mini-Xception in Keras, and its own quantized .tflite) and a plain process running the fast model's
    engine with its TTA.

Each round runs every contender once, in rotated order, so machine noise hits all of them; a contender's
figure is its best round. Accuracy and macro-F1 come from what each process wrote (predict: its
summary.json, computed from predictions/*.parquet; plain loops: their .npy, scored against the folder
labels). Writes --json and prints a Markdown table with throughput ratios against the first baseline.
"""

import argparse
import json
import os
import sys

import numpy as np
from _measure import measure

from beam_pipelines.base.storage import pipeline_gate
from model.metrics import confusion, summarize
from schemas import LABELS, canonical_label

PY = sys.executable


def contenders(kind: str, args, tmp: str) -> dict[str, tuple[list[str], str]]:
    """name -> (command, where its result lands: a summary.json or an .npy)."""
    plain = [PY, "bench/plain_predict_loop.py", "--input", args.input]
    predict = [PY, "-m", "beam_pipelines.cli", "predict", "--input", args.input, "--quiet"]
    if kind == "shipped":
        return {
            "plain Keras float32, flip TTA": (plain + ["--output", f"{tmp}/k.npy", "--engine", "keras",
                                                       "--tta", "flip"], f"{tmp}/k.npy"),
            "plain LiteRT int8, flip TTA": (plain + ["--output", f"{tmp}/l.npy", "--engine", "litert",
                                                     "--tta", "flip"], f"{tmp}/l.npy"),
            "emotion predict (defaults)": (predict + ["--output", f"{tmp}/p", "--overwrite"],
                                           f"{tmp}/p/summary.json"),
        }
    peer = [PY, "bench/plain_peer_loop.py", "--input", args.input, "--peer-dir", args.peer_dir]
    with open(os.path.join(args.model, "metadata.json")) as f:
        tta = args.tta or json.load(f)["recommended_tta"]
    return {
        "peer mini-Xception, plain Keras": (peer + ["--output", f"{tmp}/pk.npy", "--engine", "keras"],
                                            f"{tmp}/pk.npy"),
        "peer quantized .tflite, plain": (peer + ["--output", f"{tmp}/pt.npy", "--engine", "tflite"],
                                          f"{tmp}/pt.npy"),
        f"plain LiteRT int8, fast model, {tta} TTA": (plain + ["--output", f"{tmp}/fl.npy", "--model", args.model,
                                                               "--engine", "litert", "--tta", tta], f"{tmp}/fl.npy"),
        f"emotion predict --model MODEL --tta {tta}": (predict + ["--output", f"{tmp}/pf", "--model", args.model,
                                                                  "--tta", tta, "--overwrite"],
                                         f"{tmp}/pf/summary.json"),
    }


def folder_labels(root: str) -> list[int | None]:
    """The label index of every file in the sorted walk the plain loops make (None: no class folder)."""
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)
    labels = []
    for path in paths:
        label = canonical_label(os.path.basename(os.path.dirname(path)))
        labels.append(LABELS.index(label) if label else None)
    return labels


def score(result_path: str, labels: list[int | None]) -> tuple[float, float, int]:
    if result_path.endswith(".json"):
        with open(result_path) as f:
            summary = json.load(f)
        return summary["accuracy"], summary["macro_f1"], summary["totals"]["predicted"]
    probs = np.load(result_path)
    if len(probs) != len(labels):  # a plain loop skips unreadable files: FER2013 has none
        raise RuntimeError(f"{result_path}: {len(probs)} rows for {len(labels)} files")
    known = [i for i, y in enumerate(labels) if y is not None]
    m = summarize(confusion(np.array([labels[i] for i in known]), probs[known].argmax(-1)))
    return m["accuracy"], m["macro_f1"], len(probs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["shipped", "fast"])
    p.add_argument("--input", required=True)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--peer-dir", default="/tmp/ferwheel")
    p.add_argument("--model", default="shipped", help="fast: the candidate to run (an exported model directory)")
    p.add_argument("--tta", default=None, help="fast: the candidate's TTA (default: its recommended one)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    scratch = pipeline_gate([])
    tmp = scratch.make_temp_dir(prefix="cost-bars-")
    runs = contenders(args.kind, args, tmp)
    names = list(runs)
    seconds = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds[name].append(measure(runs[name][0])["seconds"])
            print(f"round {r + 1}: {name}: {seconds[name][-1]:.1f} s", file=sys.stderr, flush=True)
    labels = folder_labels(args.input)
    rows = []
    for name in names:
        accuracy, macro_f1, images = score(runs[name][1], labels)
        best = min(seconds[name])
        rows.append({"contender": name, "seconds": seconds[name], "best_seconds": best, "images": images,
                     "images_per_s": round(images / best, 1), "accuracy": round(accuracy, 4),
                     "macro_f1": round(macro_f1, 4)})
    base = rows[0]["images_per_s"]
    print(f"| {args.kind}: {args.input} | images | seconds (each round) | images/s | vs {names[0]} | accuracy | macro-F1 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['contender']} | {row['images']:,} | {' / '.join(f'{s:.1f}' for s in row['seconds'])} | "
              f"{row['images_per_s']:,.0f} | {row['images_per_s'] / base:.2f}x | {row['accuracy']:.4f} | "
              f"{row['macro_f1']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    scratch.remove_temp_dir(tmp)


if __name__ == "__main__":
    main()
