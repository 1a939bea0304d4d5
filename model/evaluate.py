"""Evaluate an exported model on ingest TFRecords, for every TTA mode.

    python -m model.evaluate --model model/shipped --data /tmp/fer2013-ingest [--splits val test] [--update-metadata]

Prints accuracy, macro-F1, per-class recall and the confusion matrix; with --update-metadata
writes the metrics and the TTA mode that is best on val into the model's metadata.json.
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf

from model import data, metrics, tta
from schemas import LABELS


def evaluate_split(logits_fn, data_dir: str, split: str, image_size: int, tta_mode: str = "none") -> dict:
    """Metrics of logits_fn (a batch of (B, S, S, 1) pixels -> logits) on a whole split."""
    ys, ps, confidence = [], [], []
    for batch in data.eval_dataset(data.split_files(data_dir, split), image_size):
        probs = tta.probabilities(logits_fn, batch["pixels"], tta_mode).numpy()
        ys.append(batch["label"].numpy())
        ps.append(np.argmax(probs, -1))
        confidence.append(probs.max(-1))
    y, p, conf = np.concatenate(ys), np.concatenate(ps), np.concatenate(confidence)
    summary = metrics.summarize(metrics.confusion(y, p))
    summary["ece"] = metrics.expected_calibration_error(*metrics.calibration_bins(conf, y == p))
    summary["mean_confidence"] = float(conf.mean()) if len(conf) else 0.0
    return summary


def metric_name(split: str, mode: str) -> str:
    return split if mode == "none" else f"{split}_{mode}_tta"


def evaluate_all(logits_fn, data_dir: str, splits, image_size: int) -> dict:
    return {metric_name(s, m): evaluate_split(logits_fn, data_dir, s, image_size, m) for s in splits for m in tta.MODES}


# A TTA mode must beat a cheaper one by more than this (val macro-F1) to be recommended: smaller
# gains are noise on a few thousand images, and crops costs 5x flip on every prediction.
TTA_TOLERANCE = 0.005


def best_tta(results: dict, tolerance: float = TTA_TOLERANCE) -> str:
    """The cheapest TTA mode within `tolerance` of the best val macro-F1 (never chosen on test);
    'none' without val."""
    if "val" not in results:
        return "none"
    scores = {m: results[metric_name("val", m)]["macro_f1"] for m in tta.MODES}  # MODES: cheapest first
    best = max(scores.values())
    return next(m for m in tta.MODES if scores[m] >= best - tolerance)


def format_report(name: str, m: dict) -> str:
    recall = "  ".join(f"{c} {m['per_class'][c]['recall']:.3f}" for c in LABELS)
    lines = [f"{name:<16} accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  ECE {m.get('ece', 0):.3f}  "
             f"({m['examples']} images)",
             f"{'':<16} recall: {recall}"]
    return "\n".join(lines)


def main(argv=None):
    from model.export import load, write_metadata

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
        write_metadata(args.model, meta)  # replaced in one step: never half a file
        print(f"recommended_tta: {meta['recommended_tta']} (best val macro-F1)")


if __name__ == "__main__":
    main()
