"""A corpus of hostile image files, made in code: bombs, lies, truncations and awkward names.

Each entry is (relative path, bytes builder, expected outcome). The path sits under a class folder
(`happy/...`), so an ingest run labels it; the outcome is "written" or the reject reason ingest
records for it. `write_corpus(root)` lays the files out; preprocess-level tests use
`preprocess_expected`, which maps the reasons only ingest raises (blank_image) to "written".

The bombs declare far more than model.preprocess.DEFAULT_MAX_PIXELS yet are a few KB on disk. The
TIFF, PNG, BMP and GIF bombs are genuine: the same builder at a small size makes a file that decodes
(the `*_twin` entries), so refusing them is the parser's doing, not a malformed file's.

    python tests/hostile_corpus.py /tmp/hostile   # writes the files, prints path and outcome
"""

from __future__ import annotations

import pathlib
import struct
import sys
import zlib
from dataclasses import dataclass
from typing import Callable

WRITTEN = "written"
INGEST_ONLY_REASONS = frozenset({"blank_image"})  # raised by ingest on preprocess's output
BOMB_SIDE = 16000  # 256M pixels: 5x DEFAULT_MAX_PIXELS, 256 MB even as 8-bit gray


@dataclass(frozen=True)
class Hostile:
    path: str  # relative to the corpus root: <class folder>/<file name>
    build: Callable[[], bytes]
    expected: str  # WRITTEN or the reject reason
    bomb: bool = False  # declares more than DEFAULT_MAX_PIXELS: must be refused before decoding


def preprocess_expected(entry: Hostile) -> str:
    return WRITTEN if entry.expected in INGEST_ONLY_REASONS else entry.expected


def write_corpus(root) -> dict[pathlib.Path, Hostile]:
    """Writes every entry under `root`; returns {written path: entry}."""
    root = pathlib.Path(root)
    written = {}
    for entry in CORPUS:
        path = root / entry.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(entry.build())
        written[path] = entry
    return written


# --------------------------------------------------------------------------- builders


def _image(seed: int = 0, size: int = 48, channels: int = 1, dtype=None):
    import numpy as np

    rng = np.random.default_rng(seed)
    image = rng.integers(30, 220, (size, size, channels) if channels > 1 else (size, size)).astype(np.uint8)
    return image if dtype is None else image.astype(dtype) * 257


def _encoded(ext: str, image=None, params=()) -> bytes:
    import cv2  # lazily: model.preprocess must be imported first for OpenCV's pixel ceiling to apply

    ok, buf = cv2.imencode(ext, _image() if image is None else image, list(params))
    assert ok, ext
    return buf.tobytes()


def _deflate_zeros(size: int) -> bytes:
    """zlib stream of `size` zero bytes, compressed a chunk at a time (no `size`-byte buffer)."""
    compressor = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    out = [compressor.compress(chunk) for _ in range(size >> 20)]
    out.append(compressor.compress(bytes(size & ((1 << 20) - 1))))
    return b"".join(out) + compressor.flush()


def png_bytes(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A black grayscale PNG; at 1 bit per pixel a 16000x16000 one is ~40 KB and decodes to 256 MB."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = 1 + (width * bit_depth + 7) // 8  # filter byte + packed samples
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", _deflate_zeros(row * height))
            + chunk(b"IEND", b""))


