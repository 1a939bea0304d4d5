"""Evaluate an exported model on ingest TFRecords. Choosing happens on val; test is sealed.

    python -m model.evaluate --model DIR --data /tmp/fer-out [--splits val train] [--update-metadata]
    python -m model.evaluate --model DIR --data /tmp/fer-out --final [--again]

Without --final: every TTA mode on the chosen splits (train, val; never test). Prints accuracy, macro-F1,
per-class recall, ECE and the confusion matrix; --update-metadata writes the val metrics and the temperature
fitted on val (for the recommended TTA) into metadata.json. The recommended TTA is left as the export chose
it (metadata.json's "tta" says how).

--final is the one step that scores test (`final_evaluation`): the model as it serves (its recommended TTA
and temperature, float32), once; it records in metadata.json when, by what command, and how many times test
has been scored for this model line ("test_scoring", shown on the model card), adds the test metrics and ECE
before and after the temperature, and refuses a second time unless --again is given (which is recorded too).
Training, export and `--import-run` never read test: `evaluate_all` and `score_split` refuse it.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from model import metrics
from schemas import LABELS, TTA_MODES

# TensorFlow (with model.data and model.tta) is imported where it is used: `python -m model.evaluate`
# imports it quietly first (model/quiet.py), so that its refusals stay one line.

SELECTION_SPLITS = ("train", "val")  # what choosing may look at; test only through final_evaluation
FINAL_SPLIT = "test"


class SealedSplitError(ValueError):
    """Test asked for outside the final step."""


@dataclasses.dataclass(frozen=True)
class Scored:
    """A split's labels and its logits, one array per TTA view: (views, images, classes)."""

    labels: np.ndarray
    logits: np.ndarray


def _scored(logits_fn, data_dir: str, split: str, image_size: int, mode: str) -> Scored:
    import tensorflow as tf

    from model import data, tta

    ys, views = [], []
    for batch in data.eval_dataset(data.split_files(data_dir, split), image_size):
        views.append(np.stack([tf.cast(logits_fn(v), tf.float32).numpy().astype(np.float64)
                               for v in tta.views(batch["pixels"], mode)]))
        ys.append(batch["label"].numpy())
    return Scored(np.concatenate(ys), np.concatenate(views, axis=1))


def score_split(logits_fn, data_dir: str, split: str, image_size: int, mode: str = "none") -> Scored:
    """logits_fn (a batch of (B, S, S, 1) pixels -> logits) over every TTA view of a split (train or val)."""
    if split not in SELECTION_SPLITS:
        raise SealedSplitError(f"{split} is scored only by the final step (python -m model.evaluate --final), "
                               f"not while choosing: choose on {' or '.join(SELECTION_SPLITS)}")
    return _scored(logits_fn, data_dir, split, image_size, mode)


def summarize(scored: Scored, temperature: float = 1.0) -> dict:
    """accuracy, macro-F1, per class, confusion, ECE, mean confidence and NLL at a temperature."""
    probs = metrics.tempered_probabilities(scored.logits, temperature)
    predicted, confidence = probs.argmax(-1), probs.max(-1)
    summary = metrics.summarize(metrics.confusion(scored.labels, predicted))
    summary["ece"] = metrics.expected_calibration_error(*metrics.calibration_bins(confidence, scored.labels == predicted))
    summary["mean_confidence"] = float(confidence.mean()) if len(confidence) else 0.0
    summary["nll"] = metrics.negative_log_likelihood(probs, scored.labels)
    return summary


def evaluate_split(logits_fn, data_dir: str, split: str, image_size: int, tta_mode: str = "none") -> dict:
    """Metrics of logits_fn on a whole split (train or val)."""
    return summarize(score_split(logits_fn, data_dir, split, image_size, tta_mode))


def metric_name(split: str, mode: str) -> str:
    return split if mode == "none" else f"{split}_{mode}_tta"


def evaluate_all(logits_fn, data_dir: str, splits, image_size: int) -> tuple[dict, dict]:
    """(metrics by name, Scored by name) for every split (train, val) and TTA mode."""
    scored = {metric_name(s, m): score_split(logits_fn, data_dir, s, image_size, m) for s in splits for m in TTA_MODES}
    return {name: summarize(s) for name, s in scored.items()}, scored


# A TTA mode must beat a cheaper one by more than this (val macro-F1) to be recommended: smaller
# gains are noise on a few thousand images, and crops costs 5x flip on every prediction.
TTA_TOLERANCE = 0.005
TTA_RULE = f"the cheapest mode within {TTA_TOLERANCE} of the best val macro-F1"


