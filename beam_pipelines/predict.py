"""Batch inference: images or ingest TFRecords -> Parquet predictions + evaluation, with Beam RunInference.

    emotion predict --input /tmp/fer2013/test --output /tmp/preds
    emotion predict --input '/tmp/fer-ingest/tfrecords/test-*.tfrecord' --output /tmp/preds-tfr
    emotion predict --input gs://bucket/faces --output gs://bucket/preds --runner DataflowRunner ...

Outputs under --output:
  predictions/*.parquet   one row per image (schemas.PREDICTIONS_SCHEMA)
  rejected/*.parquet      inputs that could not be predicted, with a reason
  evaluation/             metrics.json, per_class.parquet, confusion.parquet (when labels are known)
  plots/                  confusion_matrix.png, per_class.png, reliability.png, samples.png
  summary.json            matched = predicted + rejected (+ skipped), model, timings
  bigquery/predictions.schema.json

Labels come from folder names (<class>/ or <split>/<class>/, through the alias map) or
from the TFRecords; elsewhere true_label is null. Preprocessing is the function ingest
uses (model.preprocess.preprocess).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared

from beam_pipelines import evaluation, progress
from beam_pipelines.common import (
    UsageError,
    check_max_pixels,
    check_unknown_args,
    check_remote_paths,
    check_storage_access,
    is_dry_run,
    is_remote_runner,
    join,
    log,
    pipeline_options,
    split_and_class_dir,
    write_bytes,
)
from beam_pipelines.listing import escape_glob, exists_any
from model.gate import check_name
from beam_pipelines.outputs import CommitOutputs, CommitPlan, OutputClaim
from beam_pipelines.reading import ListInput, listing_total, read_image, reject
from beam_pipelines.table import DataFingerprint, TableClaim, TableCommit, TablePlan, WriteTable, code_version
from model.engines import ENGINES
from model.preprocess import DEFAULT_MAX_PIXELS, FACE_DETECTORS, PreprocessError, resize
from model import PACKAGED_MODELS, resolve_model_dir
from schemas import LABELS, PREDICTIONS_SCHEMA, REJECTED_SCHEMA, canonical_label
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
                   help="exported model directory, local or gs:// (default: 'shipped', the model installed with the package)")
    crop = p.add_mutually_exclusive_group()
    crop.add_argument("--face-crop", dest="face_crop", action="store_true", default=None,
                      help="crop faces (default: as the model was trained)")
    crop.add_argument("--no-face-crop", dest="face_crop", action="store_false", help="never crop faces")
    p.add_argument("--face-detector", choices=FACE_DETECTORS, default="haar",
                   help="with --face-crop: haar (fast) or mtcnn (finds far more faces, ~4x slower per image; "
                        "bench/face_crop_bench.py)")
    p.add_argument("--tta", choices=["none", "flip", "crops"], default=None,
                   help="test-time augmentation: flip (2 views), crops (10 shifted/mirrored views); "
                        "default: as the model's metadata recommends")
    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="what runs the network: litert (the export's int8 file, ~4x faster on CPUs), keras (float32 "
                        "TensorFlow); auto: litert when the export has its file (model/engines.py)")
    p.add_argument("--batch-size", type=int, default=128, help="largest model batch")
    p.add_argument("--files-per-batch", type=int, default=256, help="files read and decoded per work item")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="larger images are rejected as too_large, from their header, before decoding")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files under --output that no earlier run of this pipeline wrote")
    p.add_argument("--table", default=None,
                   help="also append this run's rows to the partitioned predictions table at this root "
                        "(local or gs://; ROOT/model_version=/run_date=/run_id=/*.parquet, runs in ROOT/_runs/)")
    p.add_argument("--run-id", default=None,
                   help="this run's id (default: predict-<UTC time>-<random>); re-using one replaces that "
                        "run's partition of --table")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines on stderr while a local run runs (the final summary still prints)")
    return p


def parse_args(argv):
    p = build_parser()
    args, beam_args = p.parse_known_args(argv)
    check_unknown_args(beam_args, p.prog)
    check_max_pixels(args.max_pixels)
    if args.batch_size < 1 or args.files_per_batch < 1:
        raise UsageError("--batch-size and --files-per-batch must be at least 1")
    args.input = args.input.rstrip("/")
    args.output = args.output.rstrip("/")
    if args.table:
        args.table = args.table.rstrip("/")
    if args.run_id is not None:
        check_name(args.run_id, "--run-id")
    return args, beam_args


# --------------------------------------------------------------------------- reading inputs


def label_from_path(rel: str) -> tuple[str | None, str | None]:
    """(true label, split) from <class>/file or <split>/<class>/file; (None, None) for others."""
    split, class_dir = split_and_class_dir(rel)
    return (canonical_label(class_dir) if class_dir else None), split


class Image(NamedTuple):
    """What travels with an image's pixels to its prediction row."""

    uri: str
    content_sha256: str
    true_label: str | None
    split: str | None


