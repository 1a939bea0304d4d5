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


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]  # varints below 128: most tags, lengths and ints here


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
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


# Map-entry keys, encoded once (ingest encodes one example per image: this is its hot loop).
_ORDER = sorted(FEATURES)  # deterministic bytes for deterministic shards
_KEYS = {name: _field(1, name.encode("utf-8")) for name in _ORDER}


def _bytes_entry(key: bytes, value: bytes) -> list[bytes]:
    """The parts of one map entry {key, Feature.bytes_list {value}}: the same bytes as
    _field(1, key + _field(2, _feature("bytes", value))), with the value copied once, not four times."""
    n_list = 1 + len(_varint(len(value))) + len(value)
    n_feature = 1 + len(_varint(n_list)) + n_list
    n_entry = len(key) + 1 + len(_varint(n_feature)) + n_feature
    return [b"\x0a", _varint(n_entry), key, b"\x12", _varint(n_feature), b"\x0a", _varint(n_list), b"\x0a",
            _varint(len(value)), value]


def encode_example(values: dict) -> bytes:
    """Serialises a dict of FEATURES values as a tf.train.Example protobuf."""
    missing = set(FEATURES) - set(values)
    if missing:
        raise ValueError(f"example is missing features {sorted(missing)}")
    parts = []
    for name in _ORDER:  # Features.feature map entries
        kind, value = FEATURES[name][0], values[name]
        if kind == "bytes":
            parts += _bytes_entry(_KEYS[name], value.encode("utf-8") if isinstance(value, str) else value)
        else:
            parts.append(_field(1, _KEYS[name] + _field(2, _feature(kind, value))))
    entries = b"".join(parts)
    return b"\x0a" + _varint(len(entries)) + entries  # Example.features(1)


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
