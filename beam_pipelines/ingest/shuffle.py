"""Ingest's decoding and its way through the shuffle: a batch of files -> per shard, the records of
its decoded images, grouped by shard for de-duplication (shards.py).

Each batch pre-groups its images by shard, so the shuffle moves one element per (batch, shard)
rather than one per image. What that element holds depends on where the runner keeps its shuffle
(`--shuffle`, chosen from the runner by `shuffle_mode`):

- `spill` (a runner that shuffles in this machine's memory: the DirectRunner, Prism, an embedded
  job service): the records are spilled to files under the staging folder, pixels and metadata
  both (`Spilled`), and the shuffle carries one short name per (batch, shard), so memory stays flat
  as the archive grows;
- `records` (Dataflow, Flink, Spark, a remote job service): the shuffle carries the records
  themselves, pixels included (`Carried`). A distributed shuffle is built to move that data; a
  spill there would be about one pair of tiny objects per image in the object store (a batch of
  256 files spreads over ~256 shards), written once and read twice.

Both give the same records to the shard writer, so the TFRecords and stats.json are the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.base import progress
from beam_pipelines.base.files import join, split_and_class_dir, write_bytes
from beam_pipelines.base.reading import read_image, reject
from beam_pipelines.base.runner import runner_class
from model.preprocess import PreprocessError, image_metrics
from schemas import canonical_label

if TYPE_CHECKING:
    from beam_pipelines.ingest.options import IngestOptions

SHUFFLE_MODES = ("auto", "spill", "records")
# Runners whose shuffle lives in this machine's memory (by class name, subclasses included):
# Beam's in-process runners and Prism, which runs here.
IN_MEMORY_SHUFFLE = {"DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner", "FnApiRunner",
                     "InteractiveRunner", "PrismRunner"}


def shuffle_mode(requested: str, runner: str, job_endpoint: str | None = None) -> str:
    """`spill` or `records`: what --shuffle asks for, or with `auto` what fits the runner (spill where
    the shuffle is held in this machine's memory, records where the runner shuffles across machines).
    PortableRunner with `--job_endpoint embed` runs its job service in this process: spill."""
    if requested != "auto":
        return requested
    cls = runner_class(runner) if isinstance(runner, str) else type(runner)
    names = {c.__name__ for c in cls.__mro__}
    if names & IN_MEMORY_SHUFFLE or (cls.__name__ == "PortableRunner" and job_endpoint == "embed"):
        return "spill"
    return "records"


def hash_unit(seed: int, digest: str) -> float:
    """A deterministic number in [0, 1) from a content hash: the split assignment key."""
    h = hashlib.blake2b(f"{seed}:{digest}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def shard_of(digest: str, num_shards: int) -> int:
    return int(digest[:12], 16) % num_shards


# --------------------------------------------------------------------------- records


class Metrics(NamedTuple):
    """model.preprocess.image_metrics of an image: what stats.json's data health is made of."""

    brightness: float
    contrast: float
    sharpness: float  # variance of the Laplacian


class SpillRef(NamedTuple):
    """Where a spilled image's pixels wait: a .pixels file and the offset of its first byte."""

    path: str
    offset: int


class Record(NamedTuple):
    """One decoded image on its way to its shard."""

    digest: str  # sha256 of the preprocessed pixels
    split: str
    label: str
    uri: str
    metrics: Metrics
    pixels: bytes | SpillRef  # the pixels themselves, or where they wait (--shuffle spill)


class Carried(NamedTuple):
    """One (batch, shard)'s records, pixels included, carried by the runner's shuffle (--shuffle records)."""

    records: tuple[Record, ...]

    def load(self) -> list[Record]:
        return list(self.records)


class Spilled(NamedTuple):
    """One (batch, shard)'s records spilled to <base>.pixels (the pixels back to back) and <base>.json
    (digest, split, label, uri, metrics per image, in the same order): the shuffle carries only this
    name (--shuffle spill)."""

    base: str
    image_size: int

    @classmethod
    def write(cls, staging: str, shard: int, batch_id: str, records: list[Record], image_size: int) -> Spilled:
        base = join(staging, ".spill", f"{shard:05d}-{batch_id}")
        write_bytes(f"{base}.pixels", b"".join(r.pixels for r in records))
        meta = [[r.digest, r.split, r.label, r.uri, list(r.metrics)] for r in records]
        write_bytes(f"{base}.json", json.dumps(meta).encode(), "application/json")
        return cls(base, image_size)

    def load(self) -> list[Record]:
        """The records, their pixels left in the spill (SpillRef): de-duplication needs only the metadata."""
        with FileSystems.open(f"{self.base}.json") as f:
            meta = json.loads(f.read())
        size = self.image_size * self.image_size
        return [Record(digest, split, label, uri, Metrics(*metrics), SpillRef(f"{self.base}.pixels", i * size))
                for i, (digest, split, label, uri, metrics) in enumerate(meta)]


# What the shuffle carries for one (batch, shard).
ShardPart = Union[Carried, Spilled]


def load_records(parts) -> list[list[Record]]:
    """The records of a shard's parts (Carried or Spilled), one list per part, in a fixed order."""
    return [part.load() for part in sorted(parts, key=_part_order)]


def _part_order(part):
    return part.base if isinstance(part, Spilled) else min((r.uri for r in part.records), default="")


def pixels_of(records: list[Record], image_size: int) -> list[bytes]:
    """The pixels of each record: carried ones as they are, spilled ones read (each file once)."""
    files = {}
    for path in sorted({r.pixels.path for r in records if isinstance(r.pixels, SpillRef)}):
        with FileSystems.open(path) as f:
            files[path] = f.read()
    size = image_size * image_size
    return [r.pixels if isinstance(r.pixels, bytes) else files[r.pixels.path][r.pixels.offset : r.pixels.offset + size]
            for r in records]


# --------------------------------------------------------------------------- decoding


class DecodeBatch(beam.DoFn):
    """A batch of files -> (shard, Spilled or Carried) per shard its images fall in; rejected rows
    and reject counts on the side."""

    def __init__(self, options: IngestOptions):
        self.options = options
        self.decoded = progress.Counter("images_decoded")
        self.rejected = progress.Counter("images_rejected")

    def _split_of(self, folder_split, digest, summary):
        a = self.options
        if folder_split is None:  # <root>/<class>/*: split from the content hash
            u = hash_unit(a.seed, digest)
            return "test" if u < a.test_fraction else "val" if u < a.test_fraction + a.val_fraction else "train"
        if folder_split == "train" and summary["carve_val"] and hash_unit(a.seed, digest) < a.val_fraction:
            return "val"
        return folder_split

    def _decode(self, path: str, problem: str | None, summary: dict) -> Record:
        """One listed file -> its record; a PreprocessError (with its reject reason) when it is no usable image."""
        a = self.options
        folder_split, class_dir = split_and_class_dir(path[len(a.input) + 1 :])
        if class_dir is None:
            raise PreprocessError("no_class_folder", "file is not inside a class folder")
        label = canonical_label(class_dir)
        if label is None:
            raise PreprocessError("unknown_class", f"folder {class_dir!r} maps to no emotion class")
        pixels, digest = read_image(path, problem, a.image_size, a.face_crop, a.max_pixels)
        metrics = Metrics(*image_metrics(pixels))
        if metrics.contrast == 0.0:
            raise PreprocessError("blank_image", f"every pixel is {int(pixels[0, 0])}")
        return Record(digest, self._split_of(folder_split, digest, summary), label, path, metrics, pixels.tobytes())

    def process(self, batch, summary) -> Iterator[tuple[int, ShardPart]]:  # + tagged rejected rows, stats
        shards: dict[int, list[Record]] = {}
        rejected: dict[str, int] = {}
        for path, problem in batch:
            try:
                record = self._decode(path, problem, summary)
            except PreprocessError as exc:
                rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
                self.rejected.inc()
                progress.count_reject(exc.reason)
                yield reject(path, exc.reason, exc.detail, "ingest")
                continue
            shards.setdefault(shard_of(record.digest, summary["num_shards"]), []).append(record)
        self.decoded.inc(sum(len(records) for records in shards.values()))
        batch_id = hashlib.blake2b("\n".join(p for p, _ in batch).encode(), digest_size=10).hexdigest()
        for shard, records in shards.items():
            if self.options.shuffle == "records":
                yield shard, Carried(tuple(records))
            else:  # deterministic names: a retried bundle rewrites the same files with the same bytes
                yield shard, Spilled.write(self.options.staging, shard, batch_id, records, self.options.image_size)
        yield beam.pvalue.TaggedOutput("stats", {"rejected": rejected})
