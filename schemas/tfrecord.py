"""The TFRecord example layout written by ingest and read by training and predict.

Examples are serialised by hand (the tf.train.Example wire format is small and stable),
so that ingest workers never import TensorFlow. `model.data` turns FEATURES into a
`tf.io.parse_example` spec; tests check both sides agree.
"""

from __future__ import annotations

import struct

SCHEMA_VERSION = 1

# name -> (kind, description). kind is "bytes" or "int64"; every feature holds one value.
FEATURES: dict[str, tuple[str, str]] = {
    "image/raw": ("bytes", "preprocessed 8-bit grayscale pixels, row-major, height*width bytes"),
    "image/height": ("int64", "pixel rows"),
    "image/width": ("int64", "pixel columns"),
    "image/sha256": ("bytes", "hex SHA-256 of the decoded source pixels (duplicate key)"),
    "label/index": ("int64", "index into schemas.LABELS"),
    "label/name": ("bytes", "canonical label name"),
    "source/uri": ("bytes", "where the image was read from"),
    "split": ("bytes", "train, val or test"),
    "schema_version": ("int64", "SCHEMA_VERSION of the writer"),
}


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # int64 is encoded as its two's complement uint64
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _feature(kind: str, value) -> bytes:
    if kind == "bytes":
        if isinstance(value, str):
            value = value.encode("utf-8")
        return _field(1, _field(1, value))  # Feature.bytes_list(1) { value(1) }
    if kind == "int64":
        return _field(3, _field(1, _varint(int(value))))  # Feature.int64_list(3) { packed value(1) }
    raise ValueError(f"unknown feature kind {kind!r}")


def encode_example(values: dict) -> bytes:
    """Serialises a dict of FEATURES values as a tf.train.Example protobuf."""
    missing = set(FEATURES) - set(values)
    if missing:
        raise ValueError(f"example is missing features {sorted(missing)}")
    entries = b""
    for name in sorted(FEATURES):  # deterministic bytes for deterministic shards
        kind, _ = FEATURES[name]
        entry = _field(1, name.encode("utf-8")) + _field(2, _feature(kind, values[name]))
        entries += _field(1, entry)  # Features.feature map entry
    return _field(1, entries)  # Example.features(1)


def _masked_crc32c(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(record: bytes) -> bytes:
    """Frames one record in the TFRecord container format."""
    length = struct.pack("<Q", len(record))
    return (
        length
        + struct.pack("<I", _masked_crc32c(length))
        + record
        + struct.pack("<I", _masked_crc32c(record))
    )
