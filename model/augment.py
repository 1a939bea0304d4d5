"""Training augmentation, written once in `keras.ops` so every backend trains on the same images.

The TensorFlow job applies it per batch inside tf.data (random draws from stateless TF RNG); the
portable trainer (`model/train_portable.py`, Keras on JAX) applies it on the accelerator through the
`RandomAugment` layer. Both call `augment`, which takes its randomness as arguments:

    draws  (B, NUM_DRAWS) uniform in [0, 1)    one row of random numbers per image
    noise  (B, S, S, 1) uniform in [0, 255)    the fill of the erased rectangle
"""

from __future__ import annotations

import math

import keras
from keras import ops

# "strong" for training from scratch with few epochs, "light" for long runs and fine-tuning.
PRESETS = {
    "strong": dict(max_rotation=12.0, max_shift=0.1, max_zoom=0.12, brightness=25.0, contrast=0.25,
                   erase_prob=0.5, erase_max_area=0.25),
    "light": dict(max_rotation=8.0, max_shift=0.08, max_zoom=0.08, brightness=15.0, contrast=0.15,
                  erase_prob=0.25, erase_max_area=0.12),
}

NUM_DRAWS = 12


def augment(pixels, draws, noise, max_rotation: float = 12.0, max_shift: float = 0.1, max_zoom: float = 0.12,
            brightness: float = 25.0, contrast: float = 0.25, erase_prob: float = 0.5,
            erase_max_area: float = 0.25):
    """Random flip, rotation, shift, zoom, brightness/contrast and erasing, per image.

    pixels: (B, S, S, 1) float in [0, 255]. Deterministic given draws and noise.
    """
    size = float(pixels.shape[1])

    def between(i, lo, hi):
        return lo + (hi - lo) * draws[:, i]

    flip = draws[:, 0] < 0.5
    pixels = ops.where(flip[:, None, None, None], ops.flip(pixels, axis=2), pixels)

    # One affine transform per image: rotate and zoom about the centre, then shift.
    angle = between(1, -max_rotation, max_rotation) * (math.pi / 180.0)
    scale = between(2, 1.0 - max_zoom, 1.0 + max_zoom)
    tx = between(3, -max_shift, max_shift) * size
    ty = between(4, -max_shift, max_shift) * size
    cos, sin = ops.cos(angle) / scale, ops.sin(angle) / scale
    c = (size - 1.0) / 2.0
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2).
    a0, a1, b0, b1 = cos, -sin, sin, cos
    a2 = c - a0 * c - a1 * c - tx
    b2 = c - b0 * c - b1 * c - ty
    zeros = ops.zeros_like(a0)
    transform = ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    pixels = ops.image.affine_transform(pixels, transform, interpolation="bilinear", fill_mode="reflect",
                                        data_format="channels_last")

    # Brightness and contrast jitter.
    mean = ops.mean(pixels, axis=(1, 2, 3), keepdims=True)
    gain = between(5, 1.0 - contrast, 1.0 + contrast)[:, None, None, None]
    offset = between(6, -brightness, brightness)[:, None, None, None]
    pixels = ops.clip((pixels - mean) * gain + mean + offset, 0.0, 255.0)

    # Random erasing: one rectangle of 2%..erase_max_area of the area, filled with noise.
    area = between(7, 0.02, erase_max_area) * size * size
    aspect = ops.exp(between(8, math.log(0.3), math.log(3.3)))
    h = ops.minimum(ops.sqrt(area * aspect), size)
    w = ops.minimum(ops.sqrt(area / aspect), size)
    y0 = draws[:, 9] * (size - h)
    x0 = draws[:, 10] * (size - w)
    active = draws[:, 11] < erase_prob
    grid = ops.arange(int(size), dtype=pixels.dtype)
    in_y = (grid[None, :] >= y0[:, None]) & (grid[None, :] < (y0 + h)[:, None])
    in_x = (grid[None, :] >= x0[:, None]) & (grid[None, :] < (x0 + w)[:, None])
    mask = in_y[:, :, None] & in_x[:, None, :] & active[:, None, None]
    return ops.where(mask[..., None], noise, pixels)


class RandomAugment(keras.layers.Layer):
    """`augment` as a training-only layer with its own seed state (any backend, on the accelerator)."""

    def __init__(self, preset: str = "light", seed: int | None = None, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.preset = preset
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, pixels, training=None):
        if not training:
            return pixels
        batch = ops.shape(pixels)[0]
        draws = keras.random.uniform((batch, NUM_DRAWS), seed=self.seed_generator)
        noise = keras.random.uniform(ops.shape(pixels), 0.0, 255.0, seed=self.seed_generator)
        return augment(pixels, draws, noise, **PRESETS[self.preset])

    def get_config(self):
        return {**super().get_config(), "preset": self.preset}
