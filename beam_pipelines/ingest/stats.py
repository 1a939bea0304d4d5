"""Ingest's stats.json and its class distribution plot: the raw counts merged from the listing, the
decoders and the shard writers, turned into totals that add up, duplicates and leakage, data health
per split, and the warnings a user should read."""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING

import apache_beam as beam
import numpy as np

from beam_pipelines.base.files import join, write_bytes
from beam_pipelines.base.manifest import remove_tree
from beam_pipelines.ingest.shards import SPLIT_PRIORITY
from model.files import png_bytes, pyplot
from schemas import LABELS, SCHEMA_VERSION, SPLITS, eval_split_too_small, min_eval_images

if TYPE_CHECKING:
    from beam_pipelines.ingest.options import IngestOptions

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
    image_stats = {split: _image_stats(s) for split, s in raw.get("image_stats", {}).items()}
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
    stats["warnings"] = _warnings(stats, carve, dup["leakage"])
    return stats


def _image_stats(s: dict) -> dict:
    """One split's image statistics from its sums (brightness, contrast, log-sharpness)."""
    b_mean, b_std = _mean_std(s["brightness"], s["n"])
    c_mean, c_std = _mean_std(s["contrast"], s["n"])
    ls_mean, ls_std = _mean_std(s["log_sharpness"], s["n"])
    return {
        "images": s["n"],
        "brightness_mean": b_mean,
        "brightness_std": b_std,
        "contrast_mean": c_mean,
        "contrast_std": c_std,
        "sharpness_geomean": math.expm1(ls_mean),
        "log_sharpness_std": ls_std,
    }


def _warnings(stats: dict, carve: dict, leakage: dict) -> list[str]:
    """stats.json's warnings, in this order: data health, carved splits, small splits, leakage, totals."""
    warnings = health_warnings(stats["image_stats"])
    for split, c in sorted(carve.items()):
        warnings.append(
            f"{split} held {c['found']} image(s) after de-duplication, fewer than the {c['needed']} needed to decide "
            f"anything: a fresh {split} of {c['fraction']:.0%} of train was carved by content hash (those images kept too)"
        )
    warnings.extend(small_split_warnings(stats["written_per_split"]))
    if leakage:
        warnings.append(
            "pixel-identical images across splits: "
            + ", ".join(f"{n} {pair}" for pair, n in sorted(leakage.items()))
            + " (the training-side copies were dropped)"
        )
    if not stats["totals"]["balanced"]:
        warnings.append("input and output totals do not add up")
    return warnings


def small_split_warnings(per_split: dict) -> list[str]:
    """An evaluation split too small to choose epochs or report on (the rule `emotion train` applies,
    schemas.eval_split_too_small): said at ingest, where the fix is, rather than first at training."""
    n_train = int(per_split.get("train", 0))
    warnings = []
    for split in ("val", "test"):
        n = int(per_split.get(split, 0))
        if n_train and n and eval_split_too_small(n, n_train):
            warnings.append(
                f"{split} holds {n} image(s), fewer than the {min_eval_images(n_train)} needed next to {n_train} "
                f"training images (emotion train refuses such a val): pass a larger --{split}-fraction or add images")
    return warnings


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
    if ax.get_legend_handles_labels()[0]:  # no split written (every file rejected): no legend, no warning
        ax.legend(loc="upper right")
    fig.tight_layout()
    return png_bytes(fig)


class WriteStats(beam.DoFn):
    """The merged raw stats -> stats.json and the plot (the spill, if any, removed: every shard is
    written once stats exist, as they are merged from the shard writers)."""

    def __init__(self, options: IngestOptions):
        self.options = options

    def process(self, raw, summary, carve):
        stats = finalize_stats(raw, summary, carve, self.options)
        write_bytes(join(self.options.staging, "stats.json"), (json.dumps(stats, indent=2) + "\n").encode(), "application/json")
        write_bytes(join(self.options.staging, "plots", "class_distribution.png"), plot_class_distribution(stats), "image/png")
        for warning in stats["warnings"]:
            logging.getLogger("emotion").warning("ingest: %s", warning)
        if self.options.shuffle == "spill":
            remove_tree(join(self.options.staging, ".spill"), self.options.staging)
        yield stats


