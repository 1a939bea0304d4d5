"""Optimizer and learning-rate schedule, shared by every training path (tf.distribute and portable)."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from schemas import LABELS, NUM_CLASSES

DEFAULT_PEAK_LR = {"sgd": 0.1, "adamw": 2e-3}  # for a global batch of 256


def peak_lr(optimizer: str, lr: float | None, global_batch: int) -> float:
    """The recipe's LR (given for a global batch of 256), scaled linearly to the actual global batch."""
    return (lr or DEFAULT_PEAK_LR[optimizer]) * global_batch / 256


def build_optimizer(name: str, learning_rate, weight_decay: float) -> keras.optimizers.Optimizer:
    """SGD with Nesterov momentum, or AdamW; weight decay is decoupled (Keras applies it to the weights)."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, nesterov=True,
                                    weight_decay=weight_decay)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay * 100)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adamw")


@keras.saving.register_keras_serializable(package="emotion")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then cosine decay to 1% of the peak (a function of the global step)."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / float(max(1, self.warmup_steps))
        span = float(max(1, self.total_steps - self.warmup_steps))
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        cosine = self.peak * (0.01 + 0.99 * 0.5 * (1.0 + ops.cos(math.pi * progress)))
        return ops.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


def class_weights(counts: dict[str, int], power: float = 0.5) -> np.ndarray:
    """Per-class loss weights (N / (K n_c)) ** power, normalised to mean 1 over examples."""
    n = np.array([max(1, counts.get(label, 0)) for label in LABELS], np.float64)
    w = (n.sum() / (NUM_CLASSES * n)) ** power
    w *= n.sum() / (w * n).sum()
    return w.astype(np.float32)
