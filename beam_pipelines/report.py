"""Report: one static, self-contained HTML page for ingest, train and predict outputs.

    emotion report --output /tmp/fer2013-ingest          # one stage's output folder
    emotion report --output ./emotion-demo               # a folder holding several (ingest/, train/, predict-*/)

Writes DIR/report.html. What is there is discovered: an ingest output (stats.json), a
training run (metadata.json, history.csv) or a predict output (summary.json,
evaluation/metrics.json), in DIR itself or in its immediate subfolders; parts that are
missing are left out. The page has its images embedded as base64 data URIs, inline CSS,
no scripts and no external references, so it can be mailed or archived as one file.
Files are read through Beam's FileSystems, so gs:// folders work too.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import io
import json
import math
from dataclasses import dataclass, field

import jinja2
from apache_beam.io.filesystems import FileSystems
from markupsafe import Markup

from beam_pipelines.common import UsageError, join, log, read_bytes
from beam_pipelines.storage import pipeline_gate

REPORT_NAME = "report.html"
GENERATOR_TAG = "<meta name=generator content=\"emotion report\">"  # marks a page this command may replace
# (GENERATOR_TAG is the one piece of HTML kept in Python: check_report_is_ours looks for these exact bytes.)
MANIFEST = "demo.json"  # optional: titles and order of the sections, written by `emotion demo`
MAX_REJECTED_ROWS = 50
KIND_ORDER = {"ingest": 0, "train": 1, "predict": 2, "compare": 3}
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
MARKERS = {  # a folder is of a kind when one of these files exists in it
    "ingest": ("stats.json",),
    "train": ("metadata.json", "history.csv"),
    "predict": ("summary.json", "evaluation/metrics.json"),
    "compare": ("compare/comparison.json",),
}
MAX_DISAGREEMENTS = 20


class OneLineErrors(argparse.ArgumentParser):
    """argparse that reports a bad option as a UsageError: one line, exit 2, no usage dump."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def parse_args(argv):
    p = OneLineErrors(prog="emotion report", description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="an ingest/train/predict output folder, or a folder holding several")
    p.add_argument("--title", default=None, help="page title (default: from the folder)")
    args = p.parse_args(argv)
    args.output = args.output.rstrip("/") or "/"
    return args


# =========================================================================== file access


def _match(pattern: str) -> list[str]:
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # no such folder, nothing matched
        return []


def _exists(path: str) -> bool:
    try:
        return FileSystems.exists(path)
    except Exception:
        return False


def _read(path: str) -> bytes | None:
    try:
        with FileSystems.open(path) as f:
            return f.read()
    except Exception:
        return None


