"""model/preprocess.py's steps in TensorFlow ops, for the SavedModel's `serve` signature.

TF Serving and Vertex AI run the SavedModel without Python, so the input contract has to be
re-expressed in graph ops; it follows model/preprocess.py step for step, with OpenCV's own
arithmetic where it matters (the fixed-point BGR->gray weights, alpha over white, 16->8 bit,
EXIF orientation for JPEG, centre square, INTER_AREA down / INTER_LINEAR up).
tests/test_serving.py holds `serve` and `emotion predict` to the same probabilities on a corpus of
non-square, colour, RGBA, 16-bit and EXIF-rotated files. Not here: the optional face crop (crop
before serving, or use `emotion predict --face-crop`) and TIFF (TensorFlow cannot decode it).
"""

from __future__ import annotations

import tensorflow as tf

_EXIF = tf.constant([0x45, 0x78, 0x69, 0x66, 0, 0], tf.int32)  # "Exif\0\0"


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1..8) of JPEG bytes; 1 when there is none."""
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 0, 65536), tf.uint8), tf.int32)
    n = tf.size(head)

    def at(i):
        return tf.gather(head, tf.clip_by_value(i, 0, tf.maximum(n - 1, 0)))

    windows = tf.stack([head[i : tf.maximum(n - 5 + i, i)] for i in range(6)], axis=1)
    hits = tf.reduce_all(tf.equal(windows, _EXIF), axis=1)

    def parse():
        tiff = tf.cast(tf.argmax(tf.cast(hits, tf.int32)), tf.int32) + 6
        little = tf.equal(at(tiff), 0x49)

        def u16(i):
            return tf.where(little, at(i) + at(i + 1) * 256, at(i) * 256 + at(i + 1))

        def u32(i):
            return tf.where(little, u16(i) + u16(i + 2) * 65536, u16(i) * 65536 + u16(i + 2))

        ifd = tiff + u32(tiff + 4)
        count = tf.minimum(u16(ifd), 64)
        entries = ifd + 2 + 12 * tf.range(64)
        tags = tf.where(tf.range(64) < count, u16(entries), -1)
        values = u16(entries + 8)
        found = tf.equal(tags, 0x0112)
        value = tf.reduce_max(tf.where(found, values, 0))
        return tf.where((value >= 1) & (value <= 8), value, 1)

    return tf.cond(tf.reduce_any(hits), parse, lambda: tf.constant(1, tf.int32))


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turns an (H, W, C) image upright as EXIF orientation 1..8 says (what OpenCV's imdecode does)."""
    def transpose(x):
        return tf.transpose(x, [1, 0, 2])

    branches = [
        lambda: image,                                        # 1 upright
        lambda: tf.reverse(image, [1]),                       # 2 mirrored
        lambda: tf.image.rot90(image, 2),                     # 3 upside down
        lambda: tf.reverse(image, [0]),                       # 4 mirrored upside down
        lambda: transpose(image),                             # 5 transposed
        lambda: tf.image.rot90(image, 3),                     # 6 needs 90 degrees clockwise
        lambda: tf.image.rot90(transpose(image), 2),          # 7 transversed
        lambda: tf.image.rot90(image, 1),                     # 8 needs 90 degrees counter-clockwise
    ]
    return tf.switch_case(orientation - 1, branches)


def _composite_over_white(color: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    a = tf.cast(alpha, tf.float32) / 255.0
    return tf.cast(tf.round(tf.cast(color, tf.float32) * a + 255.0 * (1.0 - a)), tf.int32)


def decode_gray(data: tf.Tensor) -> tf.Tensor:
    """Encoded bytes -> (H, W) int32 grayscale in 0..255, as model.preprocess.decode_gray."""
    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")
    png16 = is_png & tf.equal(tf.strings.substr(data, 24, 1), b"\x10")

    def sixteen_bit():
        wide = tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint16), tf.int32)
        return (wide + 128) // 257

    def eight_bit():
        # JPEG: the accurate integer DCT, as OpenCV's libjpeg decodes (TensorFlow defaults to the fast one).
        return tf.cond(
            is_jpeg,
            lambda: tf.cast(tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE"), tf.int32),
            lambda: tf.cast(tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False), tf.int32),
        )

    image = tf.cond(png16, sixteen_bit, eight_bit)
    image = tf.cond(is_jpeg, lambda: apply_orientation(image, exif_orientation(data)), lambda: image)
    channels = tf.shape(image)[2]

    def gray():
        return image[:, :, 0]

    def gray_alpha():
        return _composite_over_white(image[:, :, 0], image[:, :, 1])

    def color():
        rgb = image[:, :, :3]
        rgb = tf.cond(channels == 4, lambda: _composite_over_white(rgb, image[:, :, 3:4]), lambda: rgb)
        r, g, b = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
        return (r * 4899 + g * 9617 + b * 1868 + 8192) // 16384  # OpenCV's fixed-point BGR2GRAY

    return tf.case([(channels == 1, gray), (channels == 2, gray_alpha)], default=color)


def resize(gray: tf.Tensor, size: int) -> tf.Tensor:
    """Centre square, then INTER_AREA down / INTER_LINEAR up: (size, size, 1) float32 in [0, 255], unrounded
    (as model.preprocess.resize with as_float)."""
    h, w = tf.shape(gray)[0], tf.shape(gray)[1]
    side = tf.minimum(h, w)
    square = gray[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    square = tf.cast(square[:, :, None], tf.float32)
    resized = tf.cond(
        side > size,
        lambda: tf.image.resize(square, [size, size], method="area"),
        lambda: tf.image.resize(square, [size, size], method="bilinear"),
    )
    resized = tf.cond(side == size, lambda: square, lambda: resized)
    return tf.clip_by_value(resized, 0.0, 255.0)


def preprocess(data: tf.Tensor, size: int) -> tf.Tensor:
    """One encoded image -> the model's (size, size, 1) float32 input."""
    return resize(decode_gray(data), size)