class ImageBatch(NamedTuple):
    """A work item's decoded images as one element: at a thousand images a second, Beam's cost per
    element (not the model) would set the pace if every image travelled alone."""

    images: list[Image]
    pixels: np.ndarray  # (N, S, S) float32 in [0, 255]


def image_batch(items: Sequence[tuple[Image, np.ndarray]]) -> ImageBatch:
    return ImageBatch([image for image, _ in items], np.stack([pixels for _, pixels in items]).astype(np.float32))


class DecodeImages(beam.DoFn):
    """A batch of (path, listing problem) -> one ImageBatch of what decodes; rejects on the side."""

    def __init__(self, root, image_size, face_crop, max_pixels, face_detector="haar"):
        self.root, self.image_size, self.face_crop, self.max_pixels = root, image_size, face_crop, max_pixels
        self.face_detector = face_detector
        self.decoded = progress.Counter("images_decoded")
        self.rejected = progress.Counter("images_rejected")

    def process(self, paths):
        decoded = []
        for path, problem in paths:
            try:
                pixels, digest = read_image(path, problem, self.image_size, self.face_crop, self.max_pixels,
                                            as_float=True, face_detector=self.face_detector)
            except PreprocessError as exc:
                self.rejected.inc()
                progress.count_reject(exc.reason)
                yield reject(path, exc.reason, exc.detail, "predict")
                continue
            label, split = label_from_path(path[len(self.root) + 1 :])
            decoded.append((Image(path, digest, label, split), pixels))
        if decoded:
            self.decoded.inc(len(decoded))
            yield image_batch(decoded)


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


# --------------------------------------------------------------------------- rows


def rows_table(images: Sequence[Image], probs: np.ndarray, model_info: dict, run_timestamp, run_id: str) -> pa.Table:
    """Prediction rows (schemas.PREDICTIONS_SCHEMA) of a batch, built column by column."""
    n = len(images)
    index = probs.argmax(axis=1)
    predicted = [LABELS[i] for i in index]
    true = [image.true_label for image in images]
    columns = {
        "uri": [image.uri for image in images],
        "content_sha256": [image.content_sha256 for image in images],
        "true_label": true,
        "predicted_label": predicted,
        "predicted_index": index.astype(np.int64),
        "confidence": probs[np.arange(n), index].astype(np.float64),
        "correct": [None if t is None else t == p for t, p in zip(true, predicted)],
        **{f"prob_{name}": probs[:, i].astype(np.float64) for i, name in enumerate(LABELS)},
        "split": [image.split for image in images],
        "model_version": [model_info["model_version"]] * n,
        "model_fingerprint": [model_info["model_fingerprint"]] * n,
        "run_id": [run_id] * n,
        "run_timestamp": [run_timestamp] * n,
    }
    return pa.Table.from_pydict(columns, schema=PREDICTIONS_SCHEMA)


class _SharedEngine:
    """A holder Beam's Shared can keep a weak reference to (one engine per worker process)."""

    def __init__(self, engine):
        self.engine = engine


class Classify(beam.DoFn):
    """ImageBatch -> (its prediction rows as a pyarrow Table, (N, S*S) uint8 thumbnails for the samples
    plot). The model's engine (model/engines.py) is loaded once per worker process and shared by its
    threads, as RunInference shares its model; it runs in chunks of --batch-size images."""

    def __init__(self, model_dir: str, engine: str, tta: str, batch_size: int, model_info: dict, run_timestamp,
                 run_id: str):
        self.model_dir, self.engine_name, self.tta, self.batch_size = model_dir, engine, tta, batch_size
        self.model_info, self.run_timestamp, self.run_id = model_info, run_timestamp, run_id
        self._shared = shared.Shared()
        self.predicted = progress.Counter("images_predicted")

    def setup(self):
        from model import engines

        self._engine = self._shared.acquire(
            lambda: _SharedEngine(engines.load(self.model_dir, self.engine_name, self.tta)[0])).engine

    def process(self, batch: ImageBatch):
        pixels = batch.pixels[..., None]
        probs = np.concatenate([self._engine.probabilities(pixels[i : i + self.batch_size])
                                for i in range(0, len(pixels), self.batch_size)])
        self.predicted.inc(len(batch.images))
        thumbnails = np.clip(np.round(batch.pixels), 0, 255).astype(np.uint8).reshape(len(batch.images), -1)
        yield rows_table(batch.images, probs, self.model_info, self.run_timestamp, self.run_id), thumbnails


