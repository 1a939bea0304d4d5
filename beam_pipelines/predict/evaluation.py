"""Evaluation inside the predict pipeline: a CombineFn over prediction rows, and its writers.

The accumulator is small and fixed-size whatever the number of predictions: a 7x7 confusion
matrix, calibration and coverage bins, the predicted-class mix and confidence histogram, counts
(answered rows with --min-confidence/--min-margin), a 7x7 confusion per slice value with --slices,
and a bounded set of sample images (the most confident mistakes, a few correct ones, the least
confident rows, a few per predicted class), so it scales with the pipeline.

Every row counts once: with --faces all a row is a face, and each face of an image in a class
folder carries that folder's label (docs/photo-archives.md).
"""

from __future__ import annotations

import heapq
import json
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_pipelines.base.files import join, parquet_bytes, write_bytes
from beam_pipelines.predict.slices import slice_rows
from model.files import png_bytes, pyplot
from model.metrics import calibration_bins, expected_calibration_error, summarize
from schemas import (
    CONFUSION_SCHEMA,
    COVERAGE_SCHEMA,
    LABEL_TO_INDEX,
    LABELS,
    NUM_CLASSES,
    PER_CLASS_SCHEMA,
    SLICES_SCHEMA,
)

CALIBRATION_BINS = 15
COVERAGE_BINS = 100  # the accuracy-coverage curve's thresholds: 0.00, 0.01, ... 0.99
MAX_MISTAKES = 24
MAX_CORRECT = 8
MAX_LOW_CONFIDENCE = 16
MAX_PER_CLASS = 6


class Scored(NamedTuple):
    """A batch of predictions, as the evaluation combines them."""

    rows: pa.Table  # PREDICTIONS_SCHEMA columns (those the evaluation reads, at least)
    thumbnails: np.ndarray | None  # (N, S*S) uint8, for the samples plots
    slices: list | None = None  # --slices: each row's values of the slicing columns (None: not listed)


class Sample(NamedTuple):
    """An image of the samples plots."""

    uri: str
    true_label: str | None
    predicted_label: str
    confidence: float
    thumbnail: bytes  # S*S uint8
    face_index: int | None = None


class Ranked(NamedTuple):
    """A heap entry: a sample and what ranks it (rank, then uri, so that any runner keeps the same)."""

    rank: float
    uri: str
    sample: Sample


def _column(rows: pa.Table, name: str, default=None) -> list:
    """A column as a list; `default` for each row when the table has no such column (rows written by
    callers that do not carry it)."""
    return rows[name].to_pylist() if name in rows.column_names else [default] * rows.num_rows


