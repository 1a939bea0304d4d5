"""Reading an image folder, shared by ingest and predict: the listing (fanned out over the workers,
in batches), and the one function that turns a listed file into model pixels or a reject reason.

Work travels in batches because per-element overhead is what makes a Beam job slow on small images:
the listing emits batches of (path, listing problem), and each batch is read and decoded in one call.
"""

from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.base.counts import MergeCounts
from beam_pipelines.base.files import extension, split_and_class_dir
from beam_pipelines.base.listing import PROBLEMS as LISTING_PROBLEMS
from beam_pipelines.base.listing import Unit, list_unit, plan_units, planned_identities
from beam_pipelines.base.progress import Counter
from model.preprocess import IMAGE_EXTENSIONS, PreprocessError, is_non_data, preprocess, preprocess_faces

# The listing's counters (progress.py): work items planned and listed, files found. The total is known
# once every planned item is listed (listing_total).
UNITS_PLANNED = Counter("listing_units")
UNITS_LISTED = Counter("listing_units_done")
FILES_LISTED = Counter("files_listed")
FILES_SKIPPED = Counter("files_skipped_non_data")


def listing_total(counts: dict) -> int | None:
    """The data files the listing found (every file listed less skipped non-data), from a
    progress.snapshot(), once the listing is complete; None before."""
    units = counts.get("listing_units", 0)
    if not units or counts.get("listing_units_done", 0) < units:
        return None
    return counts.get("files_listed", 0) - counts.get("files_skipped_non_data", 0)


class Work(NamedTuple):
    """One worker's share of the listing: a unit of the input to list, or the entries that planning
    the units found (links back to a planned folder)."""

    root: str
    unit: Unit | None
    entries: tuple = ()
    planned: frozenset = frozenset()  # identities of the planned folders (local inputs)


def plan_work(root: str):
    units, problems = plan_units(root)
    planned = planned_identities(units)
    UNITS_PLANNED.inc(len(units) + bool(problems))  # before any is listed: the total waits for them all
    for unit in units:
        yield Work(root, unit, planned=planned)
    if problems:
        yield Work(root, None, tuple(problems))


class ListBatches(beam.DoFn):
    """Work -> batches of (path, listing problem or None); on the side (tag SUMMARY) one dict per
    work item: matched (every file listed), skipped non-data files by name and in all, input bytes,
    and the split folders seen (merged by MergeSummaries). Streams: no listing is held whole; the
    counters follow each batch (files_listed, files_skipped_non_data) and the work item (listing_units_done)."""

    SUMMARY = "summary"

    def __init__(self, files_per_batch: int):
        self.files_per_batch = files_per_batch

    def process(self, work: Work):
        root = work.root
        splits, skipped, total_bytes, batch, matched = {}, {}, 0, [], 0
        for path, size, problem in (list_unit(work.unit, root, work.planned) if work.unit else work.entries):
            matched += 1
            rel = path[len(root) + 1 :]
            if is_non_data(rel):
                name = rel.rsplit("/", 1)[-1]
                skipped[name] = skipped.get(name, 0) + 1
                FILES_LISTED.inc()
                FILES_SKIPPED.inc()
                continue
            folder_split, _ = split_and_class_dir(rel)
            if folder_split:
                splits[folder_split] = splits.get(folder_split, 0) + 1
            total_bytes += size
            batch.append((path, problem))
            if len(batch) >= self.files_per_batch:
                FILES_LISTED.inc(len(batch))
                yield batch
                batch = []
        FILES_LISTED.inc(len(batch))
        UNITS_LISTED.inc()
        if batch:
            yield batch
        yield beam.pvalue.TaggedOutput(self.SUMMARY, {
            "matched": matched,
            "skipped": skipped,
            "skipped_non_data": sum(skipped.values()),
            "input_bytes": total_bytes,
            "input_splits": splits,
        })