class CoalesceTables(beam.DoFn):
    """Row tables -> tables of about `rows` rows (each becomes one Parquet row group): a batch's few
    hundred rows would make row groups too small for readers to skip through."""

    def __init__(self, rows: int = 64 * 1024):
        self.rows = rows

    def start_bundle(self):
        self._tables, self._count = [], 0

    def process(self, table: pa.Table):
        self._tables.append(table)
        self._count += table.num_rows
        if self._count >= self.rows:
            yield self._take()

    def finish_bundle(self):
        if self._tables:
            yield GlobalWindows.windowed_value(self._take())

    def _take(self) -> pa.Table:
        table = pa.concat_tables(self._tables)
        self._tables, self._count = [], 0
        return table


class WriteSummary(beam.DoFn):
    """summary.json: the run's description (what it read, with which model and options) and counts."""

    def __init__(self, description: dict, staging: str):
        self.description, self.staging = description, staging

    def process(self, _, counts, rejected, evaluated):
        rejected = dict(sorted(rejected))
        matched = counts.get("matched", 0)
        predicted = evaluated["predicted"]
        summary = {
            **self.description,
            "totals": {
                "matched": matched,
                "predicted": predicted,
                "rejected": sum(rejected.values()),
                "skipped_non_data": counts.get("skipped_non_data", 0),
                "balanced": matched == predicted + sum(rejected.values()) + counts.get("skipped_non_data", 0),
            },
            "rejected": rejected,
            "labelled": evaluated.get("labelled", 0),
            "accuracy": evaluated.get("accuracy"),
            "macro_f1": evaluated.get("macro_f1"),
        }
        write_bytes(join(self.staging, "summary.json"), (json.dumps(summary, indent=2) + "\n").encode())
        yield summary


class Predict(beam.PTransform):
    """Input root/glob -> predictions, rejected rows, evaluation and summary."""

    def __init__(self, args, model_info, image_size, run_timestamp, plan: CommitPlan, pattern: str | None,
                 table: TablePlan | None = None):
        super().__init__()
        self.pattern, self.table = pattern, table
        self.args, self.model_info, self.image_size, self.run_timestamp = args, model_info, image_size, run_timestamp
        self.plan = plan

    def expand(self, pbegin):
        a = self.args
        if self.pattern:
            # Matched by the launcher already (a --dry_run does not look at storage at all).
            records = pbegin | "ReadTFRecords" >> beam.io.ReadFromTFRecord(self.pattern, validate=False)
            inputs = (
                records
                | "ParseExamples" >> beam.ParDo(ParseExamples(self.image_size))
                | "BatchRecords" >> beam.BatchElements(min_batch_size=a.files_per_batch,
                                                       max_batch_size=a.files_per_batch)
                | "AsImageBatches" >> beam.Map(image_batch)
            )
            counts = (
                records
                | "CountRecords" >> beam.combiners.Count.Globally()
                | "AsCounts" >> beam.Map(lambda n: {"matched": n, "skipped_non_data": 0})
            )
            rejected = pbegin | "NoRejects" >> beam.Create([]).with_output_types(dict)
        else:
            listing = pbegin | "Start" >> beam.Create([a.input]) | "ListImages" >> ListInput(a.files_per_batch)
            decoded = (
                listing["batches"]
                | "SpreadBatches" >> beam.Reshuffle()
                | "DecodeImages" >> beam.ParDo(DecodeImages(a.input, self.image_size, a.face_crop, a.max_pixels,
                                                                      a.face_detector))
                .with_outputs("rejected", main="images")
            )
            inputs, rejected, counts = decoded.images, decoded.rejected, listing[ListInput.SUMMARY]

        predicted = inputs | "Classify" >> beam.ParDo(
            Classify(a.model, a.engine, a.tta, a.batch_size, self.model_info, self.run_timestamp, self.plan.run_id))
        tables = predicted | "RowTables" >> beam.Map(lambda batch: batch[0])
        prediction_files = (
            tables
            | "CoalesceTables" >> beam.ParDo(CoalesceTables())
            | "WritePredictions" >> beam.io.WriteToParquetBatched(
                join(a.staging, "predictions", "predictions"), PREDICTIONS_SCHEMA, file_name_suffix=".parquet"
            )
        )
        rejected_files = rejected | "WriteRejected" >> beam.io.WriteToParquet(
            join(a.staging, "rejected", "rejected"), REJECTED_SCHEMA, file_name_suffix=".parquet"
        )
        evaluated = (
            predicted
            | "Evaluate" >> beam.CombineGlobally(evaluation.EvaluationFn())
            | "WriteEvaluation" >> beam.ParDo(evaluation.WriteEvaluation(a.staging, self.image_size, self.model_info))
        )
        rejected_counts = (
            rejected
            | "Reasons" >> beam.Map(lambda r: r["reason"])
            | "CountReasons" >> beam.combiners.Count.PerElement()
        )
        summary = (
            pbegin
            | "SummaryTrigger" >> beam.Create([None])
            | "WriteSummary" >> beam.ParDo(
                WriteSummary(run_description(a, self.model_info), a.staging),
                beam.pvalue.AsSingleton(counts),
                beam.pvalue.AsList(rejected_counts),
                beam.pvalue.AsSingleton(evaluated),
            )
        )
        totals = summary | "Totals" >> beam.Map(lambda s: s["totals"])
        if self.table is None:
            return pbegin | "Commit" >> CommitOutputs(self.plan, totals, after=[prediction_files, rejected_files, summary])
        # With --table, the table is committed in the output's transaction: both, or neither.
        row_dicts = tables | "Rows" >> beam.FlatMap(lambda table: table.to_pylist())
        table_files = row_dicts | "WriteTable" >> WriteTable(self.table)
        fingerprint = row_dicts | "DataFingerprint" >> DataFingerprint()
        also = TableCommit(self.table, a.output, self.run_timestamp, remote_lock="://" in self.table.root)
        return pbegin | "Commit" >> CommitOutputs(self.plan, totals, after=[prediction_files, rejected_files, summary,
                                                                           table_files],
                                                  also=also, also_inputs=(summary, fingerprint))