class EvaluationFn(beam.CombineFn):
    """Combines Scored batches into fixed-size accumulators, a whole batch at a time: over every row,
    the predicted-class mix, the confidence histogram, the rows answered (not abstained), the
    lowest-confidence and per-predicted-class samples; over the labelled rows, the confusion,
    calibration and coverage bins and the mistakes; with slicing columns, a confusion per value."""

    def __init__(self, slice_columns: tuple[str, ...] = ()):
        self.slice_columns = tuple(slice_columns)

    def create_accumulator(self):
        return {
            "predicted": 0,  # rows: images, or faces with --faces all
            "images": 0,  # rows of a first face, or of a whole image
            "labelled": 0,
            "answered": 0,  # rows not abstained
            "answered_labelled": 0,
            "answered_correct": 0,
            "confusion": np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64),
            "bins": (np.zeros(CALIBRATION_BINS, np.int64), np.zeros(CALIBRATION_BINS), np.zeros(CALIBRATION_BINS)),
            "coverage": (np.zeros(COVERAGE_BINS, np.int64), np.zeros(COVERAGE_BINS, np.int64)),  # labelled, correct
            "predicted_mix": np.zeros(NUM_CLASSES, np.int64),
            "confidence_hist": np.zeros(COVERAGE_BINS, np.int64),
            "mistakes": [],  # min-heap of Ranked by confidence: the most confident mistakes
            "correct": [],  # min-heap of Ranked by -hash: a hash-chosen, runner-independent few
            "low_confidence": [],  # min-heap of Ranked by -confidence: the least confident rows
            "per_class": [[] for _ in range(NUM_CLASSES)],  # per predicted class, a hash-chosen few
            "slices": {c: {} for c in self.slice_columns},  # column -> value -> rows, answered, confusion
        }

    def add_input(self, acc, element):
        scored = Scored(*element)
        rows, thumbnails = scored.rows, scored.thumbnails
        n = rows.num_rows
        acc["predicted"] += n
        columns = rows.select(["uri", "content_sha256", "true_label", "predicted_label", "predicted_index",
                               "confidence"]).to_pydict()
        columns["face_index"] = _column(rows, "face_index")
        p_all = np.asarray(columns["predicted_index"], np.int64)
        confidence_all = np.asarray(columns["confidence"], np.float64)
        answered = ~_flag(rows, "abstained")
        acc["images"] += n - int(np.count_nonzero(np.asarray([f or 0 for f in columns["face_index"]])))
        acc["answered"] += int(answered.sum())
        acc["predicted_mix"] += np.bincount(p_all, minlength=NUM_CLASSES)
        acc["confidence_hist"] += np.bincount(_coverage_bin(confidence_all), minlength=COVERAGE_BINS)
        if thumbnails is not None:
            self._add_overview_samples(acc, columns, thumbnails, p_all, confidence_all)
        true_all = np.array([LABEL_TO_INDEX[t] if t is not None else -1 for t in columns["true_label"]], np.int64)
        if self.slice_columns and scored.slices is not None:
            self._add_slices(acc, scored.slices, true_all, p_all, answered)
        labelled = np.flatnonzero(true_all >= 0)
        if not len(labelled):
            return acc
        acc["labelled"] += len(labelled)
        t, p, confidence = true_all[labelled], p_all[labelled], confidence_all[labelled]
        right = t == p
        acc["answered_labelled"] += int(answered[labelled].sum())
        acc["answered_correct"] += int((answered[labelled] & right).sum())
        np.add.at(acc["confusion"], (t, p), 1)
        count, conf_sum, corr_sum = calibration_bins(confidence, right, CALIBRATION_BINS)
        acc["bins"] = (acc["bins"][0] + count, acc["bins"][1] + conf_sum, acc["bins"][2] + corr_sum)
        where = _coverage_bin(confidence)
        acc["coverage"] = (acc["coverage"][0] + np.bincount(where, minlength=COVERAGE_BINS),
                           acc["coverage"][1] + np.bincount(where[right], minlength=COVERAGE_BINS))
        if thumbnails is not None:
            self._add_samples(acc, columns, thumbnails, labelled, right)
        return acc

    @staticmethod
    def _add_samples(acc, columns, thumbnails, labelled, right):
        for i, ok in zip(labelled, right):
            uri = columns["uri"][i]
            heap, limit = (acc["correct"], MAX_CORRECT) if ok else (acc["mistakes"], MAX_MISTAKES)
            rank = _hash_rank(columns, i) if ok else columns["confidence"][i]
            if len(heap) < limit or (rank, uri) > (heap[0].rank, heap[0].uri):  # build the sample only if kept
                _push(heap, Ranked(rank, uri, _sample(columns, thumbnails, i)), limit)

    @staticmethod
    def _add_overview_samples(acc, columns, thumbnails, predicted, confidence):
        """The batch's candidates only (a few rows, chosen with numpy): its least confident rows, and
        per predicted class its rows of highest hash rank."""
        for i in np.argsort(confidence, kind="stable")[:MAX_LOW_CONFIDENCE]:
            _offer(acc["low_confidence"], -confidence[i], columns, thumbnails, int(i), MAX_LOW_CONFIDENCE)
        ranks = np.array([_hash_rank(columns, i) for i in range(len(predicted))], np.float64)
        for label in np.unique(predicted):
            members = np.flatnonzero(predicted == label)
            for i in members[np.argsort(-ranks[members], kind="stable")[:MAX_PER_CLASS]]:
                _offer(acc["per_class"][label], ranks[i], columns, thumbnails, int(i), MAX_PER_CLASS)

    def _add_slices(self, acc, values_per_row, true, predicted, answered):
        for k, column in enumerate(self.slice_columns):
            groups = acc["slices"][column]
            for i, values in enumerate(values_per_row):
                value = None if values is None else values[k]
                g = groups.get(value)
                if g is None:
                    g = groups[value] = {"rows": 0, "answered": 0,
                                         "confusion": np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)}
                g["rows"] += 1
                g["answered"] += int(answered[i])
                if true[i] >= 0:
                    g["confusion"][true[i], predicted[i]] += 1

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for acc in accs:
            for key in ("predicted", "images", "labelled", "answered", "answered_labelled", "answered_correct",
                        "confusion", "predicted_mix", "confidence_hist"):
                out[key] += acc[key]
            out["bins"] = tuple(a + b for a, b in zip(out["bins"], acc["bins"]))
            out["coverage"] = tuple(a + b for a, b in zip(out["coverage"], acc["coverage"]))
            for key, limit in (("mistakes", MAX_MISTAKES), ("correct", MAX_CORRECT),
                               ("low_confidence", MAX_LOW_CONFIDENCE)):
                for entry in acc[key]:
                    _push(out[key], entry, limit)
            for heap, entries in zip(out["per_class"], acc["per_class"]):
                for entry in entries:
                    _push(heap, entry, MAX_PER_CLASS)
            for column, groups in acc["slices"].items():
                merged = out["slices"].setdefault(column, {})
                for value, g in groups.items():
                    m = merged.setdefault(value, {"rows": 0, "answered": 0,
                                                  "confusion": np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)})
                    m["rows"] += g["rows"]
                    m["answered"] += g["answered"]
                    m["confusion"] = m["confusion"] + g["confusion"]
        return out

    def extract_output(self, acc):
        return acc


