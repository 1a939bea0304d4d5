"""The sections of `emotion report`: one registry entry per kind of output (KINDS), each with the
marker files that recognise its folder, the function that reads it into plain data, and the
template that draws that data.

A new kind of section: a `*_data(part)` function here returning plain data (with a "glance" list
for the overview), a `templates/<kind>.html.j2`, and its SectionKind in KINDS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from beam_pipelines.base.files import join
from beam_pipelines.report.filters import (
    SPLIT_ORDER,
    TTA_ORDER,
    by_split,
    fint,
    fnum,
    pick,
    png,
    row,
    split_and_tta,
    tta_label,
)
from beam_pipelines.report.inputs import count_rows, read, read_csv, read_json, read_tables

MAX_REJECTED_ROWS = 50
MAX_DISAGREEMENTS = 20


@dataclass
class Part:
    """One output folder found under the report's root, and what the page needs of it."""

    kind: str  # a SectionKind's name: ingest, train, predict or compare
    path: str
    name: str  # relative to the report folder ("" for the folder itself)
    title: str = ""
    note: str = ""
    anchor: str = ""
    data: dict = field(default_factory=dict)  # predict: its summary and metrics, for the "Models compared" table


# =========================================================================== shared by several kinds


def rejected_data(folder: str, expected: int | None) -> dict | None:
    """Reason counts and the first rows of rejected/*.parquet (None: no such table)."""
    t = read_tables(join(folder, "rejected", "*.parquet"))
    if t is None:
        return None
    data = {"total": t.num_rows, "expected": expected, "reasons": [], "rows": [], "folder": join(folder, "rejected")}
    if t.num_rows:
        counts = t.group_by("reason").aggregate([("reason", "count")]).to_pylist()
        data["reasons"] = sorted(((r["reason"], r["reason_count"]) for r in counts), key=str)
        shown = t.sort_by([("reason", "ascending"), ("uri", "ascending")]).slice(0, MAX_REJECTED_ROWS).to_pylist()
        data["rows"] = [pick(r, ("uri", "reason", "detail", "stage")) for r in shown]
    return data


def _confusion(labels: list[str], matrix: list[list[int]]) -> dict:
    """A confusion matrix with each row's shares and the totals, for macros.confusion."""
    rows = []
    for label, counts in zip(labels, matrix):
        total = sum(counts)
        cells = [{"count": n, "share": n / (total or 1)} for n in counts]
        rows.append({"label": label, "cells": cells, "total": total})
    column_totals = [sum(r[j] for r in matrix) for j in range(len(labels))]
    return {"labels": labels, "rows": rows, "column_totals": column_totals, "total": sum(column_totals)}


# =========================================================================== ingest

INGEST_TOTALS = ("matched", "written", "rejected", "skipped_non_data")
IMAGE_STATS = ("images", "brightness_mean", "brightness_std", "contrast_mean", "contrast_std", "sharpness_geomean")
DUPLICATE_COUNTS = (
    "groups", "redundant_files", "dropped_within_split", "conflicting_label_groups", "conflicting_label_files",
)


def ingest_data(part: Part) -> dict:
    """An `emotion ingest` output (stats.json): totals, class balance, duplicates, image statistics,
    settings and the dead-letter table."""
    stats = read_json(join(part.path, "stats.json")) or {}
    totals = stats.get("totals", {})
    return {
        "totals": pick(totals, INGEST_TOTALS),
        "written_per_split": by_split(stats.get("written_per_split", {}).items()),
        "rejected_reasons": list(stats.get("rejected", {}).items()),
        "skipped_kinds": list(stats.get("skipped", {})),
        "balance": _ingest_balance(totals),
        "warnings": stats.get("warnings", []),
        "class_balance": _class_balance(part.path, stats),
        "duplicates": _duplicates(stats.get("duplicates")),
        "image_stats": [{"split": s, **dict.fromkeys(IMAGE_STATS), **v}
                        for s, v in by_split(stats.get("image_stats", {}).items())],
        "settings": _ingest_settings(stats),
        "rejected": rejected_data(part.path, totals.get("rejected") if totals else None),
        "glance": [f"{fint(totals.get('written'))} images written, {fint(totals.get('rejected'))} rejected"],
    }


def _ingest_balance(totals: dict) -> dict | None:
    """matched = written + rejected + skipped, checked (None without totals)."""
    if not totals:
        return None
    counts = {k: totals.get(k, 0) for k in ("written", "rejected", "skipped_non_data")}
    return {
        "ok": totals.get("matched") == sum(counts.values()),
        "written": counts["written"],
        "rejected": counts["rejected"],
        "skipped": counts["skipped_non_data"],
    }