class MergeSummaries(MergeCounts):
    """The listing summaries of all work items -> one (input_splits as a sorted list of names)."""

    def extract_output(self, acc):
        empty = {"matched": 0, "skipped": {}, "skipped_non_data": 0, "input_bytes": 0, "input_splits": {}}
        return {**empty, **acc, "input_splits": sorted(acc.get("input_splits", {}))}


class ListInput(beam.PTransform):
    """Input root -> batches of (path, listing problem) and, tagged SUMMARY, one listing summary.

    Fan-out: the root is planned into units (listing.plan_units: a unit per class folder), the units
    are spread over the workers and listed in parallel, each streaming its batches."""

    SUMMARY = ListBatches.SUMMARY

    def __init__(self, files_per_batch: int):
        super().__init__()
        self.files_per_batch = files_per_batch

    def expand(self, roots):
        listed = (
            roots
            | "PlanUnits" >> beam.FlatMap(plan_work)
            | "SpreadUnits" >> beam.Reshuffle()
            | "ListUnits" >> beam.ParDo(ListBatches(self.files_per_batch)).with_outputs(self.SUMMARY, main="batches")
        )
        summary = listed[self.SUMMARY] | "MergeSummaries" >> beam.CombineGlobally(MergeSummaries())
        return {"batches": listed.batches, self.SUMMARY: summary}


def reject(uri: str, reason: str, detail: str, stage: str) -> beam.pvalue.TaggedOutput:
    """A dead-letter row (schemas.REJECTED_SCHEMA) on the "rejected" output."""
    return beam.pvalue.TaggedOutput("rejected", {"uri": uri, "reason": reason, "detail": detail, "stage": stage})


def read_image(path: str, problem: str | None, image_size: int, face_crop: bool, max_pixels: int,
               as_float: bool = False, face_detector: str = "haar"):
    """(pixels, pixel sha256) of one listed file through model.preprocess.preprocess; every way
    it can fail (a listing problem, an extension that is no image type, an I/O error, a decoding
    problem) is a PreprocessError with its reject reason, never an exception of another kind."""
    return decode_image(read_file(path, problem), image_size, face_crop, max_pixels, as_float, face_detector)


def read_file(path: str, problem: str | None) -> bytes:
    """The bytes of one listed image file, or a PreprocessError with its reject reason (a listing
    problem, an extension that is no image type, an I/O error). Apart from decoding so that a caller
    that also needs the file's hash reads it once."""
    if problem is not None:
        raise PreprocessError(problem, LISTING_PROBLEMS[problem])
    ext = extension(path)
    if ext not in IMAGE_EXTENSIONS:
        raise PreprocessError("unsupported_extension", f"extension {ext or '(none)'!r} is not an image type")
    try:
        with FileSystems.open(path) as f:
            return f.read()
    except Exception as exc:  # unreadable file, I/O error: dead-letter, never crash
        raise PreprocessError("unreadable", f"{type(exc).__name__}: {exc}"[:300]) from None


def decode_image(data: bytes, image_size: int, face_crop: bool, max_pixels: int, as_float: bool = False,
                 face_detector: str = "haar"):
    """(pixels, pixel sha256) of a file's bytes; any failure is a PreprocessError with its reason."""
    try:
        return preprocess(data, image_size, face_crop, max_pixels, as_float=as_float, face_detector=face_detector)
    except PreprocessError:
        raise
    except Exception as exc:  # a decoder's own error: dead-letter, never crash
        raise PreprocessError("unreadable", f"{type(exc).__name__}: {exc}"[:300]) from None


def decode_faces(data: bytes, image_size: int, max_pixels: int, as_float: bool = False, face_detector: str = "haar"):
    """([(pixels, Face)] of every face, largest first, pixel sha256) of a file's bytes (`--faces all`);
    any failure, no face included, is a PreprocessError with its reason."""
    try:
        return preprocess_faces(data, image_size, max_pixels, as_float=as_float, face_detector=face_detector)
    except PreprocessError:
        raise
    except Exception as exc:  # a decoder's own error: dead-letter, never crash
        raise PreprocessError("unreadable", f"{type(exc).__name__}: {exc}"[:300]) from None
