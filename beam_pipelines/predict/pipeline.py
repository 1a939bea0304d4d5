"""The predict pipeline itself: `Predict`, the transform the launcher (launcher.py) runs, and its steps.

    Predict = ReadImages (folder: ListImages [→ SkipSeen] → DecodeImages; TFRecords: ParseExamples)
              → Classify (RunInference with inference.py's EngineModelHandler → a ClassifiedBatch: rows as
                one Arrow table, thumbnails)
              → predictions/*.parquet, rejected/, [JoinSlices →] Evaluate, WriteSummary → Commit [→ the table]

A row is an image, or with --faces all a face (DecodeImages yields one (Image, pixels) per face).

Everything it needs comes in frozen: the run's PredictOptions and ModelInfo, the output's CommitPlan,
the TablePlan with --table.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.ml.inference.base import RunInference
from apache_beam.transforms.window import GlobalWindows

from beam_pipelines.base import progress
from beam_pipelines.base.files import join, write_bytes
from beam_pipelines.base.outputs import CommitOutputs, CommitPlan
from beam_pipelines.base.reading import ListInput
from beam_pipelines.predict import evaluation, inference
from beam_pipelines.predict.decode import DecodeImages, Image, Inputs, ParseExamples, image_batch
from beam_pipelines.predict.incremental import SkipSeen
from beam_pipelines.predict.options import ModelInfo, PredictOptions
from beam_pipelines.predict.slices import slice_pairs
from beam_pipelines.table.claim import TablePlan
from beam_pipelines.table.partitions import DataFingerprint, TableCommit, WriteTable
from schemas import FACE_FIELDS, LABELS, PREDICTIONS_SCHEMA, REJECTED_SCHEMA

# --------------------------------------------------------------------------- rows


def rows_table(images: Sequence[Image], probs: np.ndarray, model: ModelInfo, run_timestamp, run_id: str,
               options: PredictOptions | None = None) -> pa.Table:
    """Prediction rows (schemas.PREDICTIONS_SCHEMA) of a batch, built column by column."""
    n = len(images)
    index = probs.argmax(axis=1)
    predicted = [LABELS[i] for i in index]
    true = [image.true_label for image in images]
    confidence = probs[np.arange(n), index].astype(np.float64)
    columns = {
        "uri": [image.uri for image in images],
        "content_sha256": [image.content_sha256 for image in images],
        "true_label": true,
        "predicted_label": predicted,
        "predicted_index": index.astype(np.int64),
        "confidence": confidence,
        "correct": [None if t is None else t == p for t, p in zip(true, predicted)],
        **{f"prob_{name}": probs[:, i].astype(np.float64) for i, name in enumerate(LABELS)},
        "split": [image.split for image in images],
        "model_version": [model.model_version] * n,
        "model_fingerprint": [model.model_fingerprint] * n,
        "run_id": [run_id] * n,
        "run_timestamp": [run_timestamp] * n,
        **(face_columns(images, options.face_detector) if options and options.faces == "all" else {}),
        "abstained": abstained(probs, options) if options and options.abstains else [None] * n,
    }
    for field in FACE_FIELDS:  # a row per image: no face columns
        columns.setdefault(field.name, [None] * n)
    return pa.Table.from_pydict(columns, schema=PREDICTIONS_SCHEMA)


def face_columns(images: Sequence[Image], detector: str) -> dict:
    """The face columns (schemas.FACE_FIELDS) of a batch of faces: index, box rounded to pixels, score."""
    boxes = np.array([image.face.box for image in images], np.float64).reshape(-1, 4).round().astype(np.int64)
    return {
        "face_index": [image.face_index for image in images],
        "face_x": boxes[:, 0], "face_y": boxes[:, 1], "face_width": boxes[:, 2], "face_height": boxes[:, 3],
        "face_detector": [detector] * len(images),
        "face_score": [image.face.score for image in images],
    }


def abstained(probs: np.ndarray, options: PredictOptions) -> np.ndarray:
    """True where the top probability is under --min-confidence, or its lead over the second is under
    --min-margin: the model is not sure enough to answer (the row keeps its probabilities). Compared in
    float64, as the rows' confidence column: `confidence < P` over the rows counts the same rows."""
    top2 = np.sort(probs.astype(np.float64), axis=1)[:, -2:]  # as the rows hold them: float64
    unsure = np.zeros(len(probs), bool)
    if options.min_confidence is not None:
        unsure |= top2[:, 1] < options.min_confidence
    if options.min_margin is not None:
        unsure |= (top2[:, 1] - top2[:, 0]) < options.min_margin
    return unsure


