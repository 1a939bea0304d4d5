"""Ingest: raw image folders (local or gs://) -> validated, de-duplicated, sharded TFRecords.

    emotion ingest --input /tmp/fer2013 --output /tmp/fer2013-ingest
    emotion ingest --input gs://bucket/faces --output gs://bucket/ingest \\
        --runner DataflowRunner --project my-project --region us-central1 --temp_location gs://bucket/tmp

Outputs under --output:
  tfrecords/<split>-SSSSS-of-NNNNN.tfrecord   one tf.train.Example per kept image (schemas.FEATURES)
  rejected/*.parquet                          every input not written, with reason and detail
  stats.json                                  counts that add up, duplicates/leakage, data health
  plots/class_distribution.png

The stage in modules: this one (the parser, the checks, the claim, the run), pipeline (`Ingest`, the
transform), options (what the steps take from the command line), shuffle (decoding, and the records'
way through the shuffle: spilled or carried, --shuffle), shards (de-duplication, carving, shard
files), stats (stats.json, the plot).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PortableOptions, StandardOptions

from beam_pipelines.base import progress
from beam_pipelines.base.files import check_input, check_storage_access, join
from beam_pipelines.base.outputs import CommitPlan, OutputClaim
from beam_pipelines.base.reading import listing_total
from beam_pipelines.base.runner import (
    add_run_flags,
    check_remote_paths,
    is_dry_run,
    is_remote_runner,
    log,
    parse_run_args,
    pipeline_options,
)
from beam_pipelines.ingest.options import IngestOptions
from beam_pipelines.ingest.pipeline import Ingest
from beam_pipelines.ingest.shuffle import SHUFFLE_MODES, shuffle_mode
from model.errors import UsageError

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
    parser.add_argument(
        "--shuffle", choices=SHUFFLE_MODES, default="auto",
        help="how decoded images reach their shard: spill (to files under --output; the shuffle carries their "
             "names), records (the shuffle carries the pixels), auto (spill on the in-memory DirectRunner and "
             "Prism, records on Dataflow, Flink, Spark)",
    )
    add_run_flags(parser, files_per_batch_help="files decoded per work item")
    return parser


def parse_args(argv):
    args, beam_args = parse_run_args(build_parser(), argv)
    if args.num_shards < 0:
        raise UsageError("--num-shards must be at least 0")
    if not 8 <= args.image_size <= 512:
        raise UsageError("--image-size must be between 8 and 512")
    if not (0 <= args.val_fraction < 1 and 0 <= args.test_fraction < 1 and args.val_fraction + args.test_fraction < 1):
        raise UsageError("--val-fraction and --test-fraction must be in [0, 1) and sum below 1")
    return args, beam_args




def run(argv=None, save_main_session=True) -> dict | None:
    """Runs ingest; returns stats.json's content when the run is local and finished."""
    args, beam_args = parse_args(argv)
    options = pipeline_options(beam_args, save_main_session)
    check_remote_paths(options, input=args.input, output=args.output)
    dry_run = is_dry_run(options)
    if not dry_run:  # a dry run touches no storage
        check_storage_access(args.input, args.output)
        check_input(args.input)
    claim = OutputClaim(args.output, "ingest", OUTPUT_NAMES, overwrite=args.overwrite, description={
        "command": " ".join(["emotion", "ingest", *(sys.argv[2:] if argv is None else argv)]),
        "input": args.input,
        "options": {k: v for k, v in vars(args).items() if k not in ("input", "output")},
        "remote": is_remote_runner(options),
    })
    started = time.time()
    if dry_run:
        log.info("ingest: %s -> %s (dry run)", args.input, args.output)
        return _run_pipeline(args, options, claim.dry_run_plan())
    with claim as plan:
        # after the claim's checks: a refused run prints its one error line and nothing else
        log.info("ingest: %s -> %s", args.input, args.output)
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
    shuffle = shuffle_mode(args.shuffle, options.view_as(StandardOptions).runner,
                           options.view_as(PortableOptions).job_endpoint)
    log.info("ingest: --shuffle %s", shuffle)
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "Ingest" >> Ingest(IngestOptions.from_args(args, staging=plan.write_root, shuffle=shuffle), plan)
    return progress.run_here_or_submit(pipeline, "ingest", progress_figures, args.quiet,
                                       remote=is_remote_runner(options))


def progress_figures(counts: dict) -> progress.Figures:
    """A progress line: images read (decoded or rejected) of those the listing found; once all are read,
    images through de-duplication (written, or dropped as a copy) of those decoded."""
    total, read = listing_total(counts), counts.get("images_decoded", 0) + counts.get("images_rejected", 0)
    if total is None or read < total:
        return progress.Figures(read, total, "images read")
    written = counts.get("images_written", 0)
    return progress.Figures(written + counts.get("images_dropped", 0), counts.get("images_decoded", 0),
                            "images de-duplicated", f"{written:,} written")
