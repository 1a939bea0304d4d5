"""The evaluation's plots of its metrics: confusion, per-class precision/recall/F1, reliability, and
accuracy against coverage (PNG bytes, written by WriteEvaluation)."""

from __future__ import annotations

import numpy as np

from model.files import png_bytes, pyplot
from schemas import LABELS, NUM_CLASSES


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
    ax.bar(centres, [b["accuracy"] for b in bins], width=1 / len(m["calibration"]), alpha=0.7, edgecolor="black",
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
        at = curve[min(len(curve) - 1, int(np.floor(chosen * len(curve) + 1e-9)))]
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