def _flag(rows: pa.Table, name: str) -> np.ndarray:
    """A nullable bool column as a numpy array, null (or no such column) as False."""
    if name not in rows.column_names:
        return np.zeros(rows.num_rows, bool)
    return pc.fill_null(rows[name], False).to_numpy(zero_copy_only=False).astype(bool)


def _coverage_bin(confidence: np.ndarray) -> np.ndarray:
    return np.clip((confidence * COVERAGE_BINS).astype(np.int64), 0, COVERAGE_BINS - 1)


def _hash_rank(columns, i) -> float:
    """A runner-independent pseudo-random rank of row i: from its pixels' hash (and face)."""
    return float(-(int(columns["content_sha256"][i][:8], 16) ^ (columns["face_index"][i] or 0)))


def _sample(columns, thumbnails, i) -> Sample:
    return Sample(columns["uri"][i], columns["true_label"][i], columns["predicted_label"][i],
                  columns["confidence"][i], thumbnails[i].tobytes(), columns["face_index"][i])


def _offer(heap, rank, columns, thumbnails, i, limit):
    uri = columns["uri"][i]
    if len(heap) < limit or (rank, uri) > (heap[0].rank, heap[0].uri):
        _push(heap, Ranked(float(rank), uri, _sample(columns, thumbnails, i)), limit)


def _push(heap, item, limit):
    if len(heap) < limit:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)


def metrics_from(acc) -> dict:
    m = summarize(acc["confusion"])
    count, conf, corr = acc["bins"]
    m["expected_calibration_error"] = expected_calibration_error(count, conf, corr)
    m["calibration"] = [
        {
            "bin_low": i / CALIBRATION_BINS,
            "bin_high": (i + 1) / CALIBRATION_BINS,
            "count": int(count[i]),
            "mean_confidence": float(conf[i] / count[i]) if count[i] else None,
            "accuracy": float(corr[i] / count[i]) if count[i] else None,
        }
        for i in range(CALIBRATION_BINS)
    ]
    return m