class ClassifiedBatch(NamedTuple):
    """A batch after the model: its prediction rows, (N, S*S) uint8 thumbnails for the samples plot,
    and its file hashes (the table's rows carry them)."""

    rows: pa.Table
    thumbnails: np.ndarray
    file_sha256: list[str | None]


def table_rows(batch: ClassifiedBatch, options: PredictOptions) -> pa.Table:
    """The rows of a batch as the table stores them: its Arrow rows with schemas.TABLE_SEEN_FIELDS added
    (how each row was predicted, and its file's hash)."""
    n = batch.rows.num_rows
    return (batch.rows
            .append_column("tta", pa.array([options.tta] * n, pa.string()))
            .append_column("preprocessing", pa.array([options.preprocessing] * n, pa.string()))
            .append_column("file_sha256", pa.array(batch.file_sha256, pa.string())))


class Classify(beam.PTransform):
    """ImageBatch -> ClassifiedBatch: Beam's RunInference with the model's engine (inference.py's
    EngineModelHandler: loaded once per worker process and shared by its threads, or --model-copies per
    machine shared by its processes), each work item one prebatched element, run in chunks of --batch-size."""

    def __init__(self, options: PredictOptions, model: ModelInfo, run_timestamp: dt.datetime, run_id: str):
        super().__init__()
        self.options, self.model, self.run_timestamp, self.run_id = options, model, run_timestamp, run_id

    def expand(self, batches):
        o = self.options
        handler = inference.EngineModelHandler(
            o.model, o.engine, o.tta, o.batch_size, self.model.model_version,
            # an options object from before --model-copies: one copy
            model_copies=o.model_copies,
            shared_across_processes=inference.several_processes_per_machine(batches.pipeline.options))
        return (
            batches
            | "KeyByImage" >> beam.Map(lambda batch: list(zip(batch.images, batch.pixels)))
            | "RunInference" >> RunInference(handler.with_no_batching())
            | "Rows" >> beam.ParDo(ClassifiedRows(o, self.model, self.run_timestamp, self.run_id))
        )


class ClassifiedRows(beam.DoFn):
    """A batch's (Image, PredictionResult) pairs, as RunInference returns them -> its ClassifiedBatch."""

    def __init__(self, options: PredictOptions, model: ModelInfo, run_timestamp: dt.datetime, run_id: str):
        self.options, self.model, self.run_timestamp, self.run_id = options, model, run_timestamp, run_id
        self.predicted = progress.Counter("images_predicted")

    def process(self, results: list):
        images = [image for image, _ in results]
        probs = np.stack([result.inference for _, result in results])
        pixels = np.stack([result.example for _, result in results])
        self.predicted.inc(len(images))
        thumbnails = np.clip(np.round(pixels), 0, 255).astype(np.uint8).reshape(len(images), -1)
        rows = rows_table(images, probs, self.model, self.run_timestamp, self.run_id, self.options)
        yield ClassifiedBatch(rows, thumbnails, [image.file_sha256 for image in images])


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


def with_slices(scored: evaluation.Scored, lookup: dict) -> evaluation.Scored:
    """A batch with each row's slice values (None for an image the slices file does not list)."""
    return scored._replace(slices=[lookup.get(uri) for uri in scored.rows["uri"].to_pylist()])


# --------------------------------------------------------------------------- summary


def run_description(options: PredictOptions, model: ModelInfo) -> dict:
    """What summary.json says about the run besides its counts."""
    return {
        "input": options.input,
        "output": options.output,
        "model": options.model,
        **model.names(),
        "face_crop": options.face_crop,
        "face_detector": options.face_detector if options.face_crop else None,
        "faces": options.faces,
        "tta": options.tta,
        "engine": options.engine,
        **({"incremental": True} if options.incremental else {}),
        **({"slices": options.slices} if options.slices else {}),
    }