def best_tta(results: dict, tolerance: float = TTA_TOLERANCE) -> str:
    """The cheapest TTA mode within `tolerance` of the best val macro-F1 (never chosen on test);
    'none' without val."""
    if "val" not in results:
        return "none"
    scores = {m: results[metric_name("val", m)]["macro_f1"] for m in TTA_MODES}  # cheapest first
    best = max(scores.values())
    return next(m for m in TTA_MODES if scores[m] >= best - tolerance)


def tta_record(rule: str, results: dict) -> dict:
    """metadata.json's "tta": the mode and how it was decided, as it happened: `rule` is the recipe's
    tta ("auto": chosen on val, where there is a val split; a mode: fixed by the recipe)."""
    scores = {m: results[metric_name("val", m)]["macro_f1"] for m in TTA_MODES if metric_name("val", m) in results}
    if rule != "auto":
        return {"mode": rule, "decided": "fixed by the recipe", "recipe_tta": rule, "val_macro_f1": scores}
    if "val" not in results:
        return {"mode": "none", "decided": "no val split to choose on: none", "recipe_tta": rule,
                "val_macro_f1": scores}
    return {"mode": best_tta(results), "decided": "chosen on val", "rule": TTA_RULE, "recipe_tta": rule,
            "val_macro_f1": scores}


def calibration_record(scored: Scored, mode: str) -> dict:
    """metadata.json's "calibration": a temperature fitted on val logits (for the recommended TTA) and its
    effect there: ECE and NLL before (temperature 1) and after."""
    temperature = metrics.fit_temperature(scored.logits, scored.labels)
    before, after = summarize(scored), summarize(scored, temperature)
    return {"method": "temperature scaling (one scalar dividing the logits, fitted by NLL)",
            "temperature": round(temperature, 4), "fitted_on": "val", "tta": mode, "images": int(len(scored.labels)),
            "val": _calibration_effect(before, after)}


def _calibration_effect(before: dict, after: dict) -> dict:
    return {"ece_before": before["ece"], "ece_after": after["ece"], "nll_before": before["nll"],
            "nll_after": after["nll"], "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"]}


def format_report(name: str, m: dict) -> str:
    recall = "  ".join(f"{c} {m['per_class'][c]['recall']:.3f}" for c in LABELS)
    lines = [f"{name:<16} accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  ECE {m.get('ece', 0):.3f}  "
             f"({m['examples']} images)",
             f"{'':<16} recall: {recall}"]
    return "\n".join(lines)


def print_confusion(split: str, m: dict) -> None:
    print(f"confusion ({split}, rows true, columns predicted, order {list(LABELS)}):")
    for label, row in zip(LABELS, m["confusion"]):
        print(f"  {label:<9}" + "".join(f"{v:6d}" for v in row))


def _logits_fn(model):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])
    def logits(pixels):
        return model(pixels, training=False)

    return logits


# =========================================================================== the final step


def final_evaluation(model_dir: str, data_dir: str, again: bool = False) -> dict:
    """Scores test once, as the model serves, and records it (see the module docstring); returns the
    metadata written."""
    return _locked(model_dir.rstrip("/"), lambda root: _final(root, data_dir, again))


def _locked(root: str, step):
    """step(root) holding the model directory's _train.lock (no training, export or other writer of
    metadata.json meanwhile; a holder is named in one line)."""
    from model import ownership
    from model.gate import RootLock, new_id

    lock = RootLock(root, new_id("evaluate"), flag="--model", name=ownership.LOCK)
    lock.acquire()
    try:
        return step(root)
    finally:
        lock.release()


def _final(root: str, data_dir: str, again: bool) -> dict:
    import datetime as dt

    from model import test_scoring
    from model.config import command_line
    from model.artifact import fitted_temperature, write_metadata, write_model_card
    from model.errors import UsageError
    from model.loading import load

    model, meta = load(root)
    _check_same_data(meta, data_dir)
    record = test_scoring.read(meta, f"{root}/metadata.json")
    if record["count"] and not again:
        last = record["events"][-1]
        raise UsageError(f"test has been scored {record['count']} time(s) for this model line (last: "
                         f"{str(last.get('when'))[:40]}); the final step runs once: pass --again to score it again "
                         f"(recorded)")
    mode, temperature = meta.get("recommended_tta", "none"), fitted_temperature(meta)
    scored = _scored(_logits_fn(model), data_dir, FINAL_SPLIT, int(meta["image_size"]), mode)
    served = {**summarize(scored, temperature),
              "scored_as": f"the final step, as the model serves (float32, TTA {mode}, temperature {temperature:g})"}
    name = metric_name(FINAL_SPLIT, mode)
    meta["metrics"] = {**{k: v for k, v in meta.get("metrics", {}).items() if not k.startswith(FINAL_SPLIT)},
                       name: served}
    if isinstance(meta.get("calibration"), dict):
        meta["calibration"]["test"] = _calibration_effect(summarize(scored), served)
    when = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    meta["test_scoring"] = test_scoring.add(record, {
        "when": when, "model_version": meta["model_version"], "command": command_line(),
        "what": f"{name}: float32 model.keras, TTA {mode}, temperature {temperature:g}", "recorded": "when it ran"})
    write_metadata(root, meta)
    write_model_card(root, meta)
    return meta


