"""The two stage composites, `Ingest` and `Predict`, applied whole to a TestPipeline (DirectRunner) and
checked in memory with assert_that, as Apache Beam's examples test theirs; the committed files are read
back only to confirm what the in-memory checks saw.

Both composites start from the pipeline (they list their --input themselves) and end in the output's
commit, so each test does what the launcher does first: it claims the output under tmp_path
(`OutputClaim`, whose CommitPlan the composite commits) and builds the frozen options from the stage's
own parser. A composite returns its PCollections by name: "committed" (one element, the committed manifest, whose
`counts` are the run's totals) and the stats, summary, classified and rejected rows it wrote.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections import Counter

import apache_beam as beam
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from conftest import SAMPLE, SHIPPED_MODEL, make_split_tree, write_image
from test_ingest import read_records

from beam_pipelines.base.outputs import OutputClaim
from beam_pipelines.ingest import launcher as ingest_launcher
from beam_pipelines.ingest.options import IngestOptions
from beam_pipelines.ingest.pipeline import Ingest
from beam_pipelines.ingest.shuffle import shuffle_mode
from beam_pipelines.predict import launcher as predict_launcher
from beam_pipelines.predict.model_check import check_model
from beam_pipelines.predict.options import ModelInfo, PredictOptions
from beam_pipelines.predict.pipeline import Predict
from model.preprocess import PreprocessError, preprocess_faces
from schemas import LABELS

RUNNER = "DirectRunner"
RUN_TIMESTAMP = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)

# The embedded sample's files that are not predicted, and why (the rest are 7 classes x 30 faces and
# one face in an unknown class folder, predicted without a label).
SAMPLE_REJECTED = {"happy/empty.jpg": "empty_file", "sad/truncated.jpg": "truncated_image",
                   "fear/notes.png": "not_an_image"}
SAMPLE_NON_DATA = {".DS_Store"}


def direct_pipeline() -> test_pipeline.TestPipeline:
    return test_pipeline.TestPipeline(options=PipelineOptions(["--runner", RUNNER]))


def relative(root, uri: str) -> str:
    return uri[len(str(root)) + 1 :]


def only(matcher):
    """A matcher of a PCollection that must hold exactly one element, checked by `matcher(element)`."""
    def check(actual):
        if len(actual) != 1:
            raise BeamAssertException(f"expected one element, got {len(actual)}")
        matcher(actual[0])
    return check


def files_under(root) -> list[str]:
    return sorted(relative(root, str(p)) for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- Ingest


@pytest.fixture
def ingest_input(tmp_path):
    """3 images per class in train/val/test, a within-split duplicate, a train image copied into val
    (leakage), the sample's three undecodable files, and a non-data file."""
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=3, splits=("train", "val", "test"), seed=4)
    shutil.copy(raw / "train/happy/happy_0.png", raw / "train/happy/happy_0_copy.png")
    shutil.copy(raw / "train/sad/sad_1.png", raw / "val/sad/leak.png")
    for rel in SAMPLE_REJECTED:
        shutil.copy(SAMPLE / rel, raw / "train" / rel)
    shutil.copy(SAMPLE / ".DS_Store", raw / "train" / ".DS_Store")
    return raw


