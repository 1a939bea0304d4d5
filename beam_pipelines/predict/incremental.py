"""`emotion predict --table ROOT --incremental`: only the images the table does not hold yet.

An image counts as seen when a row of the model version's partitions (ROOT/model_version=<v>/...)
holds the SHA-256 of its file's bytes with the same TTA and preprocessing. The join runs inside the
pipeline, keyed by that hash, so the table can hold tens of millions of rows without the launcher
reading one of them:

    listed files ──HashFiles──► (file hash, ListedFile) ─┐
                                                           ├─ CoGroupByKey ─► unseen ListedFiles ─► decode, classify
    table's files ─ReadSeenHashes──► (file hash, None) ───┘                └─► skipped_seen count

A seen image costs a read and a hash, never a decode or a model call. Files the hash cannot be
taken of (listing problems, extensions that are no image type, unreadable files) skip the join and
go straight to decoding, which rejects them with their reason as in any run.

Rows the table wrote before it recorded file hashes (tables version < 3) hold no hash and never
count as seen: their images are predicted once more, and their rows then carry one. A re-run of the
same --run-id does not count its own earlier partition (the commit replaces it).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

import apache_beam as beam
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.base import progress
from beam_pipelines.base.files import extension, join
from beam_pipelines.base.listing import escape_glob
from model.preprocess import IMAGE_EXTENSIONS
from schemas.tables import TABLE_SEEN_KEYS

SKIPPED_SEEN = progress.Counter("images_skipped_seen")


class ListedFile(NamedTuple):
    """A listed input file on its way to decoding: the listing's (path, problem), and the SHA-256
    of its bytes when it was hashed before (an incremental run's join key)."""

    path: str
    problem: str | None
    file_sha256: str | None = None


def file_digest(path: str, problem: str | None = None) -> str | None:
    """Hex SHA-256 of a listed image file's bytes; None when it cannot be an image (a listing problem,
    an extension that is no image type) or cannot be read: decoding then rejects it with its reason."""
    if problem is not None or extension(path) not in IMAGE_EXTENSIONS:
        return None
    try:
        digest = hashlib.sha256()
        with FileSystems.open(path) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    except Exception:  # decoding reads it again and rejects it as unreadable
        return None


class HashFiles(beam.DoFn):
    """A listing batch of (path, problem) -> (file hash, ListedFile) for the join; files that cannot
    be hashed go out on the side (tag UNHASHED) as ListedFiles, to be decoded and rejected."""

    UNHASHED = "unhashed"

    def __init__(self):
        self.hashed = progress.Counter("images_hashed")

    def process(self, batch):
        for path, problem in batch:
            digest = file_digest(path, problem)
            if digest is None:
                yield beam.pvalue.TaggedOutput(self.UNHASHED, ListedFile(path, problem))
                continue
            self.hashed.inc()
            yield digest, ListedFile(path, problem, digest)


def seen_pattern(root: str, model_version: str) -> str:
    """The glob of every table file of one model version (any date, any run)."""
    return join(escape_glob(root), escape_glob(f"model_version={model_version}"), "run_date=*", "run_id=*",
                "*.parquet")


class ReadSeenHashes(beam.DoFn):
    """A table file's path -> (file hash, None) for each distinct hash in it predicted with this
    run's TTA and preprocessing, reading only the hash, tta and preprocessing columns, a row group at
    a time. Files without those columns (tables version < 3) and the run's own earlier partition
    (a re-run of its run id, which the commit replaces) hold nothing seen."""

    def __init__(self, run_id: str, tta: str, preprocessing: str):
        self.run_id, self.tta, self.preprocessing = run_id, tta, preprocessing
        self.legacy = progress.Counter("table_files_without_hashes")

    def process(self, path: str):
        if f"/run_id={self.run_id}/" in path.replace("\\", "/"):
            return
        with FileSystems.open(path) as f:
            parquet = pq.ParquetFile(f)
            if not set(TABLE_SEEN_KEYS) <= set(parquet.schema_arrow.names):
                self.legacy.inc()
                return
            for group in range(parquet.num_row_groups):
                rows = parquet.read_row_group(group, columns=list(TABLE_SEEN_KEYS))
                same = pc.and_(pc.equal(rows["tta"], self.tta), pc.equal(rows["preprocessing"], self.preprocessing))
                hashes = pc.unique(pc.drop_null(rows["file_sha256"].filter(pc.fill_null(same, False))))
                for digest in hashes.to_pylist():
                    yield digest, None


def _split_seen(element):
    """(hash, {listed, seen}) -> the listed files when the table does not hold the hash; else their
    number, on the side (tag SKIPPED)."""
    _, grouped = element
    listed = list(grouped["listed"])
    if any(True for _ in grouped["seen"]):
        if listed:
            SKIPPED_SEEN.inc(len(listed))
            yield beam.pvalue.TaggedOutput(SkipSeen.SKIPPED, len(listed))
        return
    yield from listed


class SkipSeen(beam.PTransform):
    """Listing batches of (path, problem) -> {"files": the ListedFiles to decode, "skipped_seen": one
    count}: the files whose bytes' hash the model version's partitions of the table hold with the
    same TTA and preprocessing are left out (and counted)."""

    SKIPPED = "skipped"

    def __init__(self, root: str, model_version: str, run_id: str, tta: str, preprocessing: str):
        super().__init__()
        self.pattern = seen_pattern(root, model_version)
        self.run_id, self.tta, self.preprocessing = run_id, tta, preprocessing

    def expand(self, batches):
        hashed = batches | "HashFiles" >> beam.ParDo(HashFiles()).with_outputs(HashFiles.UNHASHED, main="hashed")
        seen = (
            batches.pipeline
            | "SeenPattern" >> beam.Create([self.pattern])
            | "MatchTableFiles" >> fileio.MatchAll()  # no files yet (a new model version): nothing seen
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "SpreadTableFiles" >> beam.Reshuffle()
            | "ReadSeenHashes" >> beam.ParDo(ReadSeenHashes(self.run_id, self.tta, self.preprocessing))
        )
        joined = (
            {"listed": hashed.hashed, "seen": seen}
            | "JoinOnHash" >> beam.CoGroupByKey()
            | "SplitSeen" >> beam.FlatMap(_split_seen).with_outputs(self.SKIPPED, main="unseen")
        )
        files = (joined.unseen, hashed[HashFiles.UNHASHED]) | "ToDecode" >> beam.Flatten()
        skipped = joined[self.SKIPPED] | "CountSeen" >> beam.CombineGlobally(sum)
        return {"files": files, "skipped_seen": skipped}