def _class_balance(folder: str, stats: dict) -> dict | None:
    """The images written per class and split, with totals, missing classes and the imbalance ratio."""
    labels, written = stats.get("labels") or [], stats.get("written", {})
    if not (written and labels):
        return None
    splits = [sp for sp, _ in by_split(written.items())]
    rows = [{"label": c, "counts": [int(written[sp].get(c, 0)) for sp in splits]} for c in labels]
    for r in rows:
        r["total"] = sum(r["counts"])
    class_totals = [r["total"] for r in rows]
    return {
        "plot": png(read(join(folder, "plots", "class_distribution.png")), "Class distribution per split"),
        "splits": splits,
        "rows": rows,
        "split_totals": [sum(r["counts"][i] for r in rows) for i in range(len(splits))],
        "total": sum(class_totals),
        "missing": [c for c, n in zip(labels, class_totals) if not n],
        "imbalance": max(class_totals) / min(class_totals) if min(class_totals) else None,
    }


def _duplicates(dup: dict | None) -> dict | None:
    """De-duplication counts and the copies dropped to keep splits apart (None: not recorded)."""
    if dup is None:
        return None
    leakage = dup.get("leakage_dropped") or {}
    return {
        **pick(dup, DUPLICATE_COUNTS),
        "leakage": sorted(leakage.items()),
        "leakage_total": sum(leakage.values()),
        "clean": not dup.get("groups") and not dup.get("conflicting_label_groups"),
    }


def _ingest_settings(stats: dict) -> list[dict]:
    return [
        row("input", stats.get("input"), "code"),
        row("output", stats.get("output"), "code"),
        row("image size", stats.get("image_size")),
        row("face crop", stats.get("face_crop")),
        row("split source", stats.get("split_source")),
        row("val fraction", stats.get("val_fraction")),
        row("test fraction", stats.get("test_fraction")),
        row("val carved from train", stats.get("val_carved_from_train")),
        row("seed", stats.get("seed")),
        row("shards per split", stats.get("num_shards")),
        row("schema version", stats.get("schema_version")),
        row("data fingerprint", stats.get("fingerprint"), "code"),
    ]


# =========================================================================== train

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_accuracy", "val_macro_f1", "lr", "images_per_s", "epoch_seconds")


def train_data(part: Part) -> dict:
    """A training run (metadata.json, history.csv): cards, metrics per split and TTA mode, per-class F1,
    the run's settings and versions, the history and the training curves."""
    meta = read_json(join(part.path, "metadata.json")) or {}
    history = read_csv(join(part.path, "history.csv"))
    metrics = meta.get("metrics", {})
    metric_rows = _metric_rows(metrics, meta.get("recommended_tta"))
    described = bool(meta.get("training", {}) or meta.get("training_data", {}))
    return {
        "cards": _train_cards(meta, history),
        "glance": [f"val macro-F1 {fnum(metrics['val'].get('macro_f1'))}"] if metrics.get("val") else [],
        "metrics": metric_rows,
        "per_class": _per_class_f1(meta, metric_rows),
        "run": _train_run(meta) if described else None,
        "versions": _versions(meta) if described else None,
        "history": _history(history),
        "curves": png(
            read(join(part.path, "plots", "training_curves.png")),
            "Training curves: loss, accuracy / val macro-F1, learning rate",
            "full",
        ),
    }


def _train_cards(meta: dict, history: list[dict]) -> list[dict]:
    """The cards at the top: the model, val and test scores, the epochs run (or so far)."""
    training, metrics = meta.get("training", {}), meta.get("metrics", {})
    cards = []
    if meta:
        cards.append({"kind": "model", **pick(meta, ("model_version", "arch", "parameters"))})
    for split in ("val", "test"):
        if metrics.get(split):
            numbers = pick(metrics[split], ("macro_f1", "accuracy", "examples"))
            cards.append({"kind": "split", "split": split, **numbers})
    if training:
        cards.append({
            "kind": "epochs",
            "epochs_run": training.get("epochs_run"),
            "best_epoch": training.get("best_epoch"),
            "steps": training.get("steps"),
            "seconds": training.get("seconds_this_run"),
        })
    elif history:
        cards.append({"kind": "epochs_so_far", "epochs": len(history)})
    return cards