def tiff_bytes(width: int, height: int, *, order: str = "<", bigtiff: bool = False, dims_type: int = 4,
               samples: int = 3) -> bytes:
    """A black deflate-compressed TIFF whose strips all point at one compressed strip: a 16000x16000 RGB
    one is ~10 KB and decodes to 768 MB. order: "<" II / ">" MM; dims_type: 3 SHORT, 4 LONG, 16 LONG8."""
    rows_per_strip = min(height, 64)
    strip = zlib.compress(bytes(width * samples * rows_per_strip), 9)
    last_rows = height - rows_per_strip * ((height - 1) // rows_per_strip)
    last = zlib.compress(bytes(width * samples * last_rows), 9)
    n_strips = -(-height // rows_per_strip)
    # Value field: 4 bytes (classic) or 8 (BigTIFF); longer values go after the IFD.
    inline, count_fmt, entry_size, offset_type = (8, "Q", 20, 16) if bigtiff else (4, "H", 12, 4)
    sizes = {3: "H", 4: "I", 16: "Q"}
    entries = [
        (256, dims_type, [width]), (257, dims_type, [height]), (258, 3, [8] * samples), (259, 3, [8]),
        (262, 3, [2 if samples == 3 else 1]), (273, offset_type, None), (277, 3, [samples]),
        (278, 4, [rows_per_strip]), (279, 4, [len(strip)] * (n_strips - 1) + [len(last)]), (284, 3, [1]),
    ]
    header = len(b"II*\x00") + (12 if bigtiff else 4)
    ifd_size = struct.calcsize(order + count_fmt) + entry_size * len(entries) + inline
    # Lay out: header, IFD, out-of-line values, then the two compressed strips.
    extra, extra_at = [], header + ifd_size
    values_of = {}
    for tag, kind, values in entries:
        if values is None:
            values = [0] * n_strips  # StripOffsets: patched below
        blob = struct.pack(order + sizes[kind] * len(values), *values)
        values_of[tag] = (kind, values, blob)
        if len(blob) > inline:
            extra_at += len(blob)
    strip_at, last_at = extra_at, extra_at + len(strip)
    offsets = [strip_at] * (n_strips - 1) + [last_at]
    values_of[273] = (offset_type, offsets, struct.pack(order + sizes[offset_type] * n_strips, *offsets))
    ifd = struct.pack(order + count_fmt, len(entries))
    cursor = header + ifd_size
    for tag, kind, _ in entries:
        _, values, blob = values_of[tag]
        count = struct.pack(order + ("Q" if bigtiff else "I"), len(values))
        if len(blob) <= inline:
            field = blob.ljust(inline, b"\x00")
        else:
            field = struct.pack(order + ("Q" if bigtiff else "I"), cursor)
            extra.append(blob)
            cursor += len(blob)
        ifd += struct.pack(order + "HH", tag, kind) + count + field
    ifd += bytes(inline)  # no next IFD
    magic = b"II" if order == "<" else b"MM"
    if bigtiff:
        head = magic + struct.pack(order + "HHHQ", 43, 8, 0, header)
    else:
        head = magic + struct.pack(order + "HI", 42, header)
    return head + ifd + b"".join(extra) + strip + last


def bmp_rle8_bytes(width: int, height: int) -> bytes:
    """An 8-bit RLE BMP whose pixel data is only end-of-bitmap: 1 KB (the palette), any size decoded."""
    palette = b"".join(bytes((v, v, v, 0)) for v in range(256))
    pixels = b"\x00\x01"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


def bmp_core_bytes(width: int, height: int) -> bytes:
    """A 24-bit BMP with the 12-byte OS/2 BITMAPCOREHEADER (16-bit width and height)."""
    row = (width * 3 + 3) & ~3
    pixels = bytes(row * height)
    offset = 14 + 12
    info = struct.pack("<IHHHH", 12, width, height, 1, 24)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + pixels


def gif_with_screen(width: int, height: int) -> bytes:
    """OpenCV's own small GIF with its logical screen (the canvas decoders allocate) set to width x height."""
    data = _encoded(".gif", _image(3, 32, channels=3))
    return data[:6] + struct.pack("<HH", width, height) + data[10:]


def webp_vp8x_bytes(width: int, height: int) -> bytes:
    """An extended WebP declaring a width x height canvas around a small lossless frame."""
    small = _encoded(".webp", _image(4, 16, channels=3), [64, 101])  # IMWRITE_WEBP_QUALITY > 100: lossless
    frame = small[12:]  # the VP8L chunk
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little") + (
        height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + frame
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_vp8l_header(width: int, height: int) -> bytes:
    """A lossless WebP header declaring width x height (14 bits each), followed by junk."""
    bits = (width - 1) | ((height - 1) << 14) | (1 << 28)  # alpha hint, version 0
    chunk = b"\x2f" + struct.pack("<I", bits) + bytes(64)
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(chunk)) + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_vp8_header(width: int, height: int) -> bytes:
    """A lossy WebP key-frame header declaring width x height (14 bits each), followed by junk."""
    frame = b"\x50\x02\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + bytes(64)
    body = b"WEBP" + b"VP8 " + struct.pack("<I", len(frame)) + frame
    return b"RIFF" + struct.pack("<I", len(body)) + body


def jpeg_with_dims(width: int, height: int, junk_before_sof: bytes = b"") -> bytes:
    """A real JPEG with its SOF's dimensions rewritten (and optional extraneous bytes before the SOF)."""
    data = _encoded(".jpg")
    i = 2
    while not (0xC0 <= data[i + 1] <= 0xC3):
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return data[:i] + junk_before_sof + data[i : i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]


def _with_trailing(data: bytes) -> bytes:
    return data + b"\x00MPF" + bytes(range(256)) * 4  # what phones append after the end marker


def _corrupt_png() -> bytes:
    png = _encoded(".png")
    return png[:40] + bytes(len(png) - 52) + png[-12:]


# --------------------------------------------------------------------------- the corpus

_B = BOMB_SIDE
CORPUS: tuple[Hostile, ...] = (
    # Plain files, for reference.
    Hostile("happy/plain.png", lambda: _encoded(".png"), WRITTEN),
    Hostile("happy/plain.jpg", lambda: _encoded(".jpg"), WRITTEN),
    # Bombs: tiny on disk, huge when decoded; and their decodable twins.
    Hostile("angry/bomb_le.tiff", lambda: tiff_bytes(_B, _B), "too_large", bomb=True),
    Hostile("angry/bomb_be_short.tif", lambda: tiff_bytes(_B, _B, order=">", dims_type=3), "too_large", bomb=True),
    Hostile("angry/bomb_bigtiff.tif", lambda: tiff_bytes(_B, _B, bigtiff=True, dims_type=16), "too_large", bomb=True),
    Hostile("angry/bomb_gray.tiff", lambda: tiff_bytes(_B, _B, samples=1), "too_large", bomb=True),
    Hostile("angry/bomb.png", lambda: png_bytes(_B, _B), "too_large", bomb=True),
    Hostile("angry/bomb_rle8.bmp", lambda: bmp_rle8_bytes(_B, _B), "too_large", bomb=True),
    Hostile("angry/bomb.gif", lambda: gif_with_screen(_B, _B), "too_large", bomb=True),
    Hostile("angry/bomb_vp8x.webp", lambda: webp_vp8x_bytes(_B, _B), "too_large", bomb=True),
    Hostile("angry/bomb_vp8l.webp", lambda: webp_vp8l_header(16383, 16383), "too_large", bomb=True),
    Hostile("angry/bomb_vp8.webp", lambda: webp_vp8_header(16383, 16383), "too_large", bomb=True),
    Hostile("angry/bomb.jpg", lambda: jpeg_with_dims(65000, 65000), "too_large", bomb=True),
    Hostile("angry/bomb_junk_before_sof.jpg", lambda: jpeg_with_dims(65000, 65000, b"\x00junk"), "too_large",
            bomb=True),
    Hostile("angry/bomb_is_tiff.png", lambda: tiff_bytes(_B, _B), "too_large", bomb=True),  # magic, not name
    Hostile("surprise/tiff_twin_le.tiff", lambda: tiff_bytes(96, 80), WRITTEN),
    Hostile("surprise/tiff_twin_be_short.tif", lambda: tiff_bytes(96, 200, order=">", dims_type=3), WRITTEN),
    Hostile("surprise/tiff_twin_bigtiff.tif", lambda: tiff_bytes(96, 80, bigtiff=True, dims_type=16), WRITTEN),
    Hostile("surprise/tiff_twin_gray.tiff", lambda: tiff_bytes(96, 80, samples=1), WRITTEN),
    Hostile("surprise/png_twin.png", lambda: png_bytes(96, 80), WRITTEN),
    Hostile("surprise/bmp_rle8_twin.bmp", lambda: bmp_rle8_bytes(96, 80), WRITTEN),
    Hostile("surprise/gif_twin.gif", lambda: gif_with_screen(32, 32), WRITTEN),
    Hostile("surprise/bmp_core_header.bmp", lambda: bmp_core_bytes(100, 100), WRITTEN),
    Hostile("surprise/jpeg_junk_before_sof.jpg", lambda: jpeg_with_dims(48, 48, b"\x00junk"), WRITTEN),
    # Lies and damage.
    Hostile("sad/empty.jpg", lambda: b"", "empty_file"),
    Hostile("sad/notes.jpg", lambda: b"these are my notes, not a photo\n", "not_an_image"),
    Hostile("sad/pgm_bomb.png", lambda: b"P5\n60000 60000\n255\n" + bytes(64), "not_an_image"),  # OpenCV reads PGM
    Hostile("sad/phone.heic", lambda: b"\x00\x00\x00\x18ftypheic" + bytes(40), "unsupported_format"),
    Hostile("sad/truncated.jpg", lambda: _encoded(".jpg")[:400], "truncated_image"),
    Hostile("sad/truncated.png", lambda: _encoded(".png")[:-20], "truncated_image"),
    Hostile("sad/corrupt.png", _corrupt_png, "corrupt_image"),
    # Awkward but valid.
    Hostile("neutral/trailing.jpg", lambda: _with_trailing(_encoded(".jpg")), WRITTEN),
    Hostile("neutral/trailing.png", lambda: _with_trailing(_encoded(".png")), WRITTEN),
    Hostile("neutral/sixteen_bit.png", lambda: _encoded(".png", _image(5, dtype="uint16")), WRITTEN),
    Hostile("neutral/alpha.png", lambda: _encoded(".png", _image(6, channels=4)), WRITTEN),
    Hostile("neutral/one_pixel.png", lambda: _encoded(".png", _image(7, 1)), WRITTEN),
    Hostile("neutral/blank.png", lambda: _encoded(".png", _image(8) * 0 + 128), "blank_image"),
    Hostile("fear/visage_ünïcødé_😀.png", lambda: _encoded(".png", _image(9)), WRITTEN),
    Hostile("fear/[2024] shot? *final*.jpg", lambda: _encoded(".jpg", _image(10)), WRITTEN),
)


if __name__ == "__main__":
    for path, entry in write_corpus(sys.argv[1]).items():
        print(f"{entry.expected:18} {path.stat().st_size:>8}  {path}")