def run_description(args, model_info: dict) -> dict:
    """What summary.json says about the run besides its counts."""
    return {
        "input": args.input,
        "output": args.output,
        "model": args.model,
        "model_version": model_info["model_version"],
        "model_fingerprint": model_info["model_fingerprint"],
        "face_crop": args.face_crop,
        "face_detector": args.face_detector if args.face_crop else None,
        "tta": args.tta,
        "engine": args.engine,
    }


def run_row(summary: dict, fingerprint: str, output: str, table: TablePlan, started) -> dict:
    """This run's row of the runs table (schemas.RUNS_SCHEMA)."""
    t = summary["totals"]
    return {
        "run_id": table.run_id, "started": started, "input_uri": summary["input"], "data_fingerprint": fingerprint,
        "model_version": summary["model_version"], "model_fingerprint": summary["model_fingerprint"],
        "tta": summary["tta"], "face_crop": bool(summary["face_crop"]),
        "matched": t["matched"], "predicted": t["predicted"], "rejected": t["rejected"],
        "skipped_non_data": t["skipped_non_data"], "labelled": summary["labelled"],
        "accuracy": summary["accuracy"], "macro_f1": summary["macro_f1"],
        "code_version": code_version(), "output": output,
    }


def run(argv=None, save_main_session=True) -> dict | None:
    args, beam_args = parse_args(argv)
    options = pipeline_options(beam_args, save_main_session)
    check_remote_paths(options, input=args.input, output=args.output,
                       **({} if args.model in PACKAGED_MODELS else {"model": args.model}))
    dry_run = is_dry_run(options)
    # Everything that can be checked is checked before the output is touched.
    metadata = _check_model(args.model, args.engine, load_weights=not dry_run) \
        if not (dry_run and "://" in args.model) else {}
    if args.face_crop is None:
        args.face_crop = bool(metadata.get("training_data", {}).get("face_crop", False))
    if args.tta is None:
        args.tta = metadata.get("recommended_tta", "none")
    if metadata:  # the engine the workers will run, recorded as such (not "auto")
        from model.engines import resolve

        args.engine = resolve(args.engine, metadata)
    if args.tta not in ("none", "flip", "crops"):
        raise UsageError(f"{args.model}: its metadata.json recommends TTA {str(args.tta)[:40]!r}, which is none of "
                         "none, flip, crops: re-export the model or pass --tta")
    if not dry_run:  # a dry run touches no storage
        check_storage_access(args.input, args.output, *([args.table] if args.table else []))
    # A dry run reads an --input naming .tfrecord files as TFRecords and anything else as images.
    pattern = args.input if dry_run and ".tfrecord" in args.input.rsplit("/", 1)[-1] else None
    if not dry_run:
        pattern = tfrecord_pattern(args.input)
        _check_input(args.input, pattern)
    model_info = {k: metadata.get(k, "unknown") for k in ("model_version", "model_fingerprint")}
    check_name(model_info["model_version"], f"the model_version in {args.model}'s metadata.json")
    claim = OutputClaim(args.output, "predict", OUTPUT_NAMES, overwrite=args.overwrite, description={
        "command": " ".join(["emotion", "predict", *(sys.argv[2:] if argv is None else argv)]),
        "input": args.input, "model": args.model, **model_info,
        "options": {k: v for k, v in vars(args).items() if k not in ("input", "output", "model")},
        "remote": is_remote_runner(options)}, run_id=args.run_id)
    image_size = int(metadata.get("image_size", 48))
    run_timestamp = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    table = TablePlan(args.table, claim.run_id, model_info["model_version"], f"{run_timestamp:%Y-%m-%d}") \
        if args.table else None
    log.info("predict: %s -> %s with %s%s", args.input, args.output, model_info["model_version"],
             f" (run {claim.run_id}, appended to {args.table})" if table else "")
    started = time.time()
    if dry_run:
        return _run_pipeline(args, options, model_info, image_size, claim.dry_run_plan(), pattern, run_timestamp,
                             table)
    # The table's lock and checks first, then the output's; a failure undoes both (a failed run leaves
    # no partial partition and the previous output as it was).
    with contextlib.ExitStack() as claims:
        if table:
            claims.enter_context(TableClaim(table.root, claim.run_id, remote=is_remote_runner(options)))
        plan = claims.enter_context(claim)
        try:
            counters = _run_pipeline(args, options, model_info, image_size, plan, pattern, run_timestamp, table)
            if counters is None:
                return None
        except Exception as exc:
            if "Not a valid TFRecord" in str(exc):
                detail = str(exc).split("Not a valid TFRecord", 1)[1].split(":", 1)[0].strip(" .")
                raise UsageError(f"--input {args.input} holds a damaged TFRecord file ({detail or 'not a TFRecord'}): "
                                 "re-run emotion ingest") from None
            raise
    with FileSystems.open(join(args.output, "summary.json")) as f:
        summary = json.loads(f.read())
    t = summary["totals"]
    log.info(
        "predict: %d matched -> %d predicted, %d rejected in %.1fs%s%s",
        t["matched"], t["predicted"], t["rejected"], time.time() - started,
        f"; accuracy {summary['accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f} on {summary['labelled']} labelled"
        if summary.get("accuracy") is not None else "", progress.format_counters(counters),
    )
    return summary