def _read_json(path: str) -> dict | None:
    data = _read(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        log.warning("report: %s is not valid JSON; left out", path)
        return None


def _read_parquet(pattern: str, columns=None):
    """All rows of the Parquet files matching pattern as one pyarrow Table (None: no files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in _match(pattern):
        data = _read(path)
        if not data:
            continue
        try:
            tables.append(pq.read_table(io.BytesIO(data), columns=columns))
        except Exception as exc:
            log.warning("report: cannot read %s: %s", path, exc)
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def _parquet_rows(pattern: str) -> int | None:
    """Row count of the Parquet files matching pattern, from their footers only."""
    import pyarrow.parquet as pq

    paths = _match(pattern)
    if not paths:
        return None
    total = 0
    for path in paths:
        try:
            with FileSystems.open(path) as f:
                total += pq.ParquetFile(f).metadata.num_rows
        except Exception:
            data = _read(path)
            if data:
                total += pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
    return total


# =========================================================================== discovery


@dataclass
class Part:
    kind: str  # ingest, train or predict
    path: str
    name: str  # relative to the report folder ("" for the folder itself)
    title: str = ""
    note: str = ""
    anchor: str = ""
    data: dict = field(default_factory=dict)


def _kind_of(folder: str) -> str | None:
    for kind, markers in MARKERS.items():
        if any(_exists(join(folder, m)) for m in markers):
            return kind
    return None


def discover(root: str) -> list[Part]:
    """The ingest/train/predict outputs in root and its immediate subfolders."""
    parts: dict[str, Part] = {}
    kind = _kind_of(root)
    if kind:
        parts[root] = Part(kind, root, "")
    for kind, markers in MARKERS.items():
        for marker in markers:
            for path in _match(join(root, "*", marker)):
                folder = path[: -len(marker) - 1]
                if folder not in parts and folder != root:
                    parts[folder] = Part(kind, folder, folder[len(root) + 1 :])
    manifest = _read_json(join(root, MANIFEST)) or {}
    order = {s.get("path"): i for i, s in enumerate(manifest.get("sections", []))}
    titles = {s.get("path"): s for s in manifest.get("sections", [])}
    for part in parts.values():
        spec = titles.get(part.name, {})
        part.title = str(spec.get("title") or "")
        part.note = str(spec.get("note") or "")
    ordered = sorted(parts.values(), key=lambda p: (order.get(p.name, len(order)), KIND_ORDER[p.kind], p.name))
    for i, part in enumerate(ordered):
        part.anchor = f"s{i}-{part.kind}"
    return ordered


# =========================================================================== formatting (template filters)


def fnum(x, nd: int = 3) -> str:
    """x with nd decimals; an em dash when missing."""
    if x is None or x == "":
        return "\u2014"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "\u2014" if math.isnan(x) else f"{x:.{nd}f}"


def fint(x) -> str:
    """x with thousands separators; an em dash when missing."""
    if x is None:
        return "\u2014"
    try:
        return f"{int(x):,}"
    except (TypeError, ValueError):
        return str(x)


def _png(png: bytes | None, caption: str, cls: str = "") -> dict | None:
    """An image for the page: base64 text for a data: URI (None when there is none)."""
    if not png:
        return None
    return {"base64": base64.b64encode(png).decode("ascii"), "caption": caption, "cls": cls}


def _by_split(items) -> list:
    return sorted(items, key=lambda kv_: SPLIT_ORDER.get(kv_[0], 9))


def _row(key: str, value, kind: str = "text", digits: int = 3) -> dict:
    """A name/value row of a definition list (macros.kv); kind: text, code, int or num."""
    return {"key": key, "value": value, "kind": kind, "digits": digits}


# =========================================================================== test-time augmentation names

TTA_ORDER = {"none": 0, "flip": 1, "crops": 2}  # cheapest first, as model/tta.py MODES


def split_and_tta(name: str) -> tuple[str, str]:
    """A metrics key of the training metadata as (split, TTA mode): "val" -> ("val", "none"),
    "test_crops_tta" -> ("test", "crops"). The inverse of model.evaluate.metric_name."""
    if name.endswith("_tta") and "_" in name[: -len("_tta")]:
        split, _, mode = name[: -len("_tta")].partition("_")
        return split, mode
    return name, "none"


def tta_label(mode: str | None) -> str:
    """How the page names a TTA mode: "plain", "flip TTA", "crops TTA"."""
    return "plain" if mode in (None, "", "none") else f"{mode} TTA"


# =========================================================================== rejected inputs


def rejected_data(folder: str, expected: int | None) -> dict | None:
    """Reason counts and the first rows of rejected/*.parquet (None: no such table)."""
    t = _read_parquet(join(folder, "rejected", "*.parquet"))
    if t is None:
        return None
    data = {"total": t.num_rows, "expected": expected, "reasons": [], "rows": [], "folder": join(folder, "rejected")}
    if t.num_rows:
        counts = t.group_by("reason").aggregate([("reason", "count")]).to_pylist()
        data["reasons"] = sorted(((r["reason"], r["reason_count"]) for r in counts), key=str)
        shown = t.sort_by([("reason", "ascending"), ("uri", "ascending")]).slice(0, MAX_REJECTED_ROWS).to_pylist()
        data["rows"] = [{k: r.get(k) for k in ("uri", "reason", "detail", "stage")} for r in shown]
    return data


# =========================================================================== ingest


def ingest_data(part: Part) -> dict:
    stats = _read_json(join(part.path, "stats.json")) or {}
    labels = stats.get("labels") or []
    totals = stats.get("totals", {})
    written = stats.get("written", {})
    d = {
        "totals": {k: totals.get(k) for k in ("matched", "written", "rejected", "skipped_non_data")},
        "written_per_split": _by_split(stats.get("written_per_split", {}).items()),
        "rejected_reasons": list(stats.get("rejected", {}).items()),
        "skipped_kinds": list(stats.get("skipped", {})),
        "balance": None,
        "warnings": stats.get("warnings", []),
        "class_balance": None,
        "duplicates": None,
        "image_stats": [{"split": s, **v} for s, v in _by_split(stats.get("image_stats", {}).items())],
    }
    for s in d["image_stats"]:
        for k in ("images", "brightness_mean", "brightness_std", "contrast_mean", "contrast_std", "sharpness_geomean"):
            s.setdefault(k, None)
    if totals:
        counts = {k: totals.get(k, 0) for k in ("written", "rejected", "skipped_non_data")}
        d["balance"] = {
            "ok": totals.get("matched") == sum(counts.values()),
            "written": counts["written"],
            "rejected": counts["rejected"],
            "skipped": counts["skipped_non_data"],
        }
    if written and labels:
        splits = [sp for sp, _ in _by_split(written.items())]
        rows = [{"label": c, "counts": [int(written[sp].get(c, 0)) for sp in splits]} for c in labels]
        for row in rows:
            row["total"] = sum(row["counts"])
        class_totals = [row["total"] for row in rows]
        d["class_balance"] = {
            "plot": _png(_read(join(part.path, "plots", "class_distribution.png")), "Class distribution per split"),
            "splits": splits,
            "rows": rows,
            "split_totals": [sum(row["counts"][i] for row in rows) for i in range(len(splits))],
            "total": sum(class_totals),
            "missing": [c for c, n in zip(labels, class_totals) if not n],
            "imbalance": max(class_totals) / min(class_totals) if min(class_totals) else None,
        }
    dup = stats.get("duplicates")
    if dup is not None:
        leakage = dup.get("leakage_dropped") or {}
        d["duplicates"] = {
            **{
                k: dup.get(k)
                for k in (
                    "groups",
                    "redundant_files",
                    "dropped_within_split",
                    "conflicting_label_groups",
                    "conflicting_label_files",
                )
            },
            "leakage": sorted(leakage.items()),
            "leakage_total": sum(leakage.values()),
            "clean": not dup.get("groups") and not dup.get("conflicting_label_groups"),
        }
    d["settings"] = [
        _row("input", stats.get("input"), "code"),
        _row("output", stats.get("output"), "code"),
        _row("image size", stats.get("image_size")),
        _row("face crop", stats.get("face_crop")),
        _row("split source", stats.get("split_source")),
        _row("val fraction", stats.get("val_fraction")),
        _row("test fraction", stats.get("test_fraction")),
        _row("val carved from train", stats.get("val_carved_from_train")),
        _row("seed", stats.get("seed")),
        _row("shards per split", stats.get("num_shards")),
        _row("schema version", stats.get("schema_version")),
        _row("data fingerprint", stats.get("fingerprint"), "code"),
    ]
    d["rejected"] = rejected_data(part.path, totals.get("rejected") if totals else None)
    d["glance"] = [f"{fint(totals.get('written'))} images written, {fint(totals.get('rejected'))} rejected"]
    return d


# =========================================================================== train


def _metric_rows(metrics: dict, recommended: str | None) -> list[dict]:
    """One row per metrics key, by split (val, test) then TTA mode (none, flip, crops)."""
    rows = []
    for name, m in metrics.items():
        if not m:
            continue
        split, mode = split_and_tta(name)
        rows.append(
            {
                "name": name,
                "split": split,
                "mode": mode,
                "inference": tta_label(mode),
                "recommended": recommended not in (None, "") and mode == recommended,
                "examples": m.get("examples"),
                "accuracy": m.get("accuracy"),
                "macro_f1": m.get("macro_f1"),
            }
        )
    return sorted(rows, key=lambda r: (SPLIT_ORDER.get(r["split"], 9), TTA_ORDER.get(r["mode"], 9), r["name"]))


def train_data(part: Part) -> dict:
    meta = _read_json(join(part.path, "metadata.json")) or {}
    history = []
    raw = _read(join(part.path, "history.csv"))
    if raw:
        history = list(csv.DictReader(io.StringIO(raw.decode("utf-8", "replace"))))
    training = meta.get("training", {})
    metrics = meta.get("metrics", {})
    tdata = meta.get("training_data", {})
    d = {"cards": [], "glance": [], "metrics": [], "per_class": None, "run": None, "versions": None, "history": None}

    if meta:
        d["cards"].append(
            {
                "kind": "model",
                "model_version": meta.get("model_version"),
                "arch": meta.get("arch"),
                "parameters": meta.get("parameters"),
            }
        )
    for split in ("val", "test"):
        m = metrics.get(split)
        if m:
            numbers = {k: m.get(k) for k in ("macro_f1", "accuracy", "examples")}
            d["cards"].append({"kind": "split", "split": split, **numbers})
    if metrics.get("val"):
        d["glance"].append(f"val macro-F1 {fnum(metrics['val'].get('macro_f1'))}")
    if training:
        d["cards"].append(
            {
                "kind": "epochs",
                "epochs_run": training.get("epochs_run"),
                "best_epoch": training.get("best_epoch"),
                "steps": training.get("steps"),
                "seconds": training.get("seconds_this_run"),
            }
        )
    elif history:
        d["cards"].append({"kind": "epochs_so_far", "epochs": len(history)})
    d["curves"] = _png(
        _read(join(part.path, "plots", "training_curves.png")),
        "Training curves: loss, accuracy / val macro-F1, learning rate",
        "full",
    )

    d["metrics"] = _metric_rows(metrics, meta.get("recommended_tta"))
    with_per_class = [r for r in d["metrics"] if metrics[r["name"]].get("per_class")]
    if with_per_class:
        labels = meta.get("labels") or list(metrics[with_per_class[0]["name"]]["per_class"])
        plain = [r for r in with_per_class if r["mode"] == "none"]  # TTA does not change the support
        d["per_class"] = {
            "f1_heads": [
                f"F1 {r['split']}" + ("" if r["mode"] == "none" else f" ({r['inference']})") for r in with_per_class
            ],
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

    if training or tdata:
        ips = tdata.get("images_per_split") or {}
        replicas = training.get("replicas")
        d["run"] = [
            _row("architecture", meta.get("arch")),
            _row("recommended test-time augmentation", meta.get("recommended_tta")),
            _row("strategy", f"{training.get('strategy')} ({fint(replicas)} replica(s))" if training else None),
            _row("global batch", training.get("global_batch"), "int"),
            _row(
                "optimizer",
                f"{training.get('optimizer')}, peak LR {fnum(training.get('peak_lr'), 4)}" if training else None,
            ),
            _row("mixed precision", training.get("mixed_precision")),
            _row("stopped early", training.get("stopped_early")),
            _row("resumed from step", training.get("resumed_from_step"), "int"),
            _row("training data", tdata.get("path"), "code"),
            _row("images per split", ", ".join(f"{k} {fint(v)}" for k, v in _by_split(ips.items()))),
            _row("data fingerprint", tdata.get("fingerprint"), "code"),
            _row("face crop", tdata.get("face_crop")),
            _row("image size", meta.get("image_size")),
            _row("model fingerprint", meta.get("model_fingerprint"), "code"),
        ]
        if meta.get("versions") or meta.get("command"):
            d["versions"] = [_row(k, v) for k, v in (meta.get("versions") or {}).items()]
            d["versions"].append(_row("command", meta.get("command"), "code"))

    if history:
        columns = ("epoch", "loss", "accuracy", "val_accuracy", "val_macro_f1", "lr", "images_per_s", "epoch_seconds")
        keys = [k for k in columns if k in history[0]]
        d["history"] = {"columns": keys, "rows": [{k: h.get(k) for k in keys} for h in history]}
    return d


# =========================================================================== predict


def _confusion(labels: list[str], matrix: list[list[int]]) -> dict:
    rows = []
    for label, counts in zip(labels, matrix):
        total = sum(counts)
        cells = [{"count": n, "share": n / (total or 1)} for n in counts]
        rows.append({"label": label, "cells": cells, "total": total})
    column_totals = [sum(r[j] for r in matrix) for j in range(len(labels))]
    return {"labels": labels, "rows": rows, "column_totals": column_totals, "total": sum(column_totals)}


def predict_data(part: Part) -> dict:
    summary = _read_json(join(part.path, "summary.json")) or {}
    metrics = _read_json(join(part.path, "evaluation", "metrics.json")) or {}
    totals = summary.get("totals", {})
    part.data = {"summary": summary, "metrics": metrics}
    d = {
        "model_version": summary.get("model_version") or metrics.get("model_version"),
        "model": summary.get("model"),
        "totals": {k: totals.get(k) for k in ("matched", "predicted", "rejected")} if totals else None,
        "labelled": summary.get("labelled"),
        "rejected_reasons": list((summary.get("rejected") or {}).items()),
        "accuracy": metrics.get("accuracy", summary.get("accuracy")),
        "macro_f1": metrics.get("macro_f1", summary.get("macro_f1")),
        "ece": metrics.get("expected_calibration_error"),
        "input": summary.get("input"),
        "face_crop": summary.get("face_crop"),
        "tta": summary.get("tta") or "none",
        "balance": None,
        "parquet_rows": None,
        "evaluation": None,
        "glance": [],
    }
    if d["accuracy"] is not None:
        d["glance"].append(f"accuracy {fnum(d['accuracy'])}, macro-F1 {fnum(d['macro_f1'])}")
    if totals:
        counts = [totals.get(k, 0) for k in ("predicted", "rejected", "skipped_non_data")]
        d["balance"] = {
            "ok": totals.get("matched") == sum(counts),
            "predicted": counts[0],
            "rejected": counts[1],
            "skipped": counts[2],
        }
        d["parquet_rows"] = _parquet_rows(join(part.path, "predictions", "*.parquet"))
        d["glance"].append(f"{fint(counts[0])} predicted, {fint(counts[1])} rejected")
    elif metrics:
        d["glance"].append(f"{fint(metrics.get('examples'))} evaluated")

    if metrics:

        def plot(name, caption, cls=""):
            return _png(_read(join(part.path, "plots", name)), caption, cls)

        ev = {
            "examples": metrics.get("examples"),
            "unlabelled": None,
            "confusion_plot": plot("confusion_matrix.png", "Confusion matrix (rows: true class)"),
            "reliability_plot": plot("reliability.png", "Reliability diagram"),
            "confusion": None,
            "per_class": [],
            "macro": None,
            "per_class_plot": plot("per_class.png", "Per-class precision / recall / F1"),
            "samples_plot": plot(
                "samples.png", "Most confident mistakes (red), then correct predictions (green)", "full"
            ),
        }
        if summary.get("labelled") is not None and metrics.get("examples") is not None and totals:
            ev["unlabelled"] = totals.get("predicted", 0) - metrics["examples"]
        labels = metrics.get("labels") or list(metrics.get("per_class", {}))
        if metrics.get("confusion") and labels:
            ev["confusion"] = _confusion(labels, metrics["confusion"])
        table = _read_parquet(join(part.path, "evaluation", "per_class.parquet"))
        rows = (
            table.to_pylist()
            if table is not None
            else [{"label": c, **v} for c, v in metrics.get("per_class", {}).items()]
        )
        keys = ("label", "precision", "recall", "f1", "support", "predicted")
        ev["per_class"] = [{k: r.get(k) for k in keys} for r in rows]
        if rows:
            ev["macro"] = {
                "precision": sum(r["precision"] for r in rows) / len(rows),
                "recall": sum(r["recall"] for r in rows) / len(rows),
                "support": sum(r["support"] for r in rows),
                "predicted": sum(r["predicted"] for r in rows),
            }
        d["evaluation"] = ev
    d["rejected"] = rejected_data(part.path, totals.get("rejected") if totals else None)
    return d


def compare_data(part: Part) -> dict:
    """An `emotion compare` output: agreement, the two models' labels against each other, per-class
    scores side by side, the most confident disagreements."""
    summary = _read_json(join(part.path, "compare", "comparison.json")) or {}
    agreement = _read_parquet(join(part.path, "compare", "agreement.parquet"))
    per_class = _read_parquet(join(part.path, "compare", "per_class.parquet"))
    differ = _read_parquet(join(part.path, "compare", "disagreements.parquet"))
    matrix = None
    if agreement is not None:
        cells = {(r["label_a"], r["label_b"]): r["count"] for r in agreement.to_pylist()}
        labels = list(dict.fromkeys(r["label_a"] for r in agreement.to_pylist()))
        matrix = _confusion(labels, [[cells.get((a, b), 0) for b in labels] for a in labels])
    d = {
        "s": summary,
        "agreement": matrix,
        "per_class": per_class.to_pylist() if per_class is not None else [],
        "disagreements": differ.slice(0, MAX_DISAGREEMENTS).to_pylist() if differ is not None else [],
        "disagreements_total": differ.num_rows if differ is not None else 0,
        "glance": [f"agreement {fnum(summary.get('agreement'))} on {fint(summary.get('images_in_both'))} images"],
    }
    return d


def comparison_rows(parts: list[Part]) -> list[dict]:
    """The "Models compared" table: one row per evaluated predict output; empty under two."""
    rows = []
    for p in parts:
        s, m = p.data.get("summary", {}), p.data.get("metrics", {})
        if not m:
            continue
        rows.append(
            {
                "anchor": p.anchor,
                "heading": p.title or p.name or "predictions",
                "model_version": s.get("model_version") or m.get("model_version"),
                "input": s.get("input"),
                "tta": s.get("tta") or "none",
                "examples": m.get("examples"),
                "accuracy": m.get("accuracy"),
                "macro_f1": m.get("macro_f1"),
                "ece": m.get("expected_calibration_error"),
            }
        )
    return rows if len(rows) >= 2 else []


# =========================================================================== page

KIND_TITLES = {"ingest": "Data (ingest)", "train": "Training", "predict": "Predictions", "compare": "Models compared"}
SECTION_DATA = {"ingest": ingest_data, "train": train_data, "predict": predict_data, "compare": compare_data}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("beam_pipelines", "templates"),
        autoescape=True,  # every {{ value }} is HTML-escaped unless a template marks it safe
        undefined=jinja2.StrictUndefined,  # a misspelt field fails loudly instead of rendering empty
        finalize=lambda value: "" if value is None else value,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fnum=fnum, fint=fint)
    return env


def render(root: str, title: str, parts: list[Part], manifest: dict, generated: str) -> str:
    """The page for these parts (see templates/report.html.j2)."""
    env = _environment()
    sections = []
    for part in parts:
        heading = part.title or (f"{KIND_TITLES[part.kind]}: {part.name}" if part.name else KIND_TITLES[part.kind])
        section = {"anchor": part.anchor, "kind": part.kind, "heading": heading, "path": part.path, "note": part.note}
        try:
            data = SECTION_DATA[part.kind](part)
            # Rendered apart from the page (the result is Markup) so that one part that cannot be read loses
            # only its own section.
            section.update(body=Markup(env.get_template(f"{part.kind}.html.j2").render(d=data)), glance=data["glance"])
            section["error"] = None
        except Exception as exc:  # one unreadable part must not lose the whole report
            log.warning("report: %s left out: %s: %s", part.path, type(exc).__name__, exc)
            section.update(body="", glance=[], error=f"{type(exc).__name__}: {exc}")
        part.title = heading
        sections.append(section)
    return env.get_template("report.html.j2").render(
        generator_tag=Markup(GENERATOR_TAG),
        title=title,
        root=root,
        generated=generated,
        sections=sections,
        stages=[{k: s.get(k) for k in ("stage", "result", "seconds")} for s in manifest.get("stages") or []],
        compare=comparison_rows([p for p in parts if p.kind == "predict"]),
    )


def build(root: str, title: str | None = None) -> str:
    """Writes root/report.html; returns its path. UsageError when root holds no pipeline output."""
    root = root.rstrip("/") or "/"
    parts = discover(root)
    if not parts:
        if not _exists(root) and not _match(join(root, "*")):
            raise UsageError(f"{root} does not exist")
        raise UsageError(
            f"no ingest, train or predict output in {root} (looked for stats.json, metadata.json, history.csv, "
            "summary.json or evaluation/metrics.json in it and in its subfolders)"
        )
    manifest = _read_json(join(root, MANIFEST)) or {}
    title = title or manifest.get("title") or f"Emotion pipeline report: {root.rstrip('/').rsplit('/', 1)[-1]}"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = render(root, title, parts, manifest, now)
    path = join(root, REPORT_NAME)
    try:
        pipeline_gate([root]).write_bytes(path, page.encode("utf-8"))  # whole or not at all; a link there is replaced
    except OSError as exc:
        raise UsageError(f"cannot write {path} ({exc.strerror or exc}): choose another --output or fix its "
                         "permissions") from None
    return path


def check_report_is_ours(root: str) -> None:
    """A report.html already in the folder is replaced only if this command wrote it."""
    path = join(root, REPORT_NAME)
    if FileSystems.exists(path) and GENERATOR_TAG.encode() not in read_bytes(path)[:4096]:
        raise UsageError(f"{path} exists and was not written by emotion report; move it away first")


def run(argv=None) -> str:
    args = parse_args(argv)
    check_report_is_ours(args.output)
    path = build(args.output, args.title)
    print(f"report: {path}")
    return path
