"""Architectures, looked up by name. Each takes (image_size, num_classes) and returns a
Keras model mapping float pixels in [0, 255], shape (S, S, 1), to logits."""

from __future__ import annotations

import hashlib

import keras
import numpy as np
from keras import layers


def weights_fingerprint(model: keras.Model) -> str:
    """SHA-256 over the model's weights in order: metadata.json's model_fingerprint, which every load
    checks (here, not in model/export.py, so the portable trainer checks it without TensorFlow)."""
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def _stem(image_size: int):
    inputs = keras.Input((image_size, image_size, 1), name="pixels")
    return inputs, layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)


def _conv_bn(x, filters, kernel=3, strides=1, name=None):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


def vgg_s(image_size: int = 48, num_classes: int = 7, width: int = 32, dropout: float = 0.4) -> keras.Model:
    """A compact VGG: four stages of 3x3 conv pairs (w, 2w, 4w, 8w), max-pool, global pooling.

    ~1.2M parameters at width 32. The default shipped architecture.
    """
    inputs, x = _stem(image_size)
    for stage, filters in enumerate((width, 2 * width, 4 * width, 8 * width)):
        x = _conv_bn(x, filters)
        x = _conv_bn(x, filters)
        if stage < 3:
            x = layers.MaxPooling2D()(x)
            x = layers.SpatialDropout2D(0.1)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="vgg_s")


def vgg_xs(image_size: int = 48, num_classes: int = 7) -> keras.Model:
    """vgg_s at half width (~0.3M parameters, 59 MFLOPs per 48x48 view, a sixteenth of vgg_m): quick runs
    and tests. As a distilled fast model it stayed under the peer (FER2013 test 0.6495); the fast model
    is vgg_s (recipes/fast_base.toml, then fast.toml).

    Plain 3x3 convolutions rather than depthwise-separable ones: at equal FLOPs they train 2-3x faster
    on CPUs (measured: 790 vs 270 images/s in bfloat16 on 2 cores) and quantize to int8 cleanly."""
    model = vgg_s(image_size, num_classes, width=16, dropout=0.3)
    model.name = "vgg_xs"
    return model


def vgg_m(image_size: int = 48, num_classes: int = 7) -> keras.Model:
    """vgg_s at double width (~4.7M parameters, about 4x the compute): for accelerator-trained models."""
    model = vgg_s(image_size, num_classes, width=64, dropout=0.5)
    model.name = "vgg_m"
    return model


def resnet_s(image_size: int = 48, num_classes: int = 7, width: int = 32) -> keras.Model:
    """A small pre-activation-free ResNet: a stem, three stages of two residual blocks."""
    inputs, x = _stem(image_size)
    x = _conv_bn(x, width)
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for block in range(2):
            strides = 2 if block == 0 and stage > 0 else 1
            shortcut = x
            y = _conv_bn(x, filters, strides=strides)
            y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
            y = layers.BatchNormalization()(y)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False)(shortcut)
                shortcut = layers.BatchNormalization()(shortcut)
            x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="resnet_s")


ARCHS = {"vgg_s": vgg_s, "vgg_xs": vgg_xs, "vgg_m": vgg_m, "resnet_s": resnet_s}


def build(name: str, image_size: int, num_classes: int) -> keras.Model:
    if name not in ARCHS:
        raise ValueError(f"unknown --arch {name!r}; choose from {sorted(ARCHS)}")
    return ARCHS[name](image_size, num_classes)