def _metric_rows(metrics: dict, recommended: str | None) -> list[dict]:
    """One row per metrics key, by split (val, test) then TTA mode (none, flip, crops)."""
    rows = []
    for name, m in metrics.items():
        if not m:
            continue
        split, mode = split_and_tta(name)
        rows.append({
            "name": name,
            "split": split,
            "mode": mode,
            "inference": tta_label(mode),
            "recommended": recommended not in (None, "") and mode == recommended,
            **pick(m, ("examples", "accuracy", "macro_f1")),
        })
    return sorted(rows, key=lambda r: (SPLIT_ORDER.get(r["split"], 9), TTA_ORDER.get(r["mode"], 9), r["name"]))


def _per_class_f1(meta: dict, metric_rows: list[dict]) -> dict | None:
    """Per-class F1 of every metrics row that has it, and the support of each split."""
    metrics = meta.get("metrics", {})
    with_per_class = [r for r in metric_rows if metrics[r["name"]].get("per_class")]
    if not with_per_class:
        return None
    labels = meta.get("labels") or list(metrics[with_per_class[0]["name"]]["per_class"])
    # One support column per split (TTA does not change the support): its plain row, else its first one
    # (the final step scores test in the recommended mode only).
    per_split = {}
    for r in sorted(with_per_class, key=lambda r: r["mode"] != "none"):
        per_split.setdefault(r["split"], r)
    plain = [r for r in with_per_class if per_split[r["split"]] is r]
    return {
        "f1_heads": [f"F1 {r['split']}" + ("" if r["mode"] == "none" else f" ({r['inference']})")
                     for r in with_per_class],
        "support_heads": [f"support {r['split']}" for r in plain],
        "rows": [
            {
                "label": c,
                "f1": [metrics[r["name"]]["per_class"].get(c, {}).get("f1") for r in with_per_class],
                "support": [metrics[r["name"]]["per_class"].get(c, {}).get("support") for r in plain],
            }
            for c in labels
        ],
    }


def _train_run(meta: dict) -> list[dict]:
    """How the model was trained, and on what."""
    training, tdata = meta.get("training", {}), meta.get("training_data", {})
    images_per_split = tdata.get("images_per_split") or {}
    strategy = f"{training.get('strategy')} ({fint(training.get('replicas'))} replica(s))" if training else None
    optimizer = f"{training.get('optimizer')}, peak LR {fnum(training.get('peak_lr'), 4)}" if training else None
    return [
        row("architecture", meta.get("arch")),
        row("recommended test-time augmentation", meta.get("recommended_tta")),
        row("strategy", strategy),
        row("global batch", training.get("global_batch"), "int"),
        row("optimizer", optimizer),
        row("mixed precision", training.get("mixed_precision")),
        row("stopped early", training.get("stopped_early")),
        row("resumed from step", training.get("resumed_from_step"), "int"),
        row("training data", tdata.get("path"), "code"),
        row("images per split", ", ".join(f"{k} {fint(v)}" for k, v in by_split(images_per_split.items()))),
        row("data fingerprint", tdata.get("fingerprint"), "code"),
        row("face crop", tdata.get("face_crop")),
        row("image size", meta.get("image_size")),
        row("model fingerprint", meta.get("model_fingerprint"), "code"),
    ]


def _versions(meta: dict) -> list[dict] | None:
    """The library versions and the command line that trained the model (None: not recorded)."""
    if not (meta.get("versions") or meta.get("command")):
        return None
    return [*(row(k, v) for k, v in (meta.get("versions") or {}).items()), row("command", meta.get("command"), "code")]


def _history(history: list[dict]) -> dict | None:
    if not history:
        return None
    keys = [k for k in HISTORY_COLUMNS if k in history[0]]
    return {"columns": keys, "rows": [pick(h, keys) for h in history]}


# =========================================================================== predict

PREDICT_TOTALS = ("matched", "predicted", "rejected")
PER_CLASS_COLUMNS = ("label", "precision", "recall", "f1", "support", "predicted")