def test_ingest_writes_or_rejects_every_input_and_its_counts_add_up(ingest_input, tmp_path):
    """Every input is written (in its folder's split) or rejected with its reason or skipped, and
    matched = written + rejected + skipped in the committed counts, the stats and the files alike."""
    raw, out = ingest_input, tmp_path / "out"
    inputs = files_under(raw)
    kept_copy, dropped_copy = "train/happy/happy_0.png", "train/happy/happy_0_copy.png"
    expected_rejected = {
        dropped_copy: "duplicate",  # the first uri of a pixel-identical group is kept
        "train/sad/sad_1.png": "leakage",  # its copy in val is kept: the training-side copy goes
        **{f"train/{rel}": reason for rel, reason in SAMPLE_REJECTED.items()},
    }
    written = [rel for rel in inputs if rel not in expected_rejected and rel.rsplit("/", 1)[-1] not in SAMPLE_NON_DATA]
    per_split = {split: sum(rel.startswith(f"{split}/") for rel in written) for split in ("train", "val", "test")}
    assert per_split == {"train": 20, "val": 22, "test": 21}  # the input is what this test means it to be
    totals = {"matched": len(inputs), "written": len(written), "rejected": len(expected_rejected),
              "skipped_non_data": 1, "balanced": True}

    args, _ = ingest_launcher.parse_args(["--input", str(raw), "--output", str(out)])
    claim = OutputClaim(args.output, "ingest", ingest_launcher.OUTPUT_NAMES, description={"input": args.input})
    with claim as plan, direct_pipeline() as p:
        options = IngestOptions.from_args(args, staging=plan.write_root, shuffle=shuffle_mode("auto", RUNNER))
        result = p | "Ingest" >> Ingest(options, plan)
        committed = result["committed"]

        def is_committed(manifest):
            assert manifest["run_id"] == plan.run_id and manifest["state"] == "complete", manifest
            assert manifest["counts"] == totals, manifest["counts"]
            t = manifest["counts"]
            assert t["matched"] == t["written"] + t["rejected"] + t["skipped_non_data"]
            assert {f"tfrecords/{s}-00000-of-00001.tfrecord" for s in per_split} | {"stats.json"} <= set(
                manifest["files"])

        assert_that(committed, only(is_committed), label="Committed")

        def stats_say_what_happened(stats):
            assert stats["totals"] == totals
            assert stats["written_per_split"] == per_split
            assert stats["rejected"] == dict(Counter(expected_rejected.values()))
            assert stats["skipped"] == {".DS_Store": 1}
            d = stats["duplicates"]
            assert (d["dropped_within_split"], d["leakage_dropped"]) == (1, {"train->val": 1})
            assert d["conflicting_label_files"] == 0
            assert stats["splits_carved_from_train"] == {} and stats["split_source"] == "folders"

        assert_that(result["stats"], only(stats_say_what_happened), label="Stats")

        rejected = result["rejected"]
        assert_that(rejected | "Reasons" >> beam.Map(lambda r: (relative(raw, r["uri"]), r["reason"], r["stage"])),
                    equal_to([(rel, reason, "ingest") for rel, reason in expected_rejected.items()]),
                    label="EveryRejectWithItsReason")
        assert_that(rejected | "Details" >> beam.Filter(lambda r: r["reason"] in ("duplicate", "leakage"))
                    | beam.Map(lambda r: (r["reason"], r["detail"])),
                    equal_to([("duplicate", f"pixel-identical to {raw / kept_copy} (kept in train)"),
                              ("leakage", f"pixel-identical to {raw / 'val/sad/leak.png'} (kept in val)")]),
                    label="CopiesNameTheKeptOne")

    # The records committed are exactly the inputs neither rejected nor skipped, each in its folder's split.
    records = read_records(out)
    assert sorted((relative(raw, r["uri"]), r["split"]) for r in records) == sorted(
        (rel, rel.split("/", 1)[0]) for rel in written)
    assert len({r["sha256"] for r in records}) == len(records)  # nothing kept twice
    assert not (out / "_staging").exists()


# --------------------------------------------------------------------------- Predict


def predict_setup(input_root, out, *flags) -> tuple[PredictOptions, ModelInfo, str | None]:
    """What the launcher settles before it claims the output: the options with the model's defaults
    resolved (its engine loaded once, as check_model does), the model's names, the TFRecord pattern."""
    args, _ = predict_launcher.parse_args(
        ["--input", str(input_root), "--output", str(out), "--model", str(SHIPPED_MODEL), *flags])
    metadata, engine = check_model(args.model, args.engine)
    options = PredictOptions.resolve(args, metadata, engine)
    return options, ModelInfo.from_metadata(metadata), predict_launcher.tfrecord_pattern(options.input)


def predict_claim(options: PredictOptions, model: ModelInfo) -> OutputClaim:
    """The claim on --output the launcher makes (a context manager: its CommitPlan; aborted on failure)."""
    return OutputClaim(options.output, "predict", predict_launcher.OUTPUT_NAMES,
                       description={"input": options.input, "model": options.model, **model.names()})