def plot_confusion(m) -> bytes:
    plt = pyplot()

    matrix = np.asarray(m["confusion"], np.float64)
    norm = matrix / np.maximum(1, matrix.sum(axis=1, keepdims=True))
    # Drawn large (the page shows it at about half its width): the counts stay readable there.
    fig, ax = plt.subplots(figsize=(7.2, 6.4), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(NUM_CLASSES):
        for j in range(NUM_CLASSES):
            ax.text(j, i, f"{int(matrix[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=13,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(NUM_CLASSES), LABELS, rotation=45, ha="right", fontsize=12)
    ax.set_yticks(range(NUM_CLASSES), LABELS, fontsize=12)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion (row-normalised) - accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return png_bytes(fig)


def plot_per_class_metrics(m) -> bytes:
    plt = pyplot()

    x = np.arange(NUM_CLASSES)
    fig, ax = plt.subplots(figsize=(8, 3.8), dpi=100)
    for k, key in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, [m["per_class"][c][key] for c in LABELS], 0.27, label=key)
    ax.set_xticks(x, [f"{c}\n(n={m['per_class'][c]['support']})" for c in LABELS], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("Per-class precision / recall / F1")
    ax.legend(ncol=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def plot_reliability(m) -> bytes:
    plt = pyplot()

    bins = [b for b in m["calibration"] if b["count"]]
    fig, ax = plt.subplots(figsize=(4.8, 4.4), dpi=100)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    centres = [(b["bin_low"] + b["bin_high"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] for b in bins], width=1 / CALIBRATION_BINS, alpha=0.7, edgecolor="black",
           label="accuracy")
    ax.plot([b["mean_confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="C3",
            label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability - ECE {m['expected_calibration_error']:.3f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def coverage_curve(acc) -> list[dict]:
    """The accuracy-coverage curve of the labelled rows (schemas.COVERAGE_SCHEMA): for each threshold,
    the rows a --min-confidence of it would answer, and their accuracy."""
    counts, correct = acc["coverage"]
    answered = np.cumsum(counts[::-1])[::-1]  # rows at or above each threshold
    right = np.cumsum(correct[::-1])[::-1]
    total = max(1, int(acc["labelled"]))
    return [{"min_confidence": i / COVERAGE_BINS, "answered": int(answered[i]), "correct": int(right[i]),
             "coverage": float(answered[i] / total), "accuracy": float(right[i] / answered[i]) if answered[i] else None}
            for i in range(COVERAGE_BINS)]


def abstention(acc, min_confidence: float | None, min_margin: float | None) -> dict:
    """summary.json's abstention: the rows answered (not abstained), coverage, and the accuracy of the
    labelled rows answered; counted from the rows' `abstained` column."""
    rows, labelled = acc["predicted"], acc["labelled"]
    answered, answered_labelled = acc["answered"], acc["answered_labelled"]
    return {
        "min_confidence": min_confidence,
        "min_margin": min_margin,
        "rows": rows,
        "answered": answered,
        "abstained": rows - answered,
        "coverage": answered / rows if rows else None,
        "labelled": labelled,
        "labelled_answered": answered_labelled,
        "labelled_coverage": answered_labelled / labelled if labelled else None,
        "accuracy_answered": acc["answered_correct"] / answered_labelled if answered_labelled else None,
        "accuracy_all": float(np.trace(acc["confusion"]) / labelled) if labelled else None,
    }


def overview(acc) -> dict:
    """evaluation/overview.json, for labelled and unlabelled runs alike: what the model predicted
    (its class mix) and how sure it was (the confidence histogram in 20 bins)."""
    hist = acc["confidence_hist"].reshape(20, -1).sum(axis=1)
    return {
        "rows": acc["predicted"],
        "images": acc["images"],
        "predicted_mix": {label: int(n) for label, n in zip(LABELS, acc["predicted_mix"])},
        "confidence_histogram": [{"low": i / 20, "high": (i + 1) / 20, "count": int(n)} for i, n in enumerate(hist)],
        "answered": acc["answered"],
    }


def plot_accuracy_coverage(curve: list[dict], chosen: float | None) -> bytes:
    plt = pyplot()

    points = [c for c in curve if c["answered"]]
    fig, ax = plt.subplots(figsize=(5.6, 4.4), dpi=100)
    ax.plot([c["coverage"] for c in points], [c["accuracy"] for c in points], "-", color="C0")
    for c in points:
        if round(c["min_confidence"] * 10, 6) % 1 == 0:  # label every 0.1
            ax.plot(c["coverage"], c["accuracy"], "o", color="C0", ms=4)
            ax.annotate(f"{c['min_confidence']:.1f}", (c["coverage"], c["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=9)
    if chosen is not None:
        at = curve[min(len(curve) - 1, int(np.floor(chosen * COVERAGE_BINS + 1e-9)))]
        if at["answered"]:
            ax.plot(at["coverage"], at["accuracy"], "s", color="C3", ms=8, label=f"--min-confidence {chosen:g}")
            ax.legend(fontsize=9, loc="lower left")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("coverage (share of labelled rows answered)")
    ax.set_ylabel("accuracy of the rows answered")
    ax.set_title("Accuracy against coverage, by minimum confidence")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def plot_grid(samples: list[Sample], image_size: int, title: str, caption, cols: int = 8) -> bytes:
    """Thumbnails in a grid, each with its caption(sample) -> (text, colour)."""
    plt = pyplot()

    rows = max(1, -(-len(samples) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.35, rows * 1.85), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, samples):
        ax.imshow(np.frombuffer(s.thumbnail, np.uint8).reshape(image_size, image_size), cmap="gray", vmin=0,
                  vmax=255)
        text, colour = caption(s)
        ax.set_title(text, fontsize=7, color=colour)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def _name(s: Sample) -> str:
    name = s.uri.rsplit("/", 1)[-1][:14]
    return name if s.face_index is None else f"{name} #{s.face_index}"


def plot_samples(acc, image_size: int) -> bytes:
    mistakes = [entry.sample for entry in sorted(acc["mistakes"], reverse=True)]
    correct = [entry.sample for entry in sorted(acc["correct"], reverse=True)]
    return plot_grid(mistakes + correct, image_size,
                     "Most confident mistakes (red: true->predicted, confidence), then correct samples (green)",
                     lambda s: (f"{s.true_label}->{s.predicted_label}\n{s.confidence:.2f}",
                                "C3" if s.true_label != s.predicted_label else "C2"))


def plot_low_confidence(acc, image_size: int) -> bytes:
    samples = [entry.sample for entry in sorted(acc["low_confidence"], reverse=True)]
    return plot_grid(samples, image_size, "Least confident predictions (predicted class, confidence, file)",
                     lambda s: (f"{s.predicted_label} {s.confidence:.2f}\n{_name(s)}", "C3"))


def plot_predicted_classes(acc, image_size: int) -> bytes | None:
    """A row of thumbnails per predicted class (classes never predicted are left out)."""
    samples = []
    for label, heap in zip(LABELS, acc["per_class"]):
        chosen = [entry.sample for entry in sorted(heap, reverse=True)]
        samples += chosen + [None] * (MAX_PER_CLASS - len(chosen)) if chosen else []
    if not samples:
        return None
    filled = [s for s in samples if s is not None]
    plt = pyplot()

    rows = len(samples) // MAX_PER_CLASS
    fig, axes = plt.subplots(rows, MAX_PER_CLASS, figsize=(MAX_PER_CLASS * 1.35, rows * 1.55), dpi=100, squeeze=False)
    for ax, s in zip(axes.flat, samples):
        ax.axis("off")
        if s is not None:
            ax.imshow(np.frombuffer(s.thumbnail, np.uint8).reshape(image_size, image_size), cmap="gray", vmin=0,
                      vmax=255)
            ax.set_title(f"{s.predicted_label} {s.confidence:.2f}", fontsize=7)
    fig.suptitle(f"Predicted as each class ({len(filled)} rows chosen by hash, a row per class)", fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


class WriteEvaluation(beam.DoFn):
    """Writes evaluation/overview.json and its plots for every run; with labels, metrics.json,
    per_class.parquet, confusion.parquet, coverage.parquet and their plots; with --slices,
    slices.parquet. Yields what summary.json takes from the evaluation."""

    def __init__(self, output: str, model, options=None, slice_columns: tuple[str, ...] = ()):
        self.output, self.model = output, model  # model: options.ModelInfo
        self.options, self.slice_columns = options, tuple(slice_columns)  # options: options.PredictOptions

    def process(self, acc):
        out, plots = join(self.output, "evaluation"), join(self.output, "plots")
        min_confidence = getattr(self.options, "min_confidence", None)
        evaluated = {"predicted": acc["predicted"], "images": acc["images"], "labelled": acc["labelled"],
                     "abstention": abstention(acc, min_confidence, getattr(self.options, "min_margin", None))}
        _write_json(join(out, "overview.json"), overview(acc))
        if acc["predicted"]:
            write_bytes(join(plots, "low_confidence.png"), plot_low_confidence(acc, self.model.image_size), "image/png")
            per_class = plot_predicted_classes(acc, self.model.image_size)
            if per_class:
                write_bytes(join(plots, "predicted_classes.png"), per_class, "image/png")
        if self.slice_columns:
            rows = slice_rows(list(self.slice_columns), acc["slices"])
            write_bytes(join(out, "slices.parquet"), parquet_bytes(pa.Table.from_pylist(rows, schema=SLICES_SCHEMA)))
        if acc["labelled"] == 0:
            yield evaluated
            return
        m = metrics_from(acc)
        self._write_metrics(out, plots, m, acc, min_confidence)
        yield {**evaluated, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}

    def _write_metrics(self, out, plots, m, acc, min_confidence):
        curve = coverage_curve(acc)
        metrics = {
            **self.model.names(),
            "examples": m["examples"],
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "expected_calibration_error": m["expected_calibration_error"],
            "per_class": m["per_class"],
            "labels": list(LABELS),
            "confusion": m["confusion"],
            "calibration": m["calibration"],
        }
        _write_json(join(out, "metrics.json"), metrics)
        per_class = [{"label": c, **m["per_class"][c]} for c in LABELS]
        write_bytes(join(out, "per_class.parquet"), parquet_bytes(pa.Table.from_pylist(per_class, schema=PER_CLASS_SCHEMA)))
        confusion = [
            {"true_label": LABELS[i], "predicted_label": LABELS[j], "count": int(m["confusion"][i][j])}
            for i in range(NUM_CLASSES)
            for j in range(NUM_CLASSES)
        ]
        write_bytes(join(out, "confusion.parquet"), parquet_bytes(pa.Table.from_pylist(confusion, schema=CONFUSION_SCHEMA)))
        write_bytes(join(out, "coverage.parquet"), parquet_bytes(pa.Table.from_pylist(curve, schema=COVERAGE_SCHEMA)))
        write_bytes(join(plots, "confusion_matrix.png"), plot_confusion(m), "image/png")
        write_bytes(join(plots, "per_class.png"), plot_per_class_metrics(m), "image/png")
        write_bytes(join(plots, "reliability.png"), plot_reliability(m), "image/png")
        write_bytes(join(plots, "accuracy_coverage.png"), plot_accuracy_coverage(curve, min_confidence), "image/png")
        write_bytes(join(plots, "samples.png"), plot_samples(acc, self.model.image_size), "image/png")


def _write_json(path: str, value: dict) -> None:
    write_bytes(path, (json.dumps(value, indent=2) + "\n").encode(), "application/json")