def predict_data(part: Part) -> dict:
    """An `emotion predict` output (summary.json, evaluation/): totals, scores, the evaluation and the
    dead-letter table. Keeps the summary and metrics on the part for the "Models compared" table."""
    summary = read_json(join(part.path, "summary.json")) or {}
    metrics = read_json(join(part.path, "evaluation", "metrics.json")) or {}
    totals = summary.get("totals", {})
    part.data = {"summary": summary, "metrics": metrics}
    accuracy = metrics.get("accuracy", summary.get("accuracy"))
    macro_f1 = metrics.get("macro_f1", summary.get("macro_f1"))
    return {
        "model_version": summary.get("model_version") or metrics.get("model_version"),
        "model": summary.get("model"),
        "totals": pick(totals, PREDICT_TOTALS) if totals else None,
        "faces": totals.get("faces"),  # --faces all: the rows are faces
        "face_detector": summary.get("face_detector"),
        "abstention": summary.get("abstention"),
        "labelled": summary.get("labelled"),
        "rejected_reasons": list((summary.get("rejected") or {}).items()),
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "ece": metrics.get("expected_calibration_error"),
        "input": summary.get("input"),
        "face_crop": summary.get("face_crop"),
        "tta": summary.get("tta") or "none",
        "balance": _predict_balance(totals),
        "parquet_rows": count_rows(join(part.path, "predictions", "*.parquet")) if totals else None,
        "expected_rows": totals.get("faces", totals.get("predicted")) if totals else None,
        "evaluation": _evaluation(part.path, summary, metrics) if metrics else None,
        "overview": _overview(part.path, summary.get("labelled")),
        "slices": _slices(part.path),
        "glance": _predict_glance(accuracy, macro_f1, totals, metrics),
        "rejected": rejected_data(part.path, totals.get("rejected") if totals else None),
    }


def _predict_counts(totals: dict) -> tuple[int, int, int]:
    return tuple(totals.get(k, 0) for k in ("predicted", "rejected", "skipped_non_data"))


def _predict_balance(totals: dict) -> dict | None:
    """matched = predicted + rejected + skipped, checked (None without totals)."""
    if not totals:
        return None
    predicted, rejected, skipped = _predict_counts(totals)
    return {
        "ok": totals.get("matched") == predicted + rejected + skipped,
        "predicted": predicted,
        "rejected": rejected,
        "skipped": skipped,
    }


def _predict_glance(accuracy, macro_f1, totals: dict, metrics: dict) -> list[str]:
    glance = [] if accuracy is None else [f"accuracy {fnum(accuracy)}, macro-F1 {fnum(macro_f1)}"]
    if totals:
        predicted, rejected, _ = _predict_counts(totals)
        glance.append(f"{fint(predicted)} predicted, {fint(rejected)} rejected")
    elif metrics:
        glance.append(f"{fint(metrics.get('examples'))} evaluated")
    return glance


def _evaluation(folder: str, summary: dict, metrics: dict) -> dict:
    """evaluation/ and its plots: the confusion matrix, per-class metrics and their macro averages."""

    def plot(name, caption, cls=""):
        return png(read(join(folder, "plots", name)), caption, cls)

    totals = summary.get("totals", {})
    labels = metrics.get("labels") or list(metrics.get("per_class", {}))
    per_class = _per_class_rows(folder, metrics)
    labelled = summary.get("labelled") is not None and metrics.get("examples") is not None and totals
    rows = totals.get("faces", totals.get("predicted", 0))
    return {
        "examples": metrics.get("examples"),
        "rows": rows,
        "unlabelled": rows - metrics["examples"] if labelled else None,
        "confusion_plot": plot("confusion_matrix.png", "Confusion matrix (rows: true class)"),
        "reliability_plot": plot("reliability.png", "Reliability diagram"),
        "confusion": _confusion(labels, metrics["confusion"]) if metrics.get("confusion") and labels else None,
        "per_class": per_class,
        "macro": _macro(per_class),
        "per_class_plot": plot("per_class.png", "Per-class precision / recall / F1"),
        "coverage_plot": plot("accuracy_coverage.png", "Accuracy of the rows answered against coverage, by "
                              "--min-confidence (pick P on your own val data)"),
        "samples_plot": plot("samples.png", "Most confident mistakes (red), then correct predictions (green)", "full"),
    }


def _overview(folder: str, labelled) -> dict | None:
    """evaluation/overview.json and its plots, for every run (the main view of an unlabelled one): the
    predicted-class mix, the confidence distribution, the least confident rows, thumbnails per class."""
    o = read_json(join(folder, "evaluation", "overview.json"))
    if not o or not o.get("rows"):
        return None
    rows = o["rows"]
    mix = sorted(((label, int(n)) for label, n in (o.get("predicted_mix") or {}).items()), key=lambda kv: -kv[1])
    hist = o.get("confidence_histogram") or []
    peak = max([h.get("count", 0) for h in hist] or [0]) or 1
    return {
        "rows": rows,
        "labelled": bool(labelled),
        "mix": [{"label": label, "count": n, "share": n / rows} for label, n in mix],
        "histogram": [{**pick(h, ("low", "high", "count")), "height": h.get("count", 0) / peak} for h in hist],
        "low_plot": png(read(join(folder, "plots", "low_confidence.png")), "The least confident predictions", "full"),
        "classes_plot": png(read(join(folder, "plots", "predicted_classes.png")),
                            "Thumbnails per predicted class (a row per class, chosen by hash)"),
    }


