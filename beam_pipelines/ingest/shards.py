"""Ingest's shards: how many there are, and what one shard's group of records becomes: duplicates,
conflicts and leakage resolved, the planned evaluation splits carved from train, one TFRecord file
per split written. Every copy of an image lands in the same shard (its shard comes from its pixel
hash), so each shard decides on its own."""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

import apache_beam as beam

from beam_pipelines.base import progress
from beam_pipelines.base.files import join, write_bytes
from beam_pipelines.base.reading import reject
from beam_pipelines.ingest.shuffle import Record, hash_unit, load_records, pixels_of
from schemas import LABEL_TO_INDEX, SCHEMA_VERSION, eval_split_too_small, min_eval_images
from schemas.tfrecord import encode_example, tfrecord_frame

if TYPE_CHECKING:
    from beam_pipelines.ingest.options import IngestOptions

SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}  # the evaluation copy of a duplicate wins
TARGET_SHARD_BYTES = 32 << 20


def with_shard_plan(summary: dict, options: IngestOptions) -> dict:
    """The listing summary plus what ingest derives from it: the shard count (from the data size)
    and whether val is carved from train (split folders without a val)."""
    data_files = summary["matched"] - summary["skipped_non_data"]
    num_shards = options.num_shards or max(1, math.ceil(data_files * (options.image_size**2 + 200) / TARGET_SHARD_BYTES))
    splits = summary["input_splits"]
    carve_val = "train" in splits and "val" not in splits and options.val_fraction > 0
    return {**summary, "num_shards": num_shards, "carve_val": carve_val}


