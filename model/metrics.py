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
