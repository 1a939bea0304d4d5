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
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

from beam_pipelines import evaluation
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
from beam_pipelines.gate import check_name
from beam_pipelines.outputs import CommitOutputs, CommitPlan, OutputClaim
from beam_pipelines.reading import ListInput, read_image, reject
from beam_pipelines.table import DataFingerprint, TableClaim, TableCommit, TablePlan, WriteTable, code_version
from model.engines import ENGINES
from model.preprocess import DEFAULT_MAX_PIXELS, FACE_DETECTORS, PreprocessError, resize
from model import PACKAGED_MODELS, resolve_model_dir
from schemas import LABELS, PREDICTIONS_SCHEMA, REJECTED_SCHEMA, canonical_label
from schemas.tables import bigquery_schema_json

OUTPUT_NAMES = ["predictions", "rejected", "evaluation", "plots", "summary.json", "bigquery"]


def build_parser() -> argparse.ArgumentParser:
    """The options of this stage: the one source for the CLI and the Dataflow flex template
    (deploy/dataflow/*.metadata.json are checked against it by tests)."""
    p = argparse.ArgumentParser(prog="emotion predict", description=__doc__.split("\n")[0])
    p.add_argument("--input", required=True, help="image folder, or TFRecords (a glob or an ingest output folder)")
    p.add_argument("--output", required=True,
                   help="folder for predictions/, evaluation/, plots/, summary.json (local or gs://)")
    p.add_argument("--model", default="shipped",
                   help="exported model directory, local or gs://, or a model installed with the package: 'shipped' "
                        "(the default, the accurate one) or 'fast' (a sixteenth of its compute, distilled from it)")
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


# --------------------------------------------------------------------------- the model handler


class EmotionModelHandler(ModelHandler[np.ndarray, PredictionResult, object]):
    """Loads an exported model's engine once per worker process (RunInference shares it across
    threads) and runs batches of (S, S) images through it (model/engines.py: the int8 file on LiteRT,
    or the .keras export in TensorFlow; either is checked against metadata.json when it loads).

    Beam's own TFModelHandler imports tensorflow_hub and cannot load Keras 3 SavedModels.
    """

    def __init__(self, model_dir: str, min_batch_size: int = 8, max_batch_size: int = 128, tta: str = "none",
                 engine: str = "auto"):
        super().__init__()
        self._model_dir = model_dir
        self._tta, self._engine = tta, engine
        self._batch = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self):
        from model import engines

        return engines.load(self._model_dir, self._engine, self._tta)[0]

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> Iterable[PredictionResult]:
        pixels = np.stack(batch).astype(np.float32)[..., None]
        probs = model.probabilities(pixels)
        return [PredictionResult(x, p) for x, p in zip(batch, probs)]

    def batch_elements_kwargs(self):
        return self._batch

    def get_metrics_namespace(self) -> str:
        return "emotion"


# --------------------------------------------------------------------------- reading inputs


def label_from_path(rel: str) -> tuple[str | None, str | None]:
    """(true label, split) from <class>/file or <split>/<class>/file; (None, None) for others."""
    split, class_dir = split_and_class_dir(rel)
    return (canonical_label(class_dir) if class_dir else None), split


class Image(NamedTuple):
    """What travels with an image's pixels through RunInference (as its key) to its prediction row."""

    uri: str
    content_sha256: str
    true_label: str | None
    split: str | None


class DecodeImages(beam.DoFn):
    """A batch of (path, listing problem) -> (Image, float pixels) per image; rejects on the side."""

    def __init__(self, root, image_size, face_crop, max_pixels, face_detector="haar"):
        self.root, self.image_size, self.face_crop, self.max_pixels = root, image_size, face_crop, max_pixels
        self.face_detector = face_detector

    def process(self, paths):
        for path, problem in paths:
            try:
                pixels, digest = read_image(path, problem, self.image_size, self.face_crop, self.max_pixels,
                                            as_float=True, face_detector=self.face_detector)
            except PreprocessError as exc:
                yield reject(path, exc.reason, exc.detail, "predict")
                continue
            label, split = label_from_path(path[len(self.root) + 1 :])
            yield Image(path, digest, label, split), pixels


