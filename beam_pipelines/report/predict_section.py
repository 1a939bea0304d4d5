"""The predict section of `emotion report`: a prediction run's counts, evaluation, coverage, slices and
per-class rows, and the "Models compared" rows across the runs of one page."""

from __future__ import annotations

from beam_pipelines.base.files import join
from beam_pipelines.report.filters import (
    fint,
    fnum,
    pick,
    png,
)
from beam_pipelines.report.inputs import count_rows, read, read_json, read_tables
from beam_pipelines.report.parts import Part, confusion_data, rejected_data

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
        "confusion": confusion_data(labels, metrics["confusion"]) if metrics.get("confusion") and labels else None,
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