def _check_same_data(meta: dict, data_dir: str) -> None:
    """The test split scored must be the one of the data the model was trained on (same fingerprint)."""
    from model import data
    from model.errors import UsageError

    stats = data.read_stats(data_dir)
    trained_on = (meta.get("training_data") or {}).get("fingerprint")
    if not trained_on or stats.get("fingerprint") != trained_on:
        raise UsageError(f"--data {data_dir} has fingerprint {str(stats.get('fingerprint'))[:40]}, the model was "
                         f"trained on {str(trained_on)[:40]}: score test on the ingest output it was trained on")


# =========================================================================== command line


def build_parser(prog: str = "python -m model.evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="an exported model directory, or shipped / fast")
    p.add_argument("--data", required=True, help="the ingest output the model was trained on")
    p.add_argument("--splits", nargs="+", choices=SELECTION_SPLITS, default=["val"],
                   help="what to score while choosing (never test: see --final)")
    p.add_argument("--update-metadata", action="store_true",
                   help="write the val metrics and the temperature fitted on val into metadata.json")
    p.add_argument("--final", action="store_true",
                   help="the final step: score test once, as the model serves, and record it in metadata.json")
    p.add_argument("--again", action="store_true", help="with --final: score test again (the count goes up)")
    return p


def run(argv=None, prog: str = "emotion evaluate") -> None:
    """`emotion evaluate` (beam_pipelines/cli.py): a model's, a data set's or metadata's problem is a
    UsageError (one line, exit 2)."""
    from model import resolve_model_dir
    from model.errors import UsageError
    from model.artifact import ModelError

    args = build_parser(prog).parse_args(argv)
    root = resolve_model_dir(args.model).rstrip("/")
    try:
        if args.final:
            _report_final(root, final_evaluation(root, args.data, again=args.again))
        elif args.update_metadata:
            _locked(root, lambda r: _choose(r, args))
        else:
            _choose(root, args)
    except (ModelError, SealedSplitError) as exc:
        raise UsageError(str(exc)) from None


def _report_final(root: str, meta: dict) -> None:
    name = metric_name(FINAL_SPLIT, meta.get("recommended_tta", "none"))
    print(format_report(name, meta["metrics"][name]))
    print_confusion(name, meta["metrics"][name])
    print(f"test scored {meta['test_scoring']['count']} time(s) for this model line; recorded in {root}/metadata.json")


def main(argv=None) -> None:
    """`python -m model.evaluate`: run() with TensorFlow's start-up lines hidden and a refusal as one line."""
    import sys

    from model.errors import UsageError
    from model.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    try:
        run(argv, prog="python -m model.evaluate")
    except UsageError as exc:
        print(f"python -m model.evaluate: error: {exc}", file=sys.stderr)
        sys.exit(2)


def _choose(root: str, args) -> None:
    from model.artifact import write_metadata, write_model_card
    from model.loading import load

    model, meta = load(root)
    results, scored = evaluate_all(_logits_fn(model), args.data, args.splits, int(meta["image_size"]))
    for name, m in results.items():
        print(format_report(name, m))
    for split in args.splits:
        print_confusion(split, results[split])
    if not args.update_metadata:
        return
    if "val" not in args.splits:
        raise SealedSplitError("--update-metadata records val metrics and fits the temperature on val: "
                               "include val in --splits")
    _check_same_data(meta, args.data)
    mode = meta.get("recommended_tta", "none")
    meta["metrics"] = {**meta.get("metrics", {}), **results}
    meta["calibration"] = calibration_record(scored[metric_name("val", mode)], mode)
    write_metadata(root, meta)  # replaced in one step: never half a file
    write_model_card(root, meta)
    print(f"temperature {meta['calibration']['temperature']} fitted on val ({mode} TTA): ECE "
          f"{meta['calibration']['val']['ece_before']:.3f} -> {meta['calibration']['val']['ece_after']:.3f}")


if __name__ == "__main__":
    main()
