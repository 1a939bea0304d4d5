"""Evaluate an exported model on ingest TFRecords, for every TTA mode.

    python -m model.evaluate --model model/shipped --data /tmp/fer2013-ingest [--splits val test] [--update-metadata]

Prints accuracy, macro-F1, per-class recall and the confusion matrix; with --update-metadata
writes the metrics and the TTA mode that is best on val into the model's metadata.json.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import tensorflow as tf

from model import data, metrics, tta
from schemas import LABELS


def evaluate_split(logits_fn, data_dir: str, split: str, image_size: int, tta_mode: str = "none") -> dict:
    """Metrics of logits_fn (a batch of (B, S, S, 1) pixels -> logits) on a whole split."""
    ys, ps = [], []
    for batch in data.eval_dataset(data.split_files(data_dir, split), image_size):
        probs = tta.probabilities(logits_fn, batch["pixels"], tta_mode)
        ys.append(batch["label"].numpy())
        ps.append(np.argmax(probs.numpy(), -1))
    return metrics.summarize(metrics.confusion(np.concatenate(ys), np.concatenate(ps)))


def metric_name(split: str, mode: str) -> str:
    return split if mode == "none" else f"{split}_{mode}_tta"


def evaluate_all(logits_fn, data_dir: str, splits, image_size: int) -> dict:
    return {metric_name(s, m): evaluate_split(logits_fn, data_dir, s, image_size, m) for s in splits for m in tta.MODES}


def best_tta(results: dict) -> str:
    """The TTA mode with the best val macro-F1 (never chosen on test); 'none' without val."""
    if "val" not in results:
        return "none"
    return max(tta.MODES, key=lambda m: results[metric_name("val", m)]["macro_f1"])


def format_report(name: str, m: dict) -> str:
    recall = "  ".join(f"{c} {m['per_class'][c]['recall']:.3f}" for c in LABELS)
    lines = [f"{name:<16} accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  ({m['examples']} images)",
             f"{'':<16} recall: {recall}"]
    return "\n".join(lines)


def main(argv=None):
    from model.export import load

    p = argparse.ArgumentParser(prog="python -m model.evaluate")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--splits", nargs="+", default=["val", "test"])
    p.add_argument("--update-metadata", action="store_true")
    args = p.parse_args(argv)
    model, meta = load(args.model)

    @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])
    def logits(pixels):
        return model(pixels, training=False)

    results = evaluate_all(logits, args.data, args.splits, int(meta["image_size"]))
    for name, m in results.items():
        print(format_report(name, m))
    for split in args.splits:
        print(f"confusion ({split}, rows true, columns predicted, order {list(LABELS)}):")
        for label, row in zip(LABELS, results[split]["confusion"]):
            print(f"  {label:<9}" + "".join(f"{v:6d}" for v in row))
    if args.update_metadata:
        meta["metrics"] = {**meta.get("metrics", {}), **results}
        meta["recommended_tta"] = best_tta(results)
        with tf.io.gfile.GFile(f"{args.model.rstrip('/')}/metadata.json", "w") as f:
            f.write(json.dumps(meta, indent=2) + "\n")
        print(f"recommended_tta: {meta['recommended_tta']} (best val macro-F1)")


if __name__ == "__main__":
    main()
