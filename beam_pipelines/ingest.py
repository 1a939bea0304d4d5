"""Ingest: raw image folders (local or gs://) -> validated, de-duplicated, sharded TFRecords.

    emotion ingest --input /tmp/fer2013 --output /tmp/fer2013-ingest
    emotion ingest --input gs://bucket/faces --output gs://bucket/ingest \\
        --runner DataflowRunner --project my-project --region us-central1 --temp_location gs://bucket/tmp

Outputs under --output:
  tfrecords/<split>-SSSSS-of-NNNNN.tfrecord   one tf.train.Example per kept image (schemas.FEATURES)
  rejected/*.parquet                          every input not written, with reason and detail
  stats.json                                  counts that add up, duplicates/leakage, data health
  plots/class_distribution.png

Per-element overhead is what makes a Beam job slow on small images, so work travels in
batches: the listing emits batches of files, each batch is decoded in one call and its
images are pre-grouped by shard, so the shuffle moves a few hundred lists rather than one
element per image. The shard of an image is derived from its pixel hash, so all copies
of an image meet in the same shard group, where duplicates and leakage are resolved.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import logging
import math
import sys
import time
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_pipelines import progress
from beam_pipelines.common import (
    UsageError,
    check_max_pixels,
    check_remote_paths,
    check_unknown_args,
    check_storage_access,
    is_dry_run,
    is_remote_runner,
    join,
    MergeCounts,
    log,
    pipeline_options,
    split_and_class_dir,
    write_bytes,
)
from beam_pipelines.listing import exists_any
from beam_pipelines.outputs import CommitOutputs, CommitPlan, OutputClaim, remove_tree
from beam_pipelines.reading import ListInput, listing_total, read_image, reject
from model.files import png_bytes, pyplot
from model.preprocess import DEFAULT_MAX_PIXELS, PreprocessError, image_metrics
from schemas import (
    LABEL_TO_INDEX,
    LABELS,
    REJECTED_SCHEMA,
    SCHEMA_VERSION,
    SPLITS,
    canonical_label,
    eval_split_too_small,
    min_eval_images,
)
from schemas.tfrecord import encode_example, tfrecord_frame

SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}  # the evaluation copy of a duplicate wins
TARGET_SHARD_BYTES = 32 << 20
OUTPUT_NAMES = ["tfrecords", "rejected", "stats.json", "plots"]


def build_parser() -> argparse.ArgumentParser:
    """The options of this stage: the one source for the CLI and the Dataflow flex template
    (deploy/dataflow/*.metadata.json are checked against it by tests)."""
    parser = argparse.ArgumentParser(prog="emotion ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="image root: <root>/<split>/<class>/* or <root>/<class>/*")
    parser.add_argument("--output", required=True, help="output folder (local or gs://)")
    parser.add_argument("--image-size", type=int, default=48, help="side of the square grayscale images written (8-512)")
    parser.add_argument("--face-crop", action="store_true", help="crop the largest face (Haar cascade)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="val carved from train by content hash when the input has no val"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.1, help="test fraction by content hash when the input has no splits"
    )
    parser.add_argument("--seed", type=int, default=0, help="salt of the content-hash split assignment")
    parser.add_argument("--num-shards", type=int, default=0, help="shards per split (0: from the data size)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are rejected as too_large, from their header, before decoding")
    parser.add_argument("--files-per-batch", type=int, default=256, help="files decoded per work item")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files under --output that no earlier run of this pipeline wrote")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress lines on stderr while a local run runs (the final summary still prints)")
    return parser


def parse_args(argv):
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    check_unknown_args(beam_args, parser.prog)
    check_max_pixels(args.max_pixels)
    if args.files_per_batch < 1 or args.num_shards < 0:
        raise UsageError("--files-per-batch must be at least 1 and --num-shards at least 0")
    if not 8 <= args.image_size <= 512:
        raise UsageError("--image-size must be between 8 and 512")
    if not (0 <= args.val_fraction < 1 and 0 <= args.test_fraction < 1 and args.val_fraction + args.test_fraction < 1):
        raise UsageError("--val-fraction and --test-fraction must be in [0, 1) and sum below 1")
    args.input = args.input.rstrip("/")
    args.output = args.output.rstrip("/")
    return args, beam_args


@dataclasses.dataclass(frozen=True)
class IngestOptions:
    """What the pipeline's steps need from the command line (the DoFns take this, not argparse's
    Namespace); `staging` is where this run writes (outputs.CommitPlan.write_root)."""

    input: str
    output: str
    staging: str
    image_size: int
    face_crop: bool
    max_pixels: int
    seed: int
    val_fraction: float
    test_fraction: float
    num_shards: int
    files_per_batch: int

    @classmethod
    def from_args(cls, args, staging: str) -> IngestOptions:
        names = [f.name for f in dataclasses.fields(cls) if f.name != "staging"]
        return cls(staging=staging, **{name: getattr(args, name) for name in names})


def hash_unit(seed: int, digest: str) -> float:
    """A deterministic number in [0, 1) from a content hash: the split assignment key."""
    h = hashlib.blake2b(f"{seed}:{digest}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def shard_of(digest: str, num_shards: int) -> int:
    return int(digest[:12], 16) % num_shards


# --------------------------------------------------------------------------- listing


def with_shard_plan(summary: dict, options: IngestOptions) -> dict:
    """The listing summary plus what ingest derives from it: the shard count (from the data size)
    and whether val is carved from train (split folders without a val)."""
    data_files = summary["matched"] - summary["skipped_non_data"]
    num_shards = options.num_shards or max(1, math.ceil(data_files * (options.image_size**2 + 200) / TARGET_SHARD_BYTES))
    splits = summary["input_splits"]
    carve_val = "train" in splits and "val" not in splits and options.val_fraction > 0
    return {**summary, "num_shards": num_shards, "carve_val": carve_val}


# --------------------------------------------------------------------------- decoding


def write_spill(staging: str, shard: int, batch_id: str, items: list) -> str:
    """One (batch, shard)'s decoded images, spilled: <base>.pixels (the pixels back to back) and
    <base>.json (digest, split, label, uri, metrics per image, in the same order). Returns <base>."""
    base = join(staging, ".spill", f"{shard:05d}-{batch_id}")
    write_bytes(f"{base}.pixels", b"".join(item[5] for item in items))
    write_bytes(f"{base}.json", json.dumps([[*item[:4], list(item[4])] for item in items]).encode(), "application/json")
    return base


def read_spill(bases, image_size: int) -> list[list[Record]]:
    """The records of spilled (batch, shard) groups, one list per group (see write_spill)."""
    groups = []
    for base in sorted(bases):
        with FileSystems.open(f"{base}.json") as f:
            meta = json.loads(f.read())
        groups.append([Record(d, s, label, uri, tuple(m), f"{base}.pixels", i * image_size * image_size)
                       for i, (d, s, label, uri, m) in enumerate(meta)])
    return groups


class DecodeBatch(beam.DoFn):
    """A batch of files -> (shard, spill base) pairs; rejected rows and reject counts on the side.

    The decoded images of each (batch, shard) are spilled to files under <staging>/.spill, pixels and
    metadata both (write_spill), so the shuffle carries one short name per (batch, shard) instead of
    ~300 bytes per image: a runner that keeps shuffled data in memory (the DirectRunner does) stays
    flat as the archive grows.
    """

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

    def process(self, batch, summary):
        root, a = self.options.input, self.options
        shards: dict[int, list] = {}
        rejected: dict[str, int] = {}
        for path, problem in batch:
            folder_split, class_dir = split_and_class_dir(path[len(root) + 1 :])
            try:
                if class_dir is None:
                    raise PreprocessError("no_class_folder", "file is not inside a class folder")
                if canonical_label(class_dir) is None:
                    raise PreprocessError("unknown_class", f"folder {class_dir!r} maps to no emotion class")
                pixels, digest = read_image(path, problem, a.image_size, a.face_crop, a.max_pixels)
                metrics = image_metrics(pixels)
                if metrics[1] == 0.0:
                    raise PreprocessError("blank_image", f"every pixel is {int(pixels[0, 0])}")
            except PreprocessError as exc:
                rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
                self.rejected.inc()
                progress.count_reject(exc.reason)
                yield reject(path, exc.reason, exc.detail, "ingest")
                continue
            label = canonical_label(class_dir)
            split = self._split_of(folder_split, digest, summary)
            shards.setdefault(shard_of(digest, summary["num_shards"]), []).append(
                (digest, split, label, path, metrics, pixels.tobytes())
            )
        self.decoded.inc(sum(len(items) for items in shards.values()))
        batch_id = hashlib.blake2b("\n".join(p for p, _ in batch).encode(), digest_size=10).hexdigest()
        for shard, items in shards.items():
            # Deterministic names: a retried bundle rewrites the same files with the same bytes.
            yield shard, write_spill(self.options.staging, shard, batch_id, items)
        yield beam.pvalue.TaggedOutput("stats", {"rejected": rejected})


# --------------------------------------------------------------------------- dedupe + write


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


class Record(NamedTuple):
    """One decoded image on its way to its shard (its pixels wait in a spill file)."""

    digest: str  # sha256 of the preprocessed pixels
    split: str
    label: str
    uri: str
    metrics: tuple  # (brightness, contrast, sharpness)
    spill: str
    offset: int


def resolve_copies(batches) -> tuple[list[Record], list[tuple[str, str, str]], dict]:
    """The records of one shard (every copy of an image lands in the same shard) -> the records
    kept, the (uri, reason, detail) of those dropped, and duplicate/conflict/leakage counts.
    The evaluation copy of a duplicate wins (test over val over train), so leakage always
    removes the training-side copy."""
    by_hash: dict[str, list[Record]] = {}
    for records in batches:
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
    """Images per split that one shard keeps after de-duplication (the input of plan_splits)."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def process(self, element):
        kept, _, _ = resolve_copies(read_spill(element[1], self.image_size))
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


class DedupeAndWriteShard(beam.DoFn):
    """All records of one shard: resolve duplicates, conflicts and leakage, carve the planned
    splits, then write one TFRecord file per split."""

    def __init__(self, options: IngestOptions):
        self.options = options
        self.written = progress.Counter("images_written")
        self.dropped = progress.Counter("images_dropped")  # duplicate, leakage, conflicting_labels

    def process(self, element, summary, carve):
        shard, spills = element
        kept, dropped, counts = resolve_copies(read_spill(spills, self.options.image_size))
        for uri, reason, detail in dropped:
            progress.count_reject(reason)
            yield reject(uri, reason, detail, "ingest")
        self.dropped.inc(len(dropped))
        stats = {"written": {}, "image_stats": {}, "fingerprint": 0, **counts}
        kept = [record._replace(split=carved_split(record, carve, self.options.seed)) for record in kept]
        kept.sort(key=lambda r: (r[1], r[0], r[3]))
        size = self.options.image_size
        spilled = {}
        for spill in sorted({r[5] for r in kept}):
            with FileSystems.open(spill) as f:
                spilled[spill] = f.read()
        files = {split: [] for split in output_splits(summary, self.options, carve)}
        for digest, split, label, uri, (brightness, contrast, sharpness), spill, offset in kept:
            pixels = spilled[spill][offset : offset + size * size]
            files.setdefault(split, []).append(
                tfrecord_frame(
                    encode_example(
                        {
                            "image/raw": pixels,
                            "image/height": size,
                            "image/width": size,
                            "image/sha256": digest,
                            "label/index": LABEL_TO_INDEX[label],
                            "label/name": label,
                            "source/uri": uri,
                            "split": split,
                            "schema_version": SCHEMA_VERSION,
                        }
                    )
                )
            )
            per_split = stats["written"].setdefault(split, {})
            per_split[label] = per_split.get(label, 0) + 1
            s = stats["image_stats"].setdefault(split, _empty_split_stats())
            s["n"] += 1
            for key, value in (("brightness", brightness), ("contrast", contrast), ("log_sharpness", math.log1p(sharpness))):
                s[key]["sum"] += value
                s[key]["sumsq"] += value * value
            stats["fingerprint"] += int(hashlib.sha256(f"{digest}:{split}:{label}".encode()).hexdigest()[:16], 16)
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


# --------------------------------------------------------------------------- stats


def _mean_std(sums, n):
    if n == 0:
        return None, None
    mean = sums["sum"] / n
    return mean, math.sqrt(max(0.0, sums["sumsq"] / n - mean * mean))


def health_warnings(image_stats: dict) -> list[str]:
    """Warnings when splits differ sharply in brightness, contrast or sharpness."""
    warnings = []
    # Splits of a handful of images say nothing about a distribution shift.
    splits = [s for s in SPLITS if s in image_stats and image_stats[s]["images"] >= 30]
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            sa, sb = image_stats[a], image_stats[b]
            ratio = sa["sharpness_geomean"] / max(sb["sharpness_geomean"], 1e-9)
            if ratio < 0.5 or ratio > 2.0:
                warnings.append(
                    f"{a} and {b} differ sharply in sharpness (Laplacian variance, geometric mean "
                    f"{sa['sharpness_geomean']:.1f} vs {sb['sharpness_geomean']:.1f}, ratio {ratio:.2f}): "
                    "one split may be blurred or re-encoded; a model trained on it will not transfer"
                )
            if abs(sa["brightness_mean"] - sb["brightness_mean"]) > 20:
                warnings.append(
                    f"{a} and {b} differ sharply in brightness ({sa['brightness_mean']:.1f} vs {sb['brightness_mean']:.1f})"
                )
            cr = sa["contrast_mean"] / max(sb["contrast_mean"], 1e-9)
            if cr < 0.67 or cr > 1.5:
                warnings.append(
                    f"{a} and {b} differ sharply in contrast ({sa['contrast_mean']:.1f} vs {sb['contrast_mean']:.1f})"
                )
    return warnings


def finalize_stats(raw: dict, summary: dict, carve: dict, options: IngestOptions) -> dict:
    written = {split: dict(sorted(c.items(), key=lambda kv: LABELS.index(kv[0]))) for split, c in raw.get("written", {}).items()}
    n_written = sum(sum(c.values()) for c in written.values())
    rejected = dict(sorted(raw.get("rejected", {}).items()))
    n_rejected = sum(rejected.values())
    n_skipped = sum(summary["skipped"].values())
    image_stats = {}
    for split, s in raw.get("image_stats", {}).items():
        b_mean, b_std = _mean_std(s["brightness"], s["n"])
        c_mean, c_std = _mean_std(s["contrast"], s["n"])
        ls_mean, ls_std = _mean_std(s["log_sharpness"], s["n"])
        image_stats[split] = {
            "images": s["n"],
            "brightness_mean": b_mean,
            "brightness_std": b_std,
            "contrast_mean": c_mean,
            "contrast_std": c_std,
            "sharpness_geomean": math.expm1(ls_mean),
            "log_sharpness_std": ls_std,
        }
    dup = raw.get("duplicates", {"groups": 0, "redundant_files": 0, "within_split": 0, "leakage": {}})
    stats = {
        "schema_version": SCHEMA_VERSION,
        "labels": list(LABELS),
        "image_size": options.image_size,
        "face_crop": options.face_crop,
        "input": options.input,
        "output": options.output,
        "split_source": "folders" if summary["input_splits"] else "content_hash",
        "val_carved_from_train": summary["carve_val"] or "val" in carve,
        # Evaluation splits that de-duplication or the input left too small, carved afresh from train.
        "splits_carved_from_train": carve,
        "val_fraction": options.val_fraction,
        "test_fraction": options.test_fraction if not summary["input_splits"] else None,
        "seed": options.seed,
        "num_shards": summary["num_shards"],
        "totals": {
            "matched": summary["matched"],
            "written": n_written,
            "rejected": n_rejected,
            "skipped_non_data": n_skipped,
            "balanced": summary["matched"] == n_written + n_rejected + n_skipped,
        },
        "written": {s: written[s] for s in sorted(written, key=lambda s: -SPLIT_PRIORITY[s])},
        "written_per_split": {s: sum(c.values()) for s, c in written.items()},
        "rejected": rejected,
        "skipped": summary["skipped"],
        "duplicates": {
            "groups": dup["groups"],
            "redundant_files": dup["redundant_files"],
            "dropped_within_split": dup["within_split"],
            "leakage_dropped": dup["leakage"],
            "conflicting_label_groups": raw.get("conflicts", {}).get("groups", 0),
            "conflicting_label_files": raw.get("conflicts", {}).get("files", 0),
        },
        "image_stats": image_stats,
        "fingerprint": f"{raw.get('fingerprint', 0) % (1 << 64):016x}-{n_written}",
    }
    stats["warnings"] = health_warnings(image_stats)
    for split, c in sorted(carve.items()):
        stats["warnings"].append(
            f"{split} held {c['found']} image(s) after de-duplication, fewer than the {c['needed']} needed to decide "
            f"anything: a fresh {split} of {c['fraction']:.0%} of train was carved by content hash (those images kept too)"
        )
    if dup["leakage"]:
        stats["warnings"].append(
            "pixel-identical images across splits: "
            + ", ".join(f"{n} {pair}" for pair, n in sorted(dup["leakage"].items()))
            + " (the training-side copies were dropped)"
        )
    if not stats["totals"]["balanced"]:
        stats["warnings"].append("input and output totals do not add up")
    return stats


def plot_class_distribution(stats: dict) -> bytes:
    plt = pyplot()

    splits = list(stats["written"])
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    width = 0.8 / max(1, len(splits))
    x = np.arange(len(LABELS))
    for i, split in enumerate(splits):
        counts = [stats["written"][split].get(label, 0) for label in LABELS]
        bars = ax.bar(x + (i - (len(splits) - 1) / 2) * width, counts, width, label=f"{split} ({sum(counts)})")
        ax.bar_label(bars, fontsize=6)
    ax.set_xticks(x, LABELS)
    ax.set_ylabel("images")
    ax.set_title("Class distribution per split (after de-duplication)")
    ax.legend(loc="upper right")
    fig.tight_layout()
    return png_bytes(fig)


class WriteStats(beam.DoFn):
    def __init__(self, options: IngestOptions):
        self.options = options

    def process(self, raw, summary, carve):
        stats = finalize_stats(raw, summary, carve, self.options)
        write_bytes(join(self.options.staging, "stats.json"), (json.dumps(stats, indent=2) + "\n").encode(), "application/json")
        write_bytes(join(self.options.staging, "plots", "class_distribution.png"), plot_class_distribution(stats), "image/png")
        for warning in stats["warnings"]:
            logging.getLogger("emotion").warning("ingest: %s", warning)
        # Every shard is written once stats exist (they are merged from the shard writers).
        remove_tree(join(self.options.staging, ".spill"), self.options.staging)
        yield stats


# --------------------------------------------------------------------------- pipeline


class Ingest(beam.PTransform):
    """Image root -> TFRecord shards + rejected rows + stats (the whole ingest, as one transform)."""

    def __init__(self, options: IngestOptions, plan: CommitPlan):
        super().__init__()
        self.options, self.plan = options, plan

    def expand(self, pbegin):
        a = self.options
        listing = pbegin | "Start" >> beam.Create([a.input]) | "ListFiles" >> ListInput(a.files_per_batch)
        summary = beam.pvalue.AsSingleton(listing[ListInput.SUMMARY] | "ShardPlan" >> beam.Map(with_shard_plan, a))
        decoded = (
            listing["batches"]
            | "SpreadBatches" >> beam.Reshuffle()
            | "DecodeBatches" >> beam.ParDo(DecodeBatch(a), summary).with_outputs("rejected", "stats", main="shards")
        )
        grouped = decoded.shards | "GroupByShard" >> beam.GroupByKey()
        # Known only once duplicates and leakage are resolved: whether val/test are left too small.
        carve = beam.pvalue.AsSingleton(
            grouped
            | "CountKept" >> beam.ParDo(CountKept(a.image_size))
            | "MergeKept" >> beam.CombineGlobally(MergeCounts())
            | "PlanSplits" >> beam.Map(plan_splits, summary, a)
        )
        written = grouped | "DedupeAndWrite" >> beam.ParDo(DedupeAndWriteShard(a), summary, carve).with_outputs(
            "stats", "rejected", main="done")
        # Shards that got no image are written empty, so each split is a complete N-of-N set.
        empty_shards = (
            decoded.shards
            | "ShardIds" >> beam.Keys()
            | "DistinctShards" >> beam.Distinct()
            | "AllShardIds" >> beam.combiners.ToList()
            | "WriteEmptyShards" >> beam.ParDo(WriteEmptyShards(a), summary, carve)
        )
        rejected = (decoded.rejected, written.rejected) | "AllRejected" >> beam.Flatten()
        rejected_files = rejected | "WriteRejected" >> beam.io.WriteToParquet(
            join(a.staging, "rejected", "rejected"),
            REJECTED_SCHEMA,
            file_name_suffix=".parquet",
        )
        stats = (
            (decoded.stats, written.stats)
            | "AllStats" >> beam.Flatten()
            | "MergeStats" >> beam.CombineGlobally(MergeCounts())
            | "WriteStats" >> beam.ParDo(WriteStats(a), summary, carve)
        )
        totals = stats | "Totals" >> beam.Map(lambda s: s["totals"])
        return pbegin | "Commit" >> CommitOutputs(self.plan, totals, after=[empty_shards, rejected_files, stats])


def run(argv=None, save_main_session=True) -> dict | None:
    """Runs ingest; returns stats.json's content when the run is local and finished."""
    args, beam_args = parse_args(argv)
    options = pipeline_options(beam_args, save_main_session)
    check_remote_paths(options, input=args.input, output=args.output)
    dry_run = is_dry_run(options)
    if not dry_run:  # a dry run touches no storage
        check_storage_access(args.input, args.output)
        try:
            found = exists_any(args.input)
        except Exception as exc:
            raise UsageError(f"cannot list --input {args.input}: {exc}") from None
        if not found:
            missing = "" if "://" in args.input or os.path.exists(args.input) else ": it does not exist"
            raise UsageError(f"no files under --input {args.input}{missing}")
    claim = OutputClaim(args.output, "ingest", OUTPUT_NAMES, overwrite=args.overwrite, description={
        "command": " ".join(["emotion", "ingest", *(sys.argv[2:] if argv is None else argv)]),
        "input": args.input,
        "options": {k: v for k, v in vars(args).items() if k not in ("input", "output")},
        "remote": is_remote_runner(options),
    })
    started = time.time()
    log.info("ingest: %s -> %s", args.input, args.output)
    if dry_run:
        return _run_pipeline(args, options, claim.dry_run_plan())
    with claim as plan:
        counters = _run_pipeline(args, options, plan)
        if counters is None:
            return None
    with FileSystems.open(join(args.output, "stats.json")) as f:
        stats = json.loads(f.read())
    t = stats["totals"]
    log.info(
        "ingest: %d matched -> %d written, %d rejected, %d skipped in %.1fs%s",
        t["matched"], t["written"], t["rejected"], t["skipped_non_data"], time.time() - started,
        progress.format_counters(counters),
    )
    return stats


def _run_pipeline(args, options, plan: CommitPlan):
    """Runs (or submits) the pipeline writing under the plan's staging folder, with progress lines when it
    runs here; its Beam counters ({name: value}) when it ran here, None when it was submitted."""
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "Ingest" >> Ingest(IngestOptions.from_args(args, staging=plan.write_root), plan)
    if is_remote_runner(options):
        result = pipeline.run()
        log.info("ingest: submitted %s", result.job_id() if getattr(result, "has_job", False) else "")
        return None
    with progress.report("ingest", progress_figures, quiet=args.quiet):
        result = pipeline.run()
        result.wait_until_finish()
    return progress.beam_counters(result)


def progress_figures(counts: dict) -> progress.Figures:
    """A progress line: images read (decoded or rejected) of those the listing found; once all are read,
    images through de-duplication (written, or dropped as a copy) of those decoded."""
    total, read = listing_total(counts), counts.get("images_decoded", 0) + counts.get("images_rejected", 0)
    if total is None or read < total:
        return progress.Figures(read, total, "images read")
    written = counts.get("images_written", 0)
    return progress.Figures(written + counts.get("images_dropped", 0), counts.get("images_decoded", 0),
                            "images de-duplicated", f"{written:,} written")