def classified_rows(classified: beam.PCollection) -> beam.PCollection:
    """Predict's rows as Classify yields them (one Arrow table per batch), one dict per row."""
    return classified | "AsRows" >> beam.FlatMap(lambda b: b.rows.to_pylist())


def probabilities(row) -> np.ndarray:
    return np.array([row[f"prob_{label}"] for label in LABELS])


def test_predict_classifies_every_decodable_image_once_and_rejects_the_rest(tmp_path):
    out = tmp_path / "out"
    inputs = files_under(SAMPLE)
    predicted = [rel for rel in inputs if rel not in SAMPLE_REJECTED and rel not in SAMPLE_NON_DATA]
    totals = {"matched": len(inputs), "predicted": len(predicted), "rejected": len(SAMPLE_REJECTED),
              "skipped_non_data": len(SAMPLE_NON_DATA), "balanced": True}
    labelled = [rel for rel in predicted if rel.split("/", 1)[0] in LABELS]
    assert len(labelled) == len(predicted) - 1  # one face in a folder that names no label (contempt/)

    options, model, pattern = predict_setup(SAMPLE, out, "--files-per-batch", "64")
    assert pattern is None  # an image folder
    with predict_claim(options, model) as plan, direct_pipeline() as p:
        result = p | "Predict" >> Predict(options, model, RUN_TIMESTAMP, plan, pattern)
        committed = result["committed"]

        def is_committed(manifest):
            assert manifest["run_id"] == plan.run_id and manifest["state"] == "complete", manifest
            assert manifest["counts"] == totals, manifest["counts"]
            t = manifest["counts"]
            assert t["matched"] == t["predicted"] + t["rejected"] + t["skipped_non_data"]

        assert_that(committed, only(is_committed), label="Committed")

        rows = classified_rows(result["classified"])
        assert_that(rows | "Uris" >> beam.Map(lambda r: relative(SAMPLE, r["uri"])), equal_to(predicted),
                    label="OneRowPerImage")

        def rows_are_predictions(rows):
            for row in rows:
                probs = probabilities(row)
                assert row["predicted_label"] in LABELS, row["predicted_label"]
                assert abs(probs.sum() - 1) < 1e-4 and (probs >= 0).all(), (row["uri"], probs)
                assert row["predicted_label"] == LABELS[int(probs.argmax())] == LABELS[row["predicted_index"]]
                assert row["confidence"] == pytest.approx(probs.max())
                folder = relative(SAMPLE, row["uri"]).split("/", 1)[0]
                assert row["true_label"] == (folder if folder in LABELS else None)
                assert row["correct"] == (None if row["true_label"] is None
                                          else row["true_label"] == row["predicted_label"])
                assert (row["model_fingerprint"], row["run_id"]) == (model.model_fingerprint, plan.run_id)
                assert row["face_index"] is None  # a row per image

        assert_that(rows, rows_are_predictions, label="RowsArePredictions")

        rejected = result["rejected"]
        assert_that(rejected | "Reasons" >> beam.Map(lambda r: (relative(SAMPLE, r["uri"]), r["reason"], r["stage"])),
                    equal_to([(rel, reason, "predict") for rel, reason in SAMPLE_REJECTED.items()]),
                    label="UndecodableRejectedWithReason")
        assert_that(rejected | "Details" >> beam.Map(lambda r: bool(r["detail"])), equal_to([True] * 3),
                    label="EveryRejectSaysWhy")

        def summary_adds_up(summary):
            assert summary["totals"] == totals
            assert summary["rejected"] == {reason: 1 for reason in SAMPLE_REJECTED.values()}
            assert summary["labelled"] == len(labelled)
            assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["macro_f1"] <= 1
            assert (summary["input"], summary["model_fingerprint"]) == (options.input, model.model_fingerprint)

        assert_that(result["summary"], only(summary_adds_up), label="Summary")

    # The committed predictions are the rows checked above: as many, under the output.
    committed_rows = pq.ParquetDataset(sorted(str(f) for f in (out / "predictions").glob("*.parquet"))).read()
    assert sorted(relative(SAMPLE, uri) for uri in committed_rows.column("uri").to_pylist()) == predicted


