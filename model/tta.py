"""Test-time augmentation in TensorFlow: average class probabilities over views of each image, for each
of schemas.TTA_MODES (what each mode's views are is said there; model/engines.py computes the same views in
numpy).
"""

from __future__ import annotations

import tensorflow as tf

from schemas import TTA_MODES


def views(pixels: tf.Tensor, mode: str) -> list[tf.Tensor]:
    """The views of a (B, S, S, 1) batch for a TTA mode."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; choose from {TTA_MODES}")
    base = [pixels]
    if mode == "crops":
        pad = 3
        size = tf.shape(pixels)[1]
        padded = tf.pad(pixels, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        for dy, dx in ((0, 0), (0, 2 * pad), (2 * pad, 0), (2 * pad, 2 * pad)):
            base.append(padded[:, dy : dy + size, dx : dx + size, :])
    if mode == "none":
        return base
    return base + [tf.reverse(v, axis=[2]) for v in base]


def probabilities(logits_fn, pixels: tf.Tensor, mode: str = "none") -> tf.Tensor:
    """Mean softmax over the views; logits_fn maps a (B, S, S, 1) float batch to logits."""
    vs = views(pixels, mode)
    probs = [tf.nn.softmax(tf.cast(logits_fn(v), tf.float32), axis=-1) for v in vs]
    return tf.add_n(probs) / float(len(probs))