class ParseExamples(beam.DoFn):
    """Serialized ingest examples -> the same (Image, pixels) elements."""

    def __init__(self, image_size):
        self.image_size = image_size

    def setup(self):
        import tensorflow as tf

        self._example = tf.train.Example

    def process(self, record: bytes):
        f = self._example.FromString(record).features.feature
        h, w = f["image/height"].int64_list.value[0], f["image/width"].int64_list.value[0]
        pixels = np.frombuffer(f["image/raw"].bytes_list.value[0], np.uint8).reshape(h, w)
        if (h, w) != (self.image_size, self.image_size):
            pixels = resize(pixels, self.image_size)
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


class ToRow(beam.DoFn):
    def __init__(self, model_info, run_timestamp, run_id):
        self.model_info = model_info
        self.run_timestamp, self.run_id = run_timestamp, run_id

    def process(self, element):
        image, result = element
        uri, digest, label, split = image
        pixels, probs = result.example, result.inference
        index = int(np.argmax(probs))
        row = {
            "uri": uri,
            "content_sha256": digest,
            "true_label": label,
            "predicted_label": LABELS[index],
            "predicted_index": index,
            "confidence": float(probs[index]),
            "correct": (label == LABELS[index]) if label is not None else None,
            **{f"prob_{name}": float(probs[i]) for i, name in enumerate(LABELS)},
            "split": split,
            "model_version": self.model_info["model_version"],
            "model_fingerprint": self.model_info["model_fingerprint"],
            "run_id": self.run_id,
            "run_timestamp": self.run_timestamp,
        }
        # 8-bit thumbnails for the samples plot (model inputs from images are float).
        yield row, np.clip(np.round(pixels), 0, 255).astype(np.uint8).tobytes()


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
            inputs = records | "ParseExamples" >> beam.ParDo(ParseExamples(self.image_size))
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

        # The key (an Image) carries everything but the pixels through RunInference: no join needed.
        handler = KeyedModelHandler(EmotionModelHandler(a.model, min_batch_size=min(8, a.batch_size),
                                                        max_batch_size=a.batch_size, tta=a.tta,
                                                        engine=a.engine))
        rows = (
            inputs
            | "RunInference" >> RunInference(handler)
            | "ToRows" >> beam.ParDo(ToRow(self.model_info, self.run_timestamp, self.plan.run_id))
        )
        row_dicts = rows | "RowsOnly" >> beam.Map(lambda rp: rp[0])
        prediction_files = (
            row_dicts
            | "WritePredictions" >> beam.io.WriteToParquet(
                join(a.staging, "predictions", "predictions"), PREDICTIONS_SCHEMA, file_name_suffix=".parquet"
            )
        )
        rejected_files = rejected | "WriteRejected" >> beam.io.WriteToParquet(
            join(a.staging, "rejected", "rejected"), REJECTED_SCHEMA, file_name_suffix=".parquet"
        )
        evaluated = (
            rows
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
            if _run_pipeline(args, options, model_info, image_size, plan, pattern, run_timestamp, table) is None:
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
        "predict: %d matched -> %d predicted, %d rejected in %.1fs%s",
        t["matched"], t["predicted"], t["rejected"], time.time() - started,
        f"; accuracy {summary['accuracy']:.4f}, macro-F1 {summary['macro_f1']:.4f} on {summary['labelled']} labelled"
        if summary.get("accuracy") is not None else "",
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
    """Runs (or submits) the pipeline writing under the plan's staging folder; True when it ran here."""
    args.staging = plan.write_root
    if not is_dry_run(options):
        write_bytes(join(args.staging, "bigquery", "predictions.schema.json"),
                    bigquery_schema_json(PREDICTIONS_SCHEMA).encode())
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "Predict" >> Predict(args, model_info, image_size, run_timestamp, plan, pattern, table)
    result = pipeline.run()
    if is_remote_runner(options):
        return None
    result.wait_until_finish()
    return True
