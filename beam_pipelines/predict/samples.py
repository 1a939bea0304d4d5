"""The evaluation's sample images: a bounded set per kind (the most confident mistakes, a few correct
rows, the least confident rows, a few per predicted class), ranked by a hash of the pixels so that any
runner keeps the same, and the grids of thumbnails drawn from them."""

from __future__ import annotations

import heapq
from typing import NamedTuple

import numpy as np

from model.files import png_bytes, pyplot
from schemas import LABELS

MAX_MISTAKES = 24


MAX_CORRECT = 8


MAX_LOW_CONFIDENCE = 16


MAX_PER_CLASS = 6


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


def hash_rank(columns, i) -> float:
    """A runner-independent pseudo-random rank of row i: from its pixels' hash (and face)."""
    return float(-(int(columns["content_sha256"][i][:8], 16) ^ (columns["face_index"][i] or 0)))


def sample_of(columns, thumbnails, i) -> Sample:
    return Sample(columns["uri"][i], columns["true_label"][i], columns["predicted_label"][i],
                  columns["confidence"][i], thumbnails[i].tobytes(), columns["face_index"][i])


def offer(heap, rank, columns, thumbnails, i, limit):
    uri = columns["uri"][i]
    if len(heap) < limit or (rank, uri) > (heap[0].rank, heap[0].uri):
        push(heap, Ranked(float(rank), uri, sample_of(columns, thumbnails, i)), limit)


def push(heap, item, limit):
    if len(heap) < limit:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)


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