def framed_faces(paths) -> np.ndarray:
    """The sample's faces enlarged side by side in one frame (a photo of several people)."""
    frame = np.full((300, 300 * len(paths)), 120, np.uint8)
    for i, path in enumerate(paths):
        face = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        frame[54:246, 300 * i + 54 : 300 * i + 246] = cv2.resize(face, (192, 192), interpolation=cv2.INTER_CUBIC)
    return frame


def faces_found(path) -> list:
    """The faces the input contract finds in a file (largest first), as (x, y, width, height) rounded."""
    try:
        faces, _ = preprocess_faces(path.read_bytes())
    except PreprocessError:
        return []
    return [tuple(int(v) for v in np.round(face[:4])) for _, face in faces]


def write_first(path, frames, wanted) -> None:
    """Writes to `path` the first of `frames` in which the input contract finds a number of faces `wanted`."""
    for frame in frames:
        if wanted(len(faces_found(write_image(path, frame)))):
            return
    raise AssertionError(f"no frame for {path.name} with the faces it needs")


def test_predict_faces_all_gives_a_row_per_face_and_counts_images_and_faces(tmp_path):
    """--faces all: a frame with several faces gives a row per face (index 0 the largest, its box), a
    frame with none is rejected as no_face; the summary counts images and faces apart."""
    root, out = tmp_path / "in", tmp_path / "out"
    happy = sorted(SAMPLE.glob("happy/PrivateTest_*.jpg"))
    # The detector misses some tight FER crops (bench/face_crop_bench.py): the first frames it finds
    # several faces in, and one face in.
    write_first(root / "happy" / "group.png", (framed_faces(happy[i : i + 3]) for i in range(0, 12, 3)),
                lambda n: n >= 2)
    write_first(root / "happy" / "one.png", (framed_faces([path]) for path in happy), lambda n: n == 1)
    write_image(root / "sad" / "wall.png", np.tile(np.linspace(90, 160, 300), (300, 1)).astype(np.uint8))
    expected = {rel: faces_found(root / rel) for rel in ("happy/group.png", "happy/one.png", "sad/wall.png")}
    assert expected["sad/wall.png"] == []
    face_rows = [(rel, i, box) for rel, boxes in expected.items() for i, box in enumerate(boxes)]
    totals = {"matched": 3, "predicted": 2, "faces": len(face_rows), "rejected": 1, "skipped_non_data": 0,
              "balanced": True}

    options, model, pattern = predict_setup(root, out, "--faces", "all")
    assert options.face_crop and options.preprocessing.startswith("faces=all")
    with predict_claim(options, model) as plan, direct_pipeline() as p:
        result = p | "Predict" >> Predict(options, model, RUN_TIMESTAMP, plan, pattern)
        committed = result["committed"]
        assert_that(committed | "Counts" >> beam.Map(lambda m: m["counts"]), equal_to([totals]), label="Committed")

        rows = classified_rows(result["classified"])
        assert_that(rows | "Faces" >> beam.Map(lambda r: (relative(root, r["uri"]), r["face_index"], (
            r["face_x"], r["face_y"], r["face_width"], r["face_height"]))), equal_to(face_rows), label="RowPerFace")

        def face_rows_are_predictions(rows):
            for row in rows:
                assert row["predicted_label"] in LABELS and abs(probabilities(row).sum() - 1) < 1e-4
                assert row["face_detector"] == options.face_detector and row["face_score"] > 0
                assert row["true_label"] == "happy"

        assert_that(rows, face_rows_are_predictions, label="FaceRowsArePredictions")
        assert_that(result["rejected"] | beam.Map(lambda r: (
            relative(root, r["uri"]), r["reason"])), equal_to([("sad/wall.png", "no_face")]), label="NoFace")
        assert_that(result["summary"] | "SummaryCounts" >> beam.Map(
            lambda s: (s["totals"], s["rejected"], s["faces"])), equal_to([(totals, {"no_face": 1}, "all")]),
            label="Summary")
