"""Test-time augmentation: average class probabilities over views of each image.

    none   the image
    flip   the image and its mirror (2 views)
    crops  the image, four 3-pixel shifted crops of its reflect-padded copy, and all their mirrors (10 views)
"""

from __future__ import annotations

import tensorflow as tf

MODES = ("none", "flip", "crops")


def views(pixels: tf.Tensor, mode: str) -> list[tf.Tensor]:
    """The views of a (B, S, S, 1) batch for a TTA mode."""
    if mode not in MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; choose from {MODES}")
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
