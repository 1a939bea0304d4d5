"""Predict's inputs decoded: a listed image file into one (Image, pixels) per image, or per face with
--faces all (`DecodeImages`), a TFRecord example of an ingest output likewise (`ParseExamples`), and
the batches the model takes (`ImageBatch`). A file that cannot be decoded becomes a rejected row."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import apache_beam as beam
import numpy as np

from beam_pipelines.base import progress
from beam_pipelines.base.files import split_and_class_dir
from beam_pipelines.base.reading import decode_faces, decode_image, read_file, reject
from beam_pipelines.predict.incremental import ListedFile
from beam_pipelines.predict.options import PredictOptions
from model.preprocess import Face, PreprocessError, resize
from schemas import canonical_label


def label_from_path(rel: str) -> tuple[str | None, str | None]:
    """(true label, split) from <class>/file or <split>/<class>/file; (None, None) for others."""
    split, class_dir = split_and_class_dir(rel)
    return (canonical_label(class_dir) if class_dir else None), split


class Image(NamedTuple):
    """What travels with an image's pixels to its prediction row."""

    uri: str
    content_sha256: str  # of the decoded pixels (model.preprocess.pixel_hash)
    true_label: str | None
    split: str | None
    file_sha256: str | None = None  # of the file's bytes, for the table (None for TFRecord input)
    face_index: int | None = None  # --faces all: which face of the image (0: the largest), and where
    face: Face | None = None


class ImageBatch(NamedTuple):
    """A work item's decoded images as one element: at a thousand images a second, Beam's cost per
    element (not the model) would set the pace if every image travelled alone."""

    images: list[Image]
    pixels: np.ndarray  # (N, S, S) float32 in [0, 255]


def image_batch(items: Sequence[tuple[Image, np.ndarray]]) -> ImageBatch:
    return ImageBatch([image for image, _ in items], np.stack([pixels for _, pixels in items]).astype(np.float32))


class DecodeImages(beam.DoFn):
    """A batch of listed files ((path, problem) or ListedFile) -> one ImageBatch of what decodes;
    rejects on the side. With `hash_files` (a run into --table) each image carries its file's hash:
    the one the incremental join took, else one taken here."""

    def __init__(self, options: PredictOptions, image_size: int, hash_files: bool):
        self.options, self.image_size, self.hash_files = options, image_size, hash_files
        self.decoded = progress.Counter("images_decoded")
        self.rejected = progress.Counter("images_rejected")

    def process(self, files):
        o, decoded, images = self.options, [], 0
        for listed in (ListedFile(*f) for f in files):  # the listing's (path, problem) pairs, or the join's
            try:
                data = read_file(listed.path, listed.problem)
                faces, digest = self._decode(data)
            except PreprocessError as exc:
                self.rejected.inc()
                progress.count_reject(exc.reason)
                yield reject(listed.path, exc.reason, exc.detail, "predict")
                continue
            # the join's hash, else one of the bytes just decoded (never a second read of the file)
            file_sha256 = listed.file_sha256 or (hashlib.sha256(data).hexdigest() if self.hash_files else None)
            label, split = label_from_path(listed.path[len(o.input) + 1 :])
            image = Image(listed.path, digest, label, split, file_sha256)
            decoded.extend((image._replace(**face), pixels) for face, pixels in faces)
            images += 1
        if decoded:
            self.decoded.inc(images)
            yield image_batch(decoded)

    def _decode(self, data: bytes) -> tuple[list[tuple[dict, np.ndarray]], str]:
        """([(the Image's face fields, pixels)], pixel hash): one entry without face fields for a
        row per image (the default), one per face with --faces all."""
        o = self.options
        if o.faces != "all":
            pixels, digest = decode_image(data, self.image_size, o.face_crop, o.max_pixels, as_float=True,
                                          face_detector=o.face_detector)
            return [({}, pixels)], digest
        faces, digest = decode_faces(data, self.image_size, o.max_pixels, as_float=True, face_detector=o.face_detector)
        return [({"face_index": i, "face": face}, pixels) for i, (pixels, face) in enumerate(faces)], digest


class ParseExamples(beam.DoFn):
    """Serialized ingest examples -> the same (Image, pixels) elements."""

    def __init__(self, image_size):
        self.image_size = image_size
        self.decoded = progress.Counter("images_decoded")

    def setup(self):
        import tensorflow as tf

        self._example = tf.train.Example

    def process(self, record: bytes):
        f = self._example.FromString(record).features.feature
        h, w = f["image/height"].int64_list.value[0], f["image/width"].int64_list.value[0]
        pixels = np.frombuffer(f["image/raw"].bytes_list.value[0], np.uint8).reshape(h, w)
        if (h, w) != (self.image_size, self.image_size):
            pixels = resize(pixels, self.image_size)
        self.decoded.inc()
        text = lambda key: f[key].bytes_list.value[0].decode()  # noqa: E731
        yield Image(text("source/uri"), text("image/sha256"), text("label/name"), text("split")), pixels


class Inputs(NamedTuple):
    """What reading the input gives the rest of the pipeline."""

    batches: beam.PCollection  # ImageBatch
    rejected: beam.PCollection  # REJECTED_SCHEMA dicts
    counts: beam.PCollection  # one dict: matched, skipped_non_data (the listing's summary)
    skipped_seen: beam.PCollection | None  # one int with --incremental