SLICE_COLUMNS = ("column", "value", "rows", "answered", "labelled", "accuracy", "accuracy_low", "accuracy_high",
                 "macro_f1", "macro_f1_low", "macro_f1_high")


def _slices(folder: str) -> list[dict] | None:
    """evaluation/slices.parquet (--slices): a row per value of each of the user's columns."""
    table = read_tables(join(folder, "evaluation", "slices.parquet"))
    return [pick(r, SLICE_COLUMNS) for r in table.to_pylist()] if table is not None else None


def _per_class_rows(folder: str, metrics: dict) -> list[dict]:
    """evaluation/per_class.parquet, or metrics.json's per_class when that table is missing."""
    table = read_tables(join(folder, "evaluation", "per_class.parquet"))
    if table is not None:
        rows = table.to_pylist()
    else:
        rows = [{"label": c, **v} for c, v in metrics.get("per_class", {}).items()]
    return [pick(r, PER_CLASS_COLUMNS) for r in rows]


def _macro(rows: list[dict]) -> dict | None:
    if not rows:
        return None
    return {
        "precision": sum(r["precision"] for r in rows) / len(rows),
        "recall": sum(r["recall"] for r in rows) / len(rows),
        "support": sum(r["support"] for r in rows),
        "predicted": sum(r["predicted"] for r in rows),
    }


def comparison_rows(parts: list[Part]) -> list[dict]:
    """The "Models compared" table: one row per evaluated predict output; empty under two."""
    rows = []
    for p in parts:
        s, m = p.data.get("summary", {}), p.data.get("metrics", {})
        if not m:
            continue
        rows.append({
            "anchor": p.anchor,
            "heading": p.title or p.name or "predictions",
            "model_version": s.get("model_version") or m.get("model_version"),
            "input": s.get("input"),
            "tta": s.get("tta") or "none",
            "examples": m.get("examples"),
            "accuracy": m.get("accuracy"),
            "macro_f1": m.get("macro_f1"),
            "ece": m.get("expected_calibration_error"),
        })
    return rows if len(rows) >= 2 else []


# =========================================================================== compare


def compare_data(part: Part) -> dict:
    """An `emotion compare` output: agreement, the two models' labels against each other, per-class
    scores side by side, the most confident disagreements."""
    summary = read_json(join(part.path, "compare", "comparison.json")) or {}
    agreement = read_tables(join(part.path, "compare", "agreement.parquet"))
    per_class = read_tables(join(part.path, "compare", "per_class.parquet"))
    differ = read_tables(join(part.path, "compare", "disagreements.parquet"))
    matrix = None
    if agreement is not None:
        cells = {(r["label_a"], r["label_b"]): r["count"] for r in agreement.to_pylist()}
        labels = list(dict.fromkeys(r["label_a"] for r in agreement.to_pylist()))
        matrix = _confusion(labels, [[cells.get((a, b), 0) for b in labels] for a in labels])
    return {
        "s": summary,
        "agreement": matrix,
        "per_class": per_class.to_pylist() if per_class is not None else [],
        "disagreements": differ.slice(0, MAX_DISAGREEMENTS).to_pylist() if differ is not None else [],
        "disagreements_total": differ.num_rows if differ is not None else 0,
        "glance": [f"agreement {fnum(summary.get('agreement'))} on {fint(summary.get('images_in_both'))} images"],
    }


# =========================================================================== the registry


@dataclass(frozen=True)
class SectionKind:
    """One kind of output the page shows."""

    name: str  # the Part's kind; the CSS class and anchor of its section
    title: str  # its heading (": <subfolder>" added for a subfolder)
    markers: tuple[str, ...]  # a folder is of this kind when one of these files exists in it
    data: Callable[[Part], dict]  # the folder -> plain data for the template, with a "glance" list
    template: str  # under templates/, rendered with d = that data


# In page order (after demo.json's): the first kind whose marker a folder holds is its kind.
KINDS = (
    SectionKind("ingest", "Data (ingest)", ("stats.json",), ingest_data, "ingest.html.j2"),
    SectionKind("train", "Training", ("metadata.json", "history.csv"), train_data, "train.html.j2"),
    SectionKind("predict", "Predictions", ("summary.json", "evaluation/metrics.json"), predict_data,
                "predict.html.j2"),
    SectionKind("compare", "Models compared", ("compare/comparison.json",), compare_data, "compare.html.j2"),
)
KIND = {kind.name: kind for kind in KINDS}