def totals(counts: dict, rejected: int, predicted: int, skipped_seen: int | None, faces: int | None = None) -> dict:
    """summary.json's totals: every matched file is predicted, rejected or skipped (a non-data file;
    with --incremental, an image the table already holds). With --faces all, `faces` counts the rows
    (every face of the predicted images)."""
    skipped = counts.get("skipped_non_data", 0) + (skipped_seen or 0)
    matched = counts.get("matched", 0)
    return {
        "matched": matched,
        "predicted": predicted,
        **({} if faces is None else {"faces": faces}),
        "rejected": rejected,
        "skipped_non_data": counts.get("skipped_non_data", 0),
        **({} if skipped_seen is None else {"skipped_seen": skipped_seen}),
        "balanced": matched == predicted + rejected + skipped,
    }


class WriteSummary(beam.DoFn):
    """summary.json: the run's description (what it read, with which model and options) and counts."""

    def __init__(self, description: dict, staging: str, faces: bool = False, abstains: bool = False):
        self.description, self.staging, self.faces, self.abstains = description, staging, faces, abstains

    def process(self, _, counts, rejected, evaluated, skipped_seen=None):
        rejected = dict(sorted(rejected))
        images = evaluated.get("images", evaluated["predicted"])
        summary = {
            **self.description,
            "totals": totals(counts, sum(rejected.values()), images, skipped_seen,
                             evaluated["predicted"] if self.faces else None),
            "rejected": rejected,
            "labelled": evaluated.get("labelled", 0),
            "accuracy": evaluated.get("accuracy"),
            "macro_f1": evaluated.get("macro_f1"),
            **({"abstention": evaluated["abstention"]} if self.abstains else {}),
        }
        write_bytes(join(self.staging, "summary.json"), (json.dumps(summary, indent=2) + "\n").encode())
        yield summary


# --------------------------------------------------------------------------- the pipeline