def _check_model(model: str, engine: str, load_weights: bool) -> dict:
    """The model's metadata, after loading its engine the way workers will (a model that cannot be
    used stops the run here, with one line, before anything is written)."""
    from model import engines
    from model.export import ModelError, read_metadata

    try:
        if load_weights:
            return engines.load(model, engine)[1]
        metadata = read_metadata(resolve_model_dir(model))
        engines.resolve(engine, metadata)
        return metadata
    except (FileNotFoundError, ModelError, engines.EngineError) as exc:
        raise UsageError(str(exc)) from None


def _check_input(path: str, pattern: str | None) -> None:
    try:
        found = FileSystems.match([pattern], limits=[1])[0].metadata_list if pattern else exists_any(path)
    except Exception as exc:
        raise UsageError(f"cannot list --input {path}: {exc}") from None
    if not found:
        missing = "" if "://" in path or os.path.exists(path) else ": it does not exist"
        raise UsageError(f"no files under --input {path}{missing}")


def _run_pipeline(args, options, model_info: dict, image_size: int, plan: CommitPlan, pattern: str | None,
                  run_timestamp: dt.datetime, table: TablePlan | None):
    """Runs (or submits) the pipeline writing under the plan's staging folder, with progress lines when it
    runs here; its Beam counters ({name: value}) when it ran here, None when it was submitted."""
    args.staging = plan.write_root
    if not is_dry_run(options):
        write_bytes(join(args.staging, "bigquery", "predictions.schema.json"),
                    bigquery_schema_json(PREDICTIONS_SCHEMA).encode())
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "Predict" >> Predict(args, model_info, image_size, run_timestamp, plan, pattern, table)
    if is_remote_runner(options):
        pipeline.run()
        return None
    with progress.report("predict", progress_figures, quiet=args.quiet):
        result = pipeline.run()
        result.wait_until_finish()
    return progress.beam_counters(result)


def progress_figures(counts: dict) -> progress.Figures:
    """A progress line: the images predicted or rejected, of those the listing found (TFRecord input
    has no listing: no total)."""
    done = counts.get("images_predicted", 0) + counts.get("images_rejected", 0)
    return progress.Figures(done, listing_total(counts), "images")
