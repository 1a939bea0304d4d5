"""Evaluation inside the predict pipeline: a CombineFn over prediction rows, and its writers.

The accumulator is small and fixed-size whatever the number of predictions: a 7x7
confusion matrix, calibration bins, counts, and a bounded set of sample images (the most
confident mistakes, then a few correct ones), so it scales with the pipeline.
"""

from __future__ import annotations

import heapq
import json
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from beam_pipelines.common import join, parquet_bytes, write_bytes
from model.files import png_bytes, pyplot
from model.metrics import calibration_bins, expected_calibration_error, summarize
from schemas import CONFUSION_SCHEMA, LABEL_TO_INDEX, LABELS, NUM_CLASSES, PER_CLASS_SCHEMA

CALIBRATION_BINS = 15
MAX_MISTAKES = 24
MAX_CORRECT = 8


class Scored(NamedTuple):
    """A batch of predictions, as the evaluation combines them."""

    rows: pa.Table  # PREDICTIONS_SCHEMA columns (those the evaluation reads, at least)
    thumbnails: np.ndarray | None  # (N, S*S) uint8, for the samples plot


class Sample(NamedTuple):
    """An image of the samples plot."""

    uri: str
    true_label: str
    predicted_label: str
    confidence: float
    thumbnail: bytes  # S*S uint8


class Ranked(NamedTuple):
    """A heap entry: a sample and what ranks it (rank, then uri, so that any runner keeps the same)."""

    rank: float
    uri: str
    sample: Sample


class EvaluationFn(beam.CombineFn):
    """Combines Scored batches ((rows, thumbnails) pairs) into confusion, calibration and sample
    accumulators, a whole batch at a time."""

    def create_accumulator(self):
        return {
            "predicted": 0,
            "labelled": 0,
            "confusion": np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64),
            "bins": (np.zeros(CALIBRATION_BINS, np.int64), np.zeros(CALIBRATION_BINS), np.zeros(CALIBRATION_BINS)),
            "mistakes": [],  # min-heap of Ranked by confidence: the most confident mistakes
            "correct": [],  # min-heap of Ranked by -hash: a hash-chosen, runner-independent few
        }

    def add_input(self, acc, element):
        rows, thumbnails = Scored(*element)
        acc["predicted"] += rows.num_rows
        columns = rows.select(["uri", "content_sha256", "true_label", "predicted_label", "predicted_index",
                               "confidence"]).to_pydict()
        labelled = [i for i, label in enumerate(columns["true_label"]) if label is not None]
        if not labelled:
            return acc
        acc["labelled"] += len(labelled)
        t = np.array([LABEL_TO_INDEX[columns["true_label"][i]] for i in labelled])
        p = np.asarray(columns["predicted_index"], np.int64)[labelled]
        confidence = np.asarray(columns["confidence"], np.float64)[labelled]
        np.add.at(acc["confusion"], (t, p), 1)
        count, conf_sum, corr_sum = calibration_bins(confidence, t == p, CALIBRATION_BINS)
        acc["bins"] = (acc["bins"][0] + count, acc["bins"][1] + conf_sum, acc["bins"][2] + corr_sum)
        if thumbnails is not None:
            self._add_samples(acc, columns, thumbnails, labelled, t == p)
        return acc

    @staticmethod
    def _add_samples(acc, columns, thumbnails, labelled, right):
        def sample(i):
            return Sample(columns["uri"][i], columns["true_label"][i], columns["predicted_label"][i],
                          columns["confidence"][i], thumbnails[i].tobytes())

        for i, ok in zip(labelled, right):
            uri = columns["uri"][i]
            heap, limit = (acc["correct"], MAX_CORRECT) if ok else (acc["mistakes"], MAX_MISTAKES)
            rank = -int(columns["content_sha256"][i][:8], 16) if ok else columns["confidence"][i]
            if len(heap) < limit or (rank, uri) > (heap[0].rank, heap[0].uri):  # build the sample only if kept
                _push(heap, Ranked(rank, uri, sample(i)), limit)

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for acc in accs:
            out["predicted"] += acc["predicted"]
            out["labelled"] += acc["labelled"]
            out["confusion"] += acc["confusion"]
            out["bins"] = tuple(a + b for a, b in zip(out["bins"], acc["bins"]))
            for key, limit in (("mistakes", MAX_MISTAKES), ("correct", MAX_CORRECT)):
                for entry in acc[key]:
                    _push(out[key], entry, limit)
        return out

    def extract_output(self, acc):
        return acc


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
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(NUM_CLASSES):
        for j in range(NUM_CLASSES):
            ax.text(j, i, f"{int(matrix[i, j])}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(NUM_CLASSES), LABELS, rotation=45, ha="right")
    ax.set_yticks(range(NUM_CLASSES), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion (row-normalised) - accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return png_bytes(fig)


def plot_per_class(m) -> bytes:
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


def plot_samples(acc, image_size: int) -> bytes:
    plt = pyplot()

    mistakes = [entry.sample for entry in sorted(acc["mistakes"], reverse=True)]
    correct = [entry.sample for entry in sorted(acc["correct"], reverse=True)]
    items = mistakes + correct
    cols = 8
    rows = max(1, -(-len(items) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.35, rows * 1.6), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, s in zip(axes.flat, items):
        ax.imshow(np.frombuffer(s.thumbnail, np.uint8).reshape(image_size, image_size), cmap="gray", vmin=0,
                  vmax=255)
        ax.set_title(f"{s.true_label}->{s.predicted_label}\n{s.confidence:.2f}", fontsize=7,
                     color="C3" if s.true_label != s.predicted_label else "C2")
    fig.suptitle("Most confident mistakes (red: true->predicted, confidence), then correct samples (green)",
                 fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


class WriteEvaluation(beam.DoFn):
    """Writes metrics.json, per_class.parquet, confusion.parquet and the plots."""

    def __init__(self, output: str, model):
        self.output, self.model = output, model  # model: predict_options.ModelInfo

    def process(self, acc):
        if acc["labelled"] == 0:
            yield {"predicted": acc["predicted"], "labelled": 0}
            return
        m = metrics_from(acc)
        out = join(self.output, "evaluation")
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
        write_bytes(join(out, "metrics.json"), (json.dumps(metrics, indent=2) + "\n").encode(), "application/json")
        per_class = [{"label": c, **m["per_class"][c]} for c in LABELS]
        write_bytes(join(out, "per_class.parquet"), parquet_bytes(pa.Table.from_pylist(per_class, schema=PER_CLASS_SCHEMA)))
        confusion = [
            {"true_label": LABELS[i], "predicted_label": LABELS[j], "count": int(m["confusion"][i][j])}
            for i in range(NUM_CLASSES)
            for j in range(NUM_CLASSES)
        ]
        write_bytes(join(out, "confusion.parquet"), parquet_bytes(pa.Table.from_pylist(confusion, schema=CONFUSION_SCHEMA)))
        plots = join(self.output, "plots")
        write_bytes(join(plots, "confusion_matrix.png"), plot_confusion(m), "image/png")
        write_bytes(join(plots, "per_class.png"), plot_per_class(m), "image/png")
        write_bytes(join(plots, "reliability.png"), plot_reliability(m), "image/png")
        write_bytes(join(plots, "samples.png"), plot_samples(acc, self.model.image_size), "image/png")
        yield {"predicted": acc["predicted"], "labelled": acc["labelled"], "accuracy": m["accuracy"],
               "macro_f1": m["macro_f1"]}
