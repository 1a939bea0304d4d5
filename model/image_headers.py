"""What an image's header says before any decoder sees it: the container format from its magic bytes,
the dimensions the decoder will allocate (PNG, BMP, GIF, TIFF and BigTIFF, WebP, JPEG), whether it carries
alpha, where a JPEG's image data starts. Pure Python on the bytes: model/preprocess.py refuses what these
say is not an image, too large or truncated before OpenCV decodes anything.
"""

from __future__ import annotations

import re
import struct


def sniff_format(data: bytes) -> str | None:
    """The container format from the magic bytes, or None when it is not an image.

    Only these formats reach OpenCV, and peek_dimensions reads the size of each; anything else
    (PNM, JPEG 2000, OpenEXR, ... which OpenCV would also decode) is not_an_image.
    """
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF, BigTIFF
        return "tiff"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"avif", b"avis"):
        return "heif"
    return None


def peek_dimensions(data: bytes, fmt: str) -> tuple[int, int] | None:
    """(width, height) as the decoder will allocate them, read from the header; None when the header is
    damaged or unusual (OpenCV's own ceiling then applies)."""
    try:
        if fmt == "png" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if fmt == "bmp":
            if int.from_bytes(data[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if fmt == "gif":  # the logical screen: the canvas every frame is drawn on
            return struct.unpack("<HH", data[6:10])
        if fmt == "tiff":
            return _tiff_dimensions(data)
        if fmt == "webp":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return w, h
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if fmt == "jpeg":
            for i, marker in _jpeg_markers(data):
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
                    h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                    return w, h
    except struct.error:
        return None
    return None


# TIFF field types an ImageWidth/ImageLength may have, as struct codes (libtiff accepts each).
_TIFF_INTEGER_TYPES = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i", 16: "Q", 17: "q"}


def _tiff_dimensions(data: bytes) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) from the first IFD, the page OpenCV decodes; classic TIFF
    or BigTIFF, either byte order. libtiff keeps the first of duplicated tags; so do we."""
    order = "<" if data[:2] == b"II" else ">"
    (version,) = struct.unpack(order + "H", data[2:4])
    if version == 43:  # BigTIFF: 8-byte offsets and counts, 20-byte entries
        (ifd,) = struct.unpack(order + "Q", data[8:16])
        count_code, field_size = "Q", 8
    else:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        count_code, field_size = "H", 4
    (n,) = struct.unpack(order + count_code, data[ifd : ifd + struct.calcsize(count_code)])
    entry_size = 4 + 2 * field_size
    first = ifd + struct.calcsize(count_code)
    n = min(n, 4096, (len(data) - first) // entry_size)  # libtiff refuses directories of more than 4096
    dims: dict[int, int] = {}
    for at in range(first, first + n * entry_size, entry_size):
        tag, kind = struct.unpack(order + "HH", data[at : at + 4])
        if tag not in (256, 257) or tag in dims:
            continue
        code = order + _TIFF_INTEGER_TYPES.get(kind, "")
        if len(code) == 1 or struct.calcsize(code) > field_size:  # not an integer, or stored out of line
            return None
        value_at = at + 4 + field_size  # after tag, type and count
        (dims[tag],) = struct.unpack(code, data[value_at : value_at + struct.calcsize(code)])
        if len(dims) == 2:
            return abs(dims[256]), abs(dims[257])
    return None


_JPEG_MARKER = re.compile(rb"\xff+[^\x00\xff]")  # fill bytes, then a marker (0xFF00 is a stuffed 0xFF)


def _jpeg_markers(data: bytes):
    """(offset, marker) of each marker from SOI up to the first start-of-scan, walked as libjpeg does:
    segments are skipped by their length (so an EXIF thumbnail inside APP1 is never seen), fill bytes
    are skipped, and stray bytes between segments are passed over to the next 0xFF."""
    i = 2
    while True:
        found = _JPEG_MARKER.search(data, i)
        if found is None or found.end() + 2 > len(data):
            return
        i, marker = found.end() - 2, data[found.end() - 1]
        yield i, marker
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no more header
            return
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")


def jpeg_scan_start(data: bytes) -> int:
    """Offset of the main image's first start-of-scan marker; len(data) when there is none."""
    return next((i for i, marker in _jpeg_markers(data) if marker == 0xDA), len(data))


def png_has_alpha(data: bytes) -> bool:
    color_type = data[25] if len(data) > 25 else 0
    return color_type in (4, 6) or b"tRNS" in data[:4096]


def webp_has_alpha(data: bytes) -> bool:
    return data[12:16] == b"VP8L" or (data[12:16] == b"VP8X" and bool(data[20] & 0x10))
