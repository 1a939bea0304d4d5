"""Classification metrics on confusion matrices (numpy only; Beam's evaluation reuses them)."""

from __future__ import annotations

import numpy as np

from schemas import LABELS, NUM_CLASSES


def confusion(y_true, y_pred, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return m


def summarize(matrix: np.ndarray) -> dict:
    """accuracy, macro-F1 and per-class precision/recall/F1/support from a confusion matrix.

    Classes with no support and no predictions are left out of the macro average.
    """
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (support + predicted) > 0
    total = matrix.sum()
    return {
        "examples": int(total),
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
                "predicted": int(predicted[i]),
            }
            for i, label in enumerate(LABELS)
        },
        "confusion": matrix.astype(np.int64).tolist(),
    }


def calibration_bin(confidence, bins: int = 15):
    """The equal-width confidence bin (0 .. bins-1) of a confidence or an array of them."""
    return np.minimum((np.asarray(confidence, np.float64) * bins).astype(np.int64), bins - 1)


def calibration_bins(confidence, correct, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, sum of confidence, sum of correct) per equal-width confidence bin."""
    confidence = np.asarray(confidence, np.float64)
    idx = calibration_bin(confidence, bins)
    count = np.bincount(idx, minlength=bins).astype(np.int64)
    conf_sum = np.bincount(idx, weights=confidence, minlength=bins)
    corr_sum = np.bincount(idx, weights=np.asarray(correct, np.float64), minlength=bins)
    return count, conf_sum, corr_sum


def expected_calibration_error(count, conf_sum, corr_sum) -> float:
    count = np.asarray(count, np.float64)
    total = count.sum()
    if total == 0:
        return 0.0
    nz = count > 0
    return float(np.sum(np.abs(conf_sum[nz] - corr_sum[nz])) / total)


def negative_log_likelihood(probabilities, labels) -> float:
    """Mean -log p(true class) (probabilities clipped at 1e-12)."""
    probabilities = np.asarray(probabilities, np.float64)
    if not len(probabilities):
        return 0.0
    picked = probabilities[np.arange(len(probabilities)), np.asarray(labels, np.int64)]
    return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())


def tempered_probabilities(view_logits, temperature: float) -> np.ndarray:
    """Mean over the views (axis 0) of softmax(logits / temperature): the engines' rule."""
    z = np.asarray(view_logits, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(-1, keepdims=True)).mean(0)


def fit_temperature(view_logits, labels, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature in [low, high] that minimises the NLL of tempered_probabilities on (view_logits,
    labels): a grid over log T, then golden-section search around its best point."""
    def nll(log_t: float) -> float:
        return negative_log_likelihood(tempered_probabilities(view_logits, float(np.exp(log_t))), labels)

    grid = np.linspace(np.log(low), np.log(high), 41)
    best = int(np.argmin([nll(t) for t in grid]))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if nll(c) <= nll(d):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))
