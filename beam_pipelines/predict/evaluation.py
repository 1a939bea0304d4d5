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

import json
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_pipelines.base.files import join, parquet_bytes, write_bytes
from beam_pipelines.predict.evaluation_plots import (
    plot_accuracy_coverage,
    plot_confusion,
    plot_per_class_metrics,
    plot_reliability,
)
from beam_pipelines.predict.samples import (
    MAX_CORRECT,
    MAX_LOW_CONFIDENCE,
    MAX_MISTAKES,
    MAX_PER_CLASS,
    Ranked,
    hash_rank,
    offer,
    plot_low_confidence,
    plot_predicted_classes,
    plot_samples,
    push,
    sample_of,
)
from beam_pipelines.predict.slices import slice_rows
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


class Scored(NamedTuple):
    """A batch of predictions, as the evaluation combines them."""

    rows: pa.Table  # PREDICTIONS_SCHEMA columns (those the evaluation reads, at least)
    thumbnails: np.ndarray | None  # (N, S*S) uint8, for the samples plots
    slices: list | None = None  # --slices: each row's values of the slicing columns (None: not listed)


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
            rank = hash_rank(columns, i) if ok else columns["confidence"][i]
            if len(heap) < limit or (rank, uri) > (heap[0].rank, heap[0].uri):  # build the sample only if kept
                push(heap, Ranked(rank, uri, sample_of(columns, thumbnails, i)), limit)

    @staticmethod
    def _add_overview_samples(acc, columns, thumbnails, predicted, confidence):
        """The batch's candidates only (a few rows, chosen with numpy): its least confident rows, and
        per predicted class its rows of highest hash rank."""
        for i in np.argsort(confidence, kind="stable")[:MAX_LOW_CONFIDENCE]:
            offer(acc["low_confidence"], -confidence[i], columns, thumbnails, int(i), MAX_LOW_CONFIDENCE)
        ranks = np.array([hash_rank(columns, i) for i in range(len(predicted))], np.float64)
        for label in np.unique(predicted):
            members = np.flatnonzero(predicted == label)
            for i in members[np.argsort(-ranks[members], kind="stable")[:MAX_PER_CLASS]]:
                offer(acc["per_class"][label], ranks[i], columns, thumbnails, int(i), MAX_PER_CLASS)

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
                    push(out[key], entry, limit)
            for heap, entries in zip(out["per_class"], acc["per_class"]):
                for entry in entries:
                    push(heap, entry, MAX_PER_CLASS)
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
