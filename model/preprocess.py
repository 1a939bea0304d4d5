"""The model's input contract: the one preprocessing function that ingest, predict and training use.

decode (OpenCV) -> 8-bit grayscale -> optional Haar-cascade face crop -> centre square -> resize.

It lives with the model, not the pipelines (it imports neither Beam nor TensorFlow): the exported
SavedModel's `serve` signature re-expresses these steps in TensorFlow ops (model/serving.py), and
tests/test_serving.py holds the two to the same probabilities on a corpus of awkward images.

Every failure raises `PreprocessError(reason, detail)`; the pipelines turn it into a
dead-letter row, so a bad file never crashes a job. What the header says before OpenCV decodes anything
(format, declared size, alpha, truncation) is read by model/image_headers.py.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import NamedTuple

import numpy as np

DEFAULT_MAX_PIXELS = 50_000_000

# Backstop for headers we cannot read ourselves: OpenCV refuses (cv2.error) any image whose header
# declares more pixels than this, before allocating it. OpenCV reads the variable once, when cv2 is first
# imported, so this module must be imported before cv2 (the pipelines import cv2 only through it) or the
# variable set in the environment. It is a hard ceiling: `max_pixels` above it cannot be honoured.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(DEFAULT_MAX_PIXELS))
import cv2  # noqa: E402

from model.image_headers import jpeg_scan_start, peek_dimensions, png_has_alpha, sniff_format, webp_has_alpha  # noqa: E402

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif", ".heic", ".avif"}
)
# Files that are clearly not data: skipped, but counted.
NON_DATA_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", ".gitkeep", ".gitignore"})


class PreprocessError(Exception):
    """A file that cannot become a training/prediction image, with a machine-readable reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def is_non_data(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return base in NON_DATA_NAMES or base.startswith("._")


# Where decoding starts, once per process: parallelism comes from the pipeline, not from OpenCV.
_opencv_configured = False


def configure_opencv() -> None:
    """OpenCV on one thread (the pipelines run a decoder per core). Idempotent; decode_gray and the face
    detectors call it. The pixel ceiling above cannot move here: OpenCV reads it once, as cv2 loads."""
    global _opencv_configured
    if not _opencv_configured:
        cv2.setNumThreads(1)
        _opencv_configured = True


# --------------------------------------------------------------------------- decoding


def decode_gray(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes encoded image bytes to an 8-bit grayscale array (EXIF orientation applied).

    Alpha is composited over white; 16-bit and float images are scaled to 8 bits;
    palette and colour images are converted with OpenCV's BGR->gray weights.
    """
    configure_opencv()
    if not data:
        raise PreprocessError("empty_file", "zero bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise PreprocessError("not_an_image", f"unrecognised header {data[:8]!r}")
    if fmt == "heif":
        raise PreprocessError("unsupported_format", "HEIF/AVIF is not decodable by OpenCV")
    dims = peek_dimensions(data, fmt)
    if dims is not None and dims[0] * dims[1] > max_pixels:
        raise PreprocessError("too_large", f"{dims[0]}x{dims[1]} exceeds {max_pixels} pixels")
    # Truncation: the end marker must follow the image data. Bytes after it (phones append some)
    # are fine: decoders stop at the marker.
    if fmt == "jpeg" and data.rfind(b"\xff\xd9") < jpeg_scan_start(data):
        raise PreprocessError("truncated_image", "JPEG has no end-of-image marker after its image data")
    if fmt == "png" and data.rfind(b"IEND") < 33:  # after the signature and IHDR
        raise PreprocessError("truncated_image", "PNG has no IEND chunk")

    # EXIF orientation is applied unless IMREAD_UNCHANGED, which alone keeps alpha;
    # formats that carry alpha are decoded unchanged (they rarely carry EXIF rotation).
    keep_alpha = (fmt == "png" and png_has_alpha(data)) or (fmt == "webp" and webp_has_alpha(data)) or fmt == "tiff"
    flags = cv2.IMREAD_UNCHANGED if keep_alpha else (cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        message = str(exc).strip().splitlines()[-1]
        if "CV_IO_MAX_IMAGE_" in message:  # OpenCV's ceiling (pixels, width or height), checked pre-allocation
            raise PreprocessError("too_large", f"refused by OpenCV before decoding: {message[:200]}") from None
        raise PreprocessError("corrupt_image", message[:200]) from None
    if image is None:
        if fmt == "gif":
            raise PreprocessError("unsupported_format", "GIF is not decodable by this OpenCV build")
        raise PreprocessError("corrupt_image", f"OpenCV could not decode this {fmt.upper()}")
    if image.size == 0:
        raise PreprocessError("corrupt_image", "decoded to an empty image")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise PreprocessError("too_large", f"{image.shape[1]}x{image.shape[0]} exceeds {max_pixels} pixels")
    return to_gray_u8(image)


def to_gray_u8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        scale = 255.0 if float(np.nanmax(image)) <= 1.0 else 1.0
        image = np.clip(np.nan_to_num(image) * scale, 0, 255).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        return image
    channels = image.shape[2]
    if channels == 1:
        return image[:, :, 0]
    if channels == 4:
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        bgr = image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        image = bgr.round().astype(np.uint8)
    elif channels == 2:  # gray + alpha
        alpha = image[:, :, 1].astype(np.float32) / 255.0
        gray = image[:, :, 0].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return gray.round().astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_BGR2GRAY)


def pixel_hash(gray: np.ndarray) -> str:
    """SHA-256 of the decoded pixels and their shape: equal for pixel-identical images."""
    digest = hashlib.sha256(f"{gray.shape[0]}x{gray.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(gray).data)
    return digest.hexdigest()


# --------------------------------------------------------------------------- face crop

_local = threading.local()


def _cascade():
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")
        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise RuntimeError(f"cannot load the Haar cascade at {path}")
        _local.cascade = cascade
    return cascade


# Margin around the detected box, as a share of its side on each side, per detector: the framing that
# scores best on FER2013 *train* faces pasted into larger frames (bench/face_crop_bench.py). FER2013's
# faces are tight: the Haar box plus 5%, MTCNN's box as it is.
FACE_MARGINS = {"haar": 0.05, "mtcnn": 0.0}
FACE_DETECTORS = tuple(FACE_MARGINS)


class Face(NamedTuple):
    """A face a detector found: its box in the decoded (EXIF-oriented) image's pixels, and the detector's
    score for it. haar: the number of raw detections merged into the box (OpenCV's neighbours, at least
    HAAR_MIN_NEIGHBORS); mtcnn: its confidence in [0, 1]."""

    x: float
    y: float
    width: float
    height: float
    score: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.x, self.y, self.width, self.height


HAAR_MIN_NEIGHBORS = 5


def detect_faces(gray: np.ndarray, detector: str = "haar") -> list[Face]:
    """Every face the detector finds, largest first (ties: leftmost, then topmost for haar; the
    detector's order for mtcnn); no face: PreprocessError("no_face").

    haar: OpenCV's Haar cascade (fast, no TensorFlow: what ingest uses). mtcnn: the `mtcnn` package's
    three-stage CNN (finds far more faces, ~4x slower, needs TensorFlow: predict only).
    """
    configure_opencv()
    faces = _mtcnn_faces(gray) if detector == "mtcnn" else _haar_faces(gray)
    if not faces:
        raise PreprocessError("no_face", "no face found by MTCNN" if detector == "mtcnn"
                              else "no frontal face found by the Haar cascade")
    return faces


def face_box(gray: np.ndarray, detector: str = "haar") -> tuple[float, float, float, float]:
    """(x, y, w, h) of the largest face, in the image's pixels; no face: PreprocessError("no_face")."""
    return detect_faces(gray, detector)[0].box


def _haar_faces(gray: np.ndarray) -> list[Face]:
    h, w = gray.shape
    scale = 1.0
    probe = gray
    if max(h, w) > 640:  # detect on a smaller copy, crop from the original
        scale = 640.0 / max(h, w)
        probe = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    min_side = max(20, int(min(probe.shape) * 0.1))
    # detectMultiScale2: the same boxes as detectMultiScale, with the neighbours merged into each
    boxes, neighbours = _cascade().detectMultiScale2(
        cv2.equalizeHist(probe), scaleFactor=1.1, minNeighbors=HAAR_MIN_NEIGHBORS, minSize=(min_side, min_side)
    )
    ranked = sorted(zip((tuple(b) for b in boxes), neighbours), key=lambda f: (f[0][2] * f[0][3], -f[0][0], -f[0][1]),
                    reverse=True)
    return [Face(*(float(v) / scale for v in box), float(n)) for box, n in ranked]


def _mtcnn_faces(gray: np.ndarray) -> list[Face]:
    detector = getattr(_local, "mtcnn", None)
    if detector is None:
        from mtcnn import MTCNN  # imports TensorFlow: only when asked for

        detector = _local.mtcnn = MTCNN()
    found = detector.detect_faces(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB))
    ranked = sorted(found, key=lambda f: f["box"][2] * f["box"][3], reverse=True)  # stable: the first of equals
    return [Face(*(float(v) for v in f["box"]), float(f["confidence"])) for f in ranked]


def crop_box(gray: np.ndarray, box: tuple[float, float, float, float], margin: float) -> np.ndarray:
    """A square around the box's centre, its side the box's longer side plus `margin` on each side."""
    h, w = gray.shape
    x, y, fw, fh = box
    side = max(fw, fh) * (1 + 2 * margin)
    cx, cy = x + fw / 2, y + fh / 2
    x0, y0 = int(round(max(0, cx - side / 2))), int(round(max(0, cy - side / 2)))
    x1, y1 = int(round(min(w, cx + side / 2))), int(round(min(h, cy + side / 2)))
    return gray[y0:y1, x0:x1]


def crop_face(gray: np.ndarray, detector: str = "haar", margin: float | None = None) -> np.ndarray:
    """Crops the largest face with the detector's margin, as a square; no face: PreprocessError."""
    return crop_box(gray, face_box(gray, detector), FACE_MARGINS[detector] if margin is None else margin)


# OpenCV's interpolation (the cv2 constant's name) that `resize` uses to shrink and to enlarge: named here
# once, so that STEPS, which metadata.json records, says what the code does.
RESIZE_DOWN = "INTER_AREA"
RESIZE_UP = "INTER_LINEAR"


def resize(gray: np.ndarray, size: int, as_float: bool = False) -> np.ndarray:
    """Centre square, then INTER_AREA down / INTER_LINEAR up to (size, size).

    as_float: resample in float32 and keep the result unrounded (what predict feeds the model, and what
    the SavedModel's `serve` computes in TensorFlow ops); otherwise 8-bit, for TFRecords.
    """
    h, w = gray.shape
    if h != w:  # centre-crop to a square first: faces are not stretched
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        gray = gray[top : top + side, left : left + side]
    if as_float:
        gray = gray.astype(np.float32)
    if gray.shape[0] == size:
        return gray
    interpolation = getattr(cv2, RESIZE_DOWN if gray.shape[0] > size else RESIZE_UP)
    return cv2.resize(gray, (size, size), interpolation=interpolation)


def preprocess(
    data: bytes, image_size: int = 48, face_crop: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
    as_float: bool = False, face_detector: str = "haar",
) -> tuple[np.ndarray, str]:
    """Encoded bytes -> (image_size x image_size grayscale, pixel hash of the decoded source).

    uint8 for TFRecords (ingest); float32 in [0, 255], not rounded, with as_float (predict).
    """
    gray = decode_gray(data, max_pixels)
    digest = pixel_hash(gray)
    if face_crop:
        gray = crop_face(gray, detector=face_detector)
    return resize(gray, image_size, as_float), digest


def preprocess_faces(
    data: bytes, image_size: int = 48, max_pixels: int = DEFAULT_MAX_PIXELS, as_float: bool = False,
    face_detector: str = "haar",
) -> tuple[list[tuple[np.ndarray, Face]], str]:
    """Encoded bytes -> ([(pixels, face) for every face, largest first], pixel hash of the decoded source).

    Each face is cropped and resized exactly as `preprocess` crops the largest one (so face 0 gets the
    pixels `preprocess(..., face_crop=True)` gives); its box is clipped to the image (clip_face). No
    face: PreprocessError("no_face").
    """
    gray = decode_gray(data, max_pixels)
    digest = pixel_hash(gray)
    margin = FACE_MARGINS[face_detector]
    faces = detect_faces(gray, face_detector)
    return [(resize(crop_box(gray, face.box, margin), image_size, as_float), clip_face(face, gray.shape))
            for face in faces], digest


def clip_face(face: Face, shape: tuple[int, int]) -> Face:
    """The face with its box clipped to an image of this (height, width), as rows record it (MTCNN's
    boxes may reach past the border; the crop itself uses the box as found)."""
    h, w = shape
    x0, y0 = min(max(face.x, 0.0), w), min(max(face.y, 0.0), h)
    x1, y1 = min(max(face.x + face.width, 0.0), w), min(max(face.y + face.height, 0.0), h)
    return Face(x0, y0, x1 - x0, y1 - y0, face.score)


# The steps of `preprocess`, as an exported model's metadata.json describes them (model/export.py).
STEPS = (f"OpenCV decode -> 8-bit grayscale -> optional face crop ({' or '.join(FACE_DETECTORS)}) -> "
         f"centre square -> resize ({RESIZE_DOWN} down, {RESIZE_UP} up)")


def image_metrics(gray: np.ndarray) -> tuple[float, float, float]:
    """(brightness, contrast, sharpness): mean, standard deviation, variance of the Laplacian."""
    mean, std = cv2.meanStdDev(gray)
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_32F))  # 10x faster than numpy's var here
    return float(mean[0, 0]), float(std[0, 0]), float(lap_std[0, 0]) ** 2
