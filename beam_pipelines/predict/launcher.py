"""Batch inference: images or ingest TFRecords -> Parquet predictions + evaluation, with Beam.

    emotion predict --input /tmp/fer2013/test --output /tmp/preds
    emotion predict --input '/tmp/fer-ingest/tfrecords/test-*.tfrecord' --output /tmp/preds-tfr
    emotion predict --input gs://bucket/faces --output gs://bucket/preds --runner DataflowRunner ...

Outputs under --output:
  predictions/*.parquet   one row per image, or per face with --faces all (schemas.PREDICTIONS_SCHEMA)
  rejected/*.parquet      inputs that could not be predicted, with a reason
  evaluation/             overview.json (predicted-class mix, confidence histogram); when labels are known
                          metrics.json, per_class.parquet, confusion.parquet, coverage.parquet; with
                          --slices, slices.parquet
  plots/                  low_confidence.png, predicted_classes.png; with labels confusion_matrix.png,
                          per_class.png, reliability.png, accuracy_coverage.png, samples.png
  summary.json            matched = predicted + rejected + skipped (non-data files; with --incremental,
                          images the table already holds: skipped_seen), model, timings
  bigquery/predictions.schema.json

The launcher is this module (options, checks, the claims on --output and --table); the pipeline is
pipeline.py, the incremental join incremental.py, the options options.py.

Labels come from folder names (<class>/ or <split>/<class>/, through the alias map) or
from the TFRecords; elsewhere true_label is null. Preprocessing is the function ingest
uses (model.preprocess.preprocess).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.base import progress
from beam_pipelines.base.files import check_input, check_storage_access, join, write_bytes
from beam_pipelines.base.listing import escape_glob
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
from beam_pipelines.predict import inference
from beam_pipelines.predict.model_check import check_model
from beam_pipelines.predict.options import FACES_MODES, ModelInfo, PredictOptions
from beam_pipelines.predict.pipeline import Classify, Predict, WriteSummary  # noqa: F401 (tests patch them here)
from beam_pipelines.predict.slices import read_slices
from beam_pipelines.table.claim import TableClaim, TablePlan, check_apart
from model import PACKAGED_MODELS
from model.engines import ENGINES
from model.errors import UsageError
from model.gate import check_name
from model.preprocess import FACE_DETECTORS
from schemas import PREDICTIONS_SCHEMA, TTA_MODES
from schemas.tables import bigquery_schema_json

METRICS_NAMESPACE = progress.NAMESPACE  # Beam counters: the job page on Dataflow, the final summary here
OUTPUT_NAMES = ["predictions", "rejected", "evaluation", "plots", "summary.json", "bigquery"]


def build_parser() -> argparse.ArgumentParser:
    """The options of this stage: the one source for the CLI and the Dataflow flex template
    (deploy/dataflow/*.metadata.json are checked against it by tests)."""
    p = argparse.ArgumentParser(prog="emotion predict", description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="image folder, or TFRecords (a glob or an ingest output folder)")
    p.add_argument("--output", required=True,
                   help="folder for predictions/, evaluation/, plots/, summary.json (local or gs://)")
    p.add_argument("--model", default="shipped",
                   help="exported model directory, local or gs://, or a model installed with the package: 'shipped' (the "
                        "default, the accurate one) or 'fast' (a quarter of its compute, distilled from it)")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--face-crop", dest="face_crop", action="store_true", default=None,
                      help="crop faces (default: as the model was trained)")
    crop.add_argument("--no-face-crop", dest="face_crop", action="store_false", help="never crop faces")
    p.add_argument("--face-detector", choices=FACE_DETECTORS, default="haar",
                   help="with --face-crop: haar (fast) or mtcnn (finds far more faces, ~4x slower per image; "
                        "bench/face_crop_bench.py)")
    p.add_argument("--faces", choices=FACES_MODES, default="largest",
                   help="largest (the default): a row per image, its largest face with --face-crop, else the whole "
                        "image; all: a row per face the detector finds, with its index, box and score (implies "
                        "--face-crop; an image without a face is still rejected as no_face)")
    p.add_argument("--min-confidence", type=float, default=None, metavar="P",
                   help="mark a row abstained when its top probability is below P (0-1); its probabilities are "
                        "kept, and summary.json reports coverage and the accuracy of the rows answered")
    p.add_argument("--min-margin", type=float, default=None, metavar="M",
                   help="mark a row abstained when its top probability leads the second by less than M (0-1)")
    p.add_argument("--slices", default=None, metavar="FILE",
                   help="CSV or Parquet with a uri column and any others (site, camera, session...): the evaluation "
                        "reports accuracy, macro-F1 and 95%% intervals per value of each (evaluation/slices.parquet)")
    p.add_argument("--tta", choices=TTA_MODES, default=None,
                   help="test-time augmentation: flip (2 views), crops (10 shifted/mirrored views); "
                        "default: as the model's metadata recommends")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="what runs the network: litert (the export's int8 file, ~4x faster on CPUs), keras (float32 "
                        "TensorFlow); auto: litert when the export has its file (model/engines.py)")
    p.add_argument("--batch-size", type=int, default=128, help="largest model batch")
    inference.add_model_copies_argument(p)
    p.add_argument("--table", default=None,
                   help="also append this run's rows to the partitioned predictions table at this root "
                        "(local or gs://; ROOT/model_version=/run_date=/run_id=/*.parquet, runs in ROOT/_runs/)")
    p.add_argument("--incremental", action="store_true",
                   help="with --table: predict only the images whose file content the table does not hold yet "
                        "for this model version, TTA and face crop (the rest are counted as skipped_seen)")
    p.add_argument("--run-id", default=None,
                   help="this run's id (default: predict-<UTC time>-<random>); re-using one replaces that "
                        "run's partition of --table")
    add_run_flags(p, files_per_batch_help="files read and decoded per work item")
    return p


def parse_args(argv):
    args, beam_args = parse_run_args(build_parser(), argv)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    inference.check_model_copies(args.model_copies)
    if args.table:
        args.table = args.table.rstrip("/")
    if args.run_id is not None:
        check_name(args.run_id, "--run-id")
    if args.incremental and not args.table:
        raise UsageError("--incremental skips the images a table already holds: it needs --table ROOT")
    for flag, value in (("--min-confidence", args.min_confidence), ("--min-margin", args.min_margin)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise UsageError(f"{flag} {value:g} is not a probability: give a number from 0 to 1")
    return args, beam_args


def tfrecord_pattern(path: str) -> str | None:
    """The TFRecord glob for --input, or None when it is an image folder. An --input naming
    .tfrecord files is a pattern (the one place a path is a glob); a folder name is literal."""
    if ".tfrecord" in path.rsplit("/", 1)[-1]:
        return path
    candidate = join(escape_glob(path), "tfrecords", "*.tfrecord")
    try:
        if FileSystems.match([candidate], limits=[1])[0].metadata_list:
            return candidate
    except Exception:
        pass
    return None


def run(argv=None, save_main_session=True) -> dict | None:
    args, beam_args = parse_args(argv)
    beam_options = pipeline_options(beam_args, save_main_session)
    check_remote_paths(beam_options, input=args.input, output=args.output,
                       **({} if args.model in PACKAGED_MODELS else {"model": args.model}),
                       **({"slices": args.slices} if args.slices else {}))
    dry_run = is_dry_run(beam_options)
    # Everything that can be checked is checked before the output is touched.
    metadata, engine = check_model(args.model, args.engine, load_weights=not dry_run) \
        if not (dry_run and "://" in args.model) else ({}, None)
    options, model = PredictOptions.resolve(args, metadata, engine), ModelInfo.from_metadata(metadata)
    check_name(model.model_version, f"the model_version in {options.model}'s metadata.json")
    pattern = _check_input(options, dry_run)
    if options.table:
        check_apart(options.table, options.input)
    slice_columns = tuple(read_slices(options.slices, options.input)[0]) if options.slices and not dry_run else ()
    claim = OutputClaim(options.output, "predict", OUTPUT_NAMES, overwrite=options.overwrite, description={
        "command": " ".join(["emotion", "predict", *(sys.argv[2:] if argv is None else argv)]),
        "input": options.input, "model": options.model, **model.names(), "options": options.recorded(),
        "remote": is_remote_runner(beam_options)}, run_id=options.run_id,
        also_roots=(options.table,))  # a roll-back of a killed commit may have to reach the table
    run_timestamp = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    table = TablePlan(options.table, claim.run_id, model.model_version, f"{run_timestamp:%Y-%m-%d}") \
        if options.table else None
    start_line = ("predict: %s -> %s with %s%s", options.input, options.output, model.model_version,
                  f" (run {claim.run_id}, {'incremental, ' if options.incremental else ''}appended to {options.table})"
                  if table else "")
    started = time.time()
    if dry_run:
        log.info(*start_line)
        return _run_pipeline(options, beam_options, model, claim.dry_run_plan(), pattern, run_timestamp, table,
                             slice_columns)
    # The table's lock and checks first, then the output's; a failure undoes both (a failed run leaves
    # no partial partition and the previous output as it was).
    with contextlib.ExitStack() as claims:
        if table:
            claims.enter_context(TableClaim(table.root, claim.run_id, remote=is_remote_runner(beam_options)))
        plan = claims.enter_context(claim)
        log.info(*start_line)  # after the claims' checks: a refused run prints its one error line only
        try:
            counters = _run_pipeline(options, beam_options, model, plan, pattern, run_timestamp, table, slice_columns)
            if counters is None:
                return None
        except Exception as exc:
            if "Not a valid TFRecord" in str(exc):
                detail = str(exc).split("Not a valid TFRecord", 1)[1].split(":", 1)[0].strip(" .")
                raise UsageError(f"--input {options.input} holds a damaged TFRecord file "
                                 f"({detail or 'not a TFRecord'}): re-run emotion ingest") from None
            raise
    with FileSystems.open(join(options.output, "summary.json")) as f:
        summary = json.loads(f.read())
    _log_summary(summary, time.time() - started, counters)
    return summary


def _log_summary(summary: dict, seconds: float, counters: dict) -> None:
    t = summary["totals"]
    log.info(
        "predict: %d matched -> %d predicted%s, %d rejected%s in %.1fs%s%s%s",
        t["matched"], t["predicted"], f" ({t['faces']} faces)" if "faces" in t else "", t["rejected"],
        f", {t['skipped_seen']} already in the table" if "skipped_seen" in t else "", seconds,
        _scores_line(summary), _abstention_line(summary.get("abstention")), progress.format_counters(counters),
    )


def _scores_line(summary: dict) -> str:
    """The accuracy part of the final line, or why there is none."""
    if summary.get("accuracy") is not None:
        return (f"; accuracy {summary['accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f} on "
                f"{summary['labelled']} labelled")
    if summary["totals"]["predicted"] and not summary.get("labelled"):
        return ("; no accuracy: no image is in a class folder (<class>/ or <split>/<class>/ under --input), "
                "so no label is known; the report shows what was predicted instead")
    return ""


def _abstention_line(a: dict | None) -> str:
    if not a:
        return ""
    line = f"; answered {a['answered']} of {a['rows']} rows (coverage {a['coverage'] or 0:.3f})"
    if a.get("accuracy_answered") is not None:
        line += f", accuracy {a['accuracy_answered']:.4f} on the {a['labelled_answered']} labelled answered"
    return line


def _check_input(options: PredictOptions, dry_run: bool) -> str | None:
    """The TFRecord glob the run reads, or None for an image folder; a missing or unlistable input
    is a UsageError. A dry run touches no storage: it reads an --input naming .tfrecord files as
    TFRecords and anything else as images."""
    path = options.input
    if dry_run:
        pattern = path if ".tfrecord" in path.rsplit("/", 1)[-1] else None
    else:
        check_storage_access(path, options.output, *([options.table] if options.table else []))
        pattern = tfrecord_pattern(path)
        check_input(path, pattern)
    if pattern and options.incremental:
        raise UsageError("--incremental skips image files by the hash of their bytes; --input is TFRecords "
                         "(an ingest's snapshot): predict them without --incremental")
    if pattern and options.faces == "all":
        raise UsageError("--faces all finds the faces in image files; --input is TFRecords (faces already cropped "
                         "by ingest): predict them without --faces all")
    return pattern


def _run_pipeline(options: PredictOptions, beam_options, model: ModelInfo, plan: CommitPlan, pattern: str | None,
                  run_timestamp: dt.datetime, table: TablePlan | None, slice_columns: tuple[str, ...] = ()):
    """Runs (or submits) the pipeline writing under the plan's staging folder, with progress lines when it
    runs here; its Beam counters ({name: value}) when it ran here, None when it was submitted."""
    if not is_dry_run(beam_options):
        write_bytes(join(plan.write_root, "bigquery", "predictions.schema.json"),
                    bigquery_schema_json(PREDICTIONS_SCHEMA).encode())
    pipeline = beam.Pipeline(options=beam_options)
    _ = pipeline | "Predict" >> Predict(options, model, run_timestamp, plan, pattern, table, slice_columns)
    return progress.run_here_or_submit(pipeline, "predict", progress_figures, options.quiet,
                                       remote=is_remote_runner(beam_options))


def progress_figures(counts: dict) -> progress.Figures:
    """A progress line: the images predicted or rejected, of those the listing found (TFRecord input
    has no listing: no total)."""
    done = sum(counts.get(name, 0) for name in ("images_predicted", "images_rejected", "images_skipped_seen"))
    return progress.Figures(done, listing_total(counts), "images")
