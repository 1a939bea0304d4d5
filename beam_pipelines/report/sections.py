"""The sections of `emotion report`: one registry entry per kind of output (KINDS), each with the
marker files that recognise its folder, the function that reads it into plain data, and the
template that draws that data.

A new kind of section: a `*_data(part)` function (here, or in a module of its own as
`predict_section.py`) returning plain data (with a "glance" list
for the overview), a `templates/<kind>.html.j2`, and its SectionKind in KINDS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
from beam_pipelines.report.inputs import read, read_csv, read_json, read_tables
from beam_pipelines.report.parts import Part, confusion_data, rejected_data
from beam_pipelines.report.predict_section import predict_data

MAX_DISAGREEMENTS = 20


# =========================================================================== shared by several kinds


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
        matrix = confusion_data(labels, [[cells.get((a, b), 0) for b in labels] for a in labels])
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