def shard_path(output, split, shard, num_shards):
    return join(output, "tfrecords", f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord")


def output_splits(summary, options: IngestOptions, carve):
    splits = set(summary["input_splits"]) | set(carve)
    if summary["carve_val"]:
        splits.add("val")
    if not summary["input_splits"]:  # no split folders: all three come from the hash
        splits = {"train", "test"} | ({"val"} if options.val_fraction > 0 else set())
    return sorted(splits, key=lambda s: -SPLIT_PRIORITY[s])


def _empty_split_stats():
    return {key: {"sum": 0.0, "sumsq": 0.0} for key in ("brightness", "contrast", "log_sharpness")} | {"n": 0}


# --------------------------------------------------------------------------- de-duplication


def resolve_copies(groups) -> tuple[list[Record], list[tuple[str, str, str]], dict]:
    """The records of one shard (every copy of an image lands in the same shard), in groups -> the
    records kept, the (uri, reason, detail) of those dropped, and duplicate/conflict/leakage counts.
    The evaluation copy of a duplicate wins (test over val over train), so leakage always
    removes the training-side copy."""
    by_hash: dict[str, list[Record]] = {}
    for records in groups:
        for record in records:
            by_hash.setdefault(record.digest, []).append(record)
    counts = {
        "rejected": {},
        "duplicates": {"groups": 0, "redundant_files": 0, "within_split": 0, "leakage": {}},
        "conflicts": {"groups": 0, "files": 0},
    }
    kept, dropped = [], []
    for copies in by_hash.values():
        copies.sort(key=lambda r: (SPLIT_PRIORITY[r.split], r.uri))
        if len(copies) > 1:
            counts["duplicates"]["groups"] += 1
        labels = sorted({r.label for r in copies})
        if len(labels) > 1:
            counts["conflicts"]["groups"] += 1
            counts["conflicts"]["files"] += len(copies)
            counts["rejected"]["conflicting_labels"] = counts["rejected"].get("conflicting_labels", 0) + len(copies)
            dropped += [(r.uri, "conflicting_labels", f"{len(copies)} pixel-identical copies labelled {labels}")
                        for r in copies]
            continue
        keeper = copies[0]
        kept.append(keeper)
        for r in copies[1:]:
            counts["duplicates"]["redundant_files"] += 1
            if r.split == keeper.split:
                reason = "duplicate"
                counts["duplicates"]["within_split"] += 1
            else:
                reason = "leakage"
                pair = f"{r.split}->{keeper.split}"
                counts["duplicates"]["leakage"][pair] = counts["duplicates"]["leakage"].get(pair, 0) + 1
            counts["rejected"][reason] = counts["rejected"].get(reason, 0) + 1
            dropped.append((r.uri, reason, f"pixel-identical to {keeper.uri} (kept in {keeper.split})"))
    return kept, dropped, counts


class CountKept(beam.DoFn):
    """(shard, its parts) -> images per split that the shard keeps after de-duplication (the input
    of plan_splits)."""

    def process(self, element):
        _, parts = element
        kept, _, _ = resolve_copies(load_records(parts))
        counts: dict[str, int] = {}
        for record in kept:
            counts[record.split] = counts.get(record.split, 0) + 1
        yield counts


def plan_splits(kept: dict, summary: dict, options: IngestOptions) -> dict:
    """Which evaluation splits to carve afresh from train: those that de-duplication and leakage
    removal (or the input) left too small to decide anything (schemas.eval_split_too_small),
    when the carve itself would be large enough. {split: {"fraction", "found", "needed"}}."""
    n_train = kept.get("train", 0)
    carve = {}
    if summary["input_splits"]:  # content-hash splits are sized by their fractions already
        for split, fraction in (("test", options.test_fraction), ("val", options.val_fraction)):
            found = kept.get(split, 0)
            present = split in summary["input_splits"] or (split == "val" and summary["carve_val"])
            carved = int(fraction * n_train)
            if (present and fraction > 0 and eval_split_too_small(found, n_train)
                    and not eval_split_too_small(carved, n_train - carved)):
                carve[split] = {"fraction": fraction, "found": found, "needed": min_eval_images(n_train)}
    return carve


def carved_split(record: Record, carve: dict, seed: int) -> str:
    """The split of a kept record once the plan's fresh splits are carved from train (by content
    hash, salted per split so that the two carves are independent)."""
    if record.split != "train":
        return record.split
    for split in ("test", "val"):
        if split in carve and hash_unit(seed, f"{split}:{record.digest}") < carve[split]["fraction"]:
            return split
    return "train"


# --------------------------------------------------------------------------- writing


def example_frame(record: Record, pixels: bytes, size: int) -> bytes:
    """One kept image as a framed tf.train.Example (schemas.FEATURES)."""
    return tfrecord_frame(encode_example({
        "image/raw": pixels,
        "image/height": size,
        "image/width": size,
        "image/sha256": record.digest,
        "label/index": LABEL_TO_INDEX[record.label],
        "label/name": record.label,
        "source/uri": record.uri,
        "split": record.split,
        "schema_version": SCHEMA_VERSION,
    }))


def add_to_stats(stats: dict, record: Record) -> None:
    """A written image's share of the raw stats (counts, metric sums, the fingerprint)."""
    per_split = stats["written"].setdefault(record.split, {})
    per_split[record.label] = per_split.get(record.label, 0) + 1
    s = stats["image_stats"].setdefault(record.split, _empty_split_stats())
    s["n"] += 1
    m = record.metrics
    for key, value in (("brightness", m.brightness), ("contrast", m.contrast), ("log_sharpness", math.log1p(m.sharpness))):
        s[key]["sum"] += value
        s[key]["sumsq"] += value * value
    stats["fingerprint"] += int(hashlib.sha256(f"{record.digest}:{record.split}:{record.label}".encode()).hexdigest()[:16], 16)


class DedupeAndWriteShard(beam.DoFn):
    """(shard, its parts): resolve duplicates, conflicts and leakage, carve the planned splits, then
    write one TFRecord file per split; rejected rows and raw stats on the side."""

    def __init__(self, options: IngestOptions):
        self.options = options
        self.written = progress.Counter("images_written")
        self.dropped = progress.Counter("images_dropped")  # duplicate, leakage, conflicting_labels

    def process(self, element, summary, carve):
        shard, parts = element
        kept, dropped, counts = resolve_copies(load_records(parts))
        for uri, reason, detail in dropped:
            progress.count_reject(reason)
            yield reject(uri, reason, detail, "ingest")
        self.dropped.inc(len(dropped))
        stats = {"written": {}, "image_stats": {}, "fingerprint": 0, **counts}
        kept = [record._replace(split=carved_split(record, carve, self.options.seed)) for record in kept]
        kept.sort(key=lambda r: (r.split, r.digest, r.uri))
        size = self.options.image_size
        files = {split: [] for split in output_splits(summary, self.options, carve)}
        for record, pixels in zip(kept, pixels_of(kept, size)):
            files.setdefault(record.split, []).append(example_frame(record, pixels, size))
            add_to_stats(stats, record)
        for split, frames in files.items():
            write_bytes(shard_path(self.options.staging, split, shard, summary["num_shards"]), b"".join(frames))
        self.written.inc(len(kept))
        yield beam.pvalue.TaggedOutput("stats", stats)


class WriteEmptyShards(beam.DoFn):
    """Shards that received no image still exist (empty), so every split has N-of-N files."""

    def __init__(self, options: IngestOptions):
        self.options = options

    def process(self, written_shards, summary, carve):
        for shard in sorted(set(range(summary["num_shards"])) - set(written_shards)):
            for split in output_splits(summary, self.options, carve):
                write_bytes(shard_path(self.options.staging, split, shard, summary["num_shards"]), b"")
        yield len(written_shards)