class Predict(beam.PTransform):
    """Input root/glob -> predictions, rejected rows, evaluation and summary, committed (with --table,
    the table too). Returns its PCollections by name: "committed" (the committed manifest, one element),
    "summary" (summary.json as written), "classified" (ClassifiedBatch) and "rejected" (dead-letter rows)."""

    def __init__(self, options: PredictOptions, model: ModelInfo, run_timestamp: dt.datetime, plan: CommitPlan,
                 pattern: str | None, table: TablePlan | None = None, slice_columns: tuple[str, ...] = ()):
        super().__init__()
        self.options, self.model, self.run_timestamp = options, model, run_timestamp
        self.plan, self.pattern, self.table = plan, pattern, table
        self.slice_columns = tuple(slice_columns)  # --slices: the file's columns (slices.read_slices)

    def expand(self, pbegin):
        o, staging = self.options, self.plan.write_root
        inputs = self._read_tfrecords(pbegin) if self.pattern else self._read_folder(pbegin)
        classified = inputs.batches | "Classify" >> Classify(o, self.model, self.run_timestamp, self.plan.run_id)
        prediction_files = (
            classified
            | "RowTables" >> beam.Map(lambda batch: batch.rows)
            | "CoalesceTables" >> beam.ParDo(CoalesceTables())
            | "WritePredictions" >> beam.io.WriteToParquetBatched(
                join(staging, "predictions", "predictions"), PREDICTIONS_SCHEMA, file_name_suffix=".parquet")
        )
        rejected_files = inputs.rejected | "WriteRejected" >> beam.io.WriteToParquet(
            join(staging, "rejected", "rejected"), REJECTED_SCHEMA, file_name_suffix=".parquet")
        summary = self._summarize(pbegin, classified, inputs)
        run_totals = summary | "Totals" >> beam.Map(lambda s: s["totals"])
        after = [prediction_files, rejected_files, summary]
        outputs = {"summary": summary, "classified": classified, "rejected": inputs.rejected}
        if self.table is None:
            return {"committed": pbegin | "Commit" >> CommitOutputs(self.plan, run_totals, after=after), **outputs}
        # With --table, the table is committed in the output's transaction: both, or neither.
        rows = classified | "TableRows" >> beam.Map(table_rows, o)
        table_files = rows | "WriteTable" >> WriteTable(self.table)
        fingerprint = rows | "DataFingerprint" >> DataFingerprint()
        also = TableCommit(self.table, o.output, self.run_timestamp, remote_lock="://" in self.table.root)
        committed = pbegin | "Commit" >> CommitOutputs(self.plan, run_totals, after=[*after, table_files], also=also,
                                                       also_inputs=(summary, fingerprint))
        return {"committed": committed, **outputs}

    def _read_tfrecords(self, pbegin) -> Inputs:
        # Matched by the launcher already (a --dry_run does not look at storage at all).
        records = pbegin | "ReadTFRecords" >> beam.io.ReadFromTFRecord(self.pattern, validate=False)
        size = self.options.files_per_batch
        batches = (
            records
            | "ParseExamples" >> beam.ParDo(ParseExamples(self.model.image_size))
            | "BatchRecords" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
            | "AsImageBatches" >> beam.Map(image_batch)
        )
        counts = (
            records
            | "CountRecords" >> beam.combiners.Count.Globally()
            | "AsCounts" >> beam.Map(lambda n: {"matched": n, "skipped_non_data": 0})
        )
        rejected = pbegin | "NoRejects" >> beam.Create([]).with_output_types(dict)
        return Inputs(batches, rejected, counts, None)

    def _read_folder(self, pbegin) -> Inputs:
        o, skipped_seen = self.options, None
        listing = pbegin | "Start" >> beam.Create([o.input]) | "ListImages" >> ListInput(o.files_per_batch)
        files = listing["batches"]
        if o.incremental:
            unseen = files | "SkipSeen" >> SkipSeen(o.table, self.model.model_version, self.plan.run_id, o.tta,
                                                    o.preprocessing)
            files = unseen["files"] | "BatchUnseen" >> beam.BatchElements(min_batch_size=o.files_per_batch,
                                                                          max_batch_size=o.files_per_batch)
            skipped_seen = unseen["skipped_seen"]
        decoded = (
            files
            | "SpreadBatches" >> beam.Reshuffle()
            | "DecodeImages" >> beam.ParDo(DecodeImages(o, self.model.image_size, hash_files=self.table is not None))
            .with_outputs("rejected", main="images")
        )
        return Inputs(decoded.images, decoded.rejected, listing[ListInput.SUMMARY], skipped_seen)

    def _summarize(self, pbegin, classified, inputs: Inputs):
        """The evaluation (written), then summary.json from every count; its one element is the summary."""
        o, staging = self.options, self.plan.write_root
        scored = classified | "ForEvaluation" >> beam.Map(lambda batch: evaluation.Scored(batch.rows, batch.thumbnails))
        if self.slice_columns:
            lookup = (pbegin | "SlicesFile" >> beam.Create([o.slices])
                      | "ReadSlices" >> beam.FlatMap(slice_pairs, o.input))
            scored = scored | "JoinSlices" >> beam.Map(with_slices, beam.pvalue.AsDict(lookup))
        evaluated = (
            scored
            | "Evaluate" >> beam.CombineGlobally(evaluation.EvaluationFn(self.slice_columns))
            | "WriteEvaluation" >> beam.ParDo(evaluation.WriteEvaluation(staging, self.model, o, self.slice_columns))
        )
        rejected_counts = (
            inputs.rejected
            | "Reasons" >> beam.Map(lambda r: r["reason"])
            | "CountReasons" >> beam.combiners.Count.PerElement()
        )
        seen = [] if inputs.skipped_seen is None else [beam.pvalue.AsSingleton(inputs.skipped_seen)]
        return (
            pbegin
            | "SummaryTrigger" >> beam.Create([None])
            | "WriteSummary" >> beam.ParDo(
                WriteSummary(run_description(o, self.model), staging, faces=o.faces == "all", abstains=o.abstains),
                beam.pvalue.AsSingleton(inputs.counts),
                beam.pvalue.AsList(rejected_counts),
                beam.pvalue.AsSingleton(evaluated),
                *seen,
            )
        )
