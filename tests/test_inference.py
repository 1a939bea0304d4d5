"""Predict's model as a Beam ModelHandler (beam_pipelines/predict/inference.py) under Beam's RunInference: real
engines on the shipped model, real DirectRunner pipelines, RunInference's own metrics read back."""

from __future__ import annotations

import argparse
import datetime as dt

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import SAMPLE, SHIPPED_MODEL, synthetic_face

from beam_pipelines.base import progress
from beam_pipelines.predict import inference
from beam_pipelines.predict import launcher as predict
from beam_pipelines.predict.decode import Image, image_batch
from beam_pipelines.predict.model_check import check_model
from beam_pipelines.predict.options import ModelInfo, PredictOptions
from beam_pipelines.predict.pipeline import Classify
from model import engines
from model.errors import UsageError
from schemas import LABELS

MODEL = str(SHIPPED_MODEL)
RUN_TIMESTAMP = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)


def work_items(sizes: list[int]) -> list:
    """ImageBatches of synthetic 48x48 faces, as DecodeImages yields them (one per work item)."""
    batches, n = [], 0
    for size in sizes:
        items = [(Image(f"mem://faces/{n + i}.png", f"hash{n + i}", None, None),
                  synthetic_face(n + i, label=(n + i) % 7).astype(np.float32)) for i in range(size)]
        batches.append(image_batch(items))
        n += size
    return batches


def run_options(*flags: str) -> tuple[PredictOptions, ModelInfo, dict]:
    """The options `emotion predict` resolves for these flags, the model's names, its metadata."""
    args, _ = predict.parse_args(["--input", "/unused", "--output", "/unused", "--model", MODEL, *flags])
    metadata, engine = check_model(MODEL, args.engine)
    return PredictOptions.resolve(args, metadata, engine), ModelInfo.from_metadata(metadata), metadata


def inference_metrics(result) -> dict[str, object]:
    """RunInference's metrics of a finished pipeline: counters as ints, distributions as their results."""
    found = result.metrics().query(MetricsFilter().with_namespace(inference.METRICS_NAMESPACE))
    out = {c.key.metric.name: c.committed for c in found["counters"]}
    out.update({d.key.metric.name: d.committed for d in found["distributions"]})
    return out


@pytest.mark.parametrize("engine", ["litert", "keras"])
def test_results_are_the_engines_own_probabilities_in_order(engine):
    handler = inference.EngineModelHandler(MODEL, engine, "flip", batch_size=64, model_id="the-model")
    model = handler.load_model()
    batch = work_items([12])[0]
    keyed = list(zip(batch.images, batch.pixels))
    (results,) = handler.run_inference(keyed, model)  # one element per batch: its rows
    direct, _ = engines.load(MODEL, engine, "flip")
    expected = direct.probabilities(batch.pixels[..., None])
    assert [key for key, _ in results] == batch.images
    np.testing.assert_array_equal(np.stack([r.inference for _, r in results]), expected)
    np.testing.assert_array_equal(np.stack([r.example for _, r in results]), batch.pixels)
    assert {r.model_id for _, r in results} == {"the-model"}
    assert handler.get_num_bytes(keyed) == batch.pixels.nbytes


def test_a_batch_runs_in_chunks_of_batch_size():
    """12 images at --batch-size 5: the engine sees 5, 5 and 2 images, and the rows are what it returned."""
    handler = inference.EngineModelHandler(MODEL, "litert", "none", batch_size=5, model_id="m")
    engine = handler.load_model()
    seen = []

    class Recording:
        def probabilities(self, pixels):
            seen.append(len(pixels))
            return engine.probabilities(pixels)

    batch = work_items([12])[0]
    (results,) = handler.run_inference(list(zip(batch.images, batch.pixels)), Recording())
    assert seen == [5, 5, 2]
    chunks = [engine.probabilities(batch.pixels[i : i + 5, ..., None]) for i in (0, 5, 10)]
    np.testing.assert_array_equal(np.stack([r.inference for _, r in results]), np.concatenate(chunks))


def test_classify_loads_the_model_once_and_reports_runinference_metrics():
    """Six work items on two worker threads: one load (load_model_latency_milli_secs is recorded once per
    load), every image counted in num_inferences, one inference request per work item; the rows are the
    engine's probabilities for each image."""
    options, model, _ = run_options("--batch-size", "4")
    batches = work_items([5, 3, 7, 4, 6, 2])
    engine, _ = engines.load(MODEL, options.engine, options.tta)
    # the engine called directly on each work item's chunks of --batch-size 4
    expected = {image.uri: probs for b in batches for image, probs in zip(b.images, np.concatenate(
        [engine.probabilities(b.pixels[i : i + 4, ..., None]) for i in range(0, len(b.images), 4)]))}
    pipeline = TestPipeline(options=PipelineOptions(["--runner", "DirectRunner", "--direct_num_workers", "2",
                                                     "--direct_running_mode", "multi_threading"]))
    classified = (pipeline | beam.Create(batches, reshuffle=True)
                  | "Classify" >> Classify(options, model, RUN_TIMESTAMP, "run-1"))
    rows = classified | beam.FlatMap(lambda batch: batch.rows.to_pylist())
    assert_that(rows | "Uri" >> beam.Map(lambda r: r["uri"]), equal_to(list(expected)), label="EveryImage")

    def matches_the_engine(rows):
        for row in rows:
            got = np.array([row[f"prob_{name}"] for name in LABELS])
            np.testing.assert_array_equal(got, expected[row["uri"]])
            assert row["predicted_label"] == LABELS[int(got.argmax())]

    assert_that(rows, matches_the_engine, label="EngineProbabilities")
    result = pipeline.run()
    result.wait_until_finish()
    metrics = inference_metrics(result)
    assert metrics["num_inferences"] == 27
    assert metrics["load_model_latency_milli_secs"].count == 1
    assert metrics["model_byte_size"].count == 1
    assert metrics["inference_request_batch_size"].count == 6
    assert metrics["inference_request_batch_size"].max == 7
    assert metrics["inference_batch_latency_micro_secs"].count == 6


def test_model_copies_share_across_processes_as_beam_does():
    local = inference.EngineModelHandler(MODEL, "litert", "flip", 128, "m")
    per_machine = inference.EngineModelHandler(MODEL, "litert", "flip", 128, "m", shared_across_processes=True)
    three = inference.EngineModelHandler(MODEL, "litert", "flip", 128, "m", model_copies=3)
    assert (local.share_model_across_processes(), local.model_copies()) == (False, 1)
    assert (per_machine.share_model_across_processes(), per_machine.model_copies()) == (True, 1)
    assert (three.share_model_across_processes(), three.model_copies()) == (True, 3)
    assert local.batch_elements_kwargs() == {"max_batch_size": 128}
    assert local.get_metrics_namespace() == inference.METRICS_NAMESPACE


@pytest.mark.parametrize("flags, several", [
    ([], False),
    (["--direct_running_mode", "multi_threading", "--direct_num_workers", "4"], False),
    (["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"], True),
    (["--runner", "DataflowRunner"], True),
    (["--runner", "DataflowRunner", "--experiments", "no_use_multiple_sdk_containers"], False),
])
def test_several_processes_per_machine(flags, several):
    assert inference.several_processes_per_machine(PipelineOptions(flags)) is several


@pytest.mark.parametrize("copies", ["0", "-2"])
def test_model_copies_below_one_is_a_usage_error(copies):
    parser = argparse.ArgumentParser()
    inference.add_model_copies_argument(parser)
    args = parser.parse_args(["--model-copies", copies])
    with pytest.raises(UsageError, match="^--model-copies -?[0-9]+: .*at least one copy") as caught:
        inference.check_model_copies(args.model_copies)
    assert "\n" not in str(caught.value)
    with pytest.raises(UsageError):
        inference.EngineModelHandler(MODEL, "litert", "flip", 128, "m", model_copies=int(copies))
    assert parser.parse_args([]).model_copies == 1


def test_two_copies_shared_across_processes_give_the_same_rows():
    """model_copies=2: the engines live behind Beam's multi-process proxy; the rows are the same numbers."""
    options, model, _ = run_options()
    handler = inference.EngineModelHandler(MODEL, options.engine, options.tta, options.batch_size, "m",
                                           model_copies=2)
    batches = work_items([6, 5])
    engine, _ = engines.load(MODEL, options.engine, options.tta)
    expected = [(image.uri, probs.tolist()) for b in batches
                for image, probs in zip(b.images, engine.probabilities(b.pixels[..., None]))]
    with TestPipeline(options=PipelineOptions(["--runner", "DirectRunner"])) as pipeline:
        got = (pipeline | beam.Create(batches)
               | beam.Map(lambda batch: list(zip(batch.images, batch.pixels)))
               | RunInference(handler.with_no_batching())
               | beam.FlatMap(lambda rows: [(image.uri, r.inference.tolist()) for image, r in rows]))
        assert_that(got, equal_to(expected))


def test_predict_on_the_sample_reports_runinference_metrics(tmp_path, monkeypatch):
    """A real `emotion predict` run: RunInference's metrics, beside predict's own counters."""
    results = []
    counters = progress.beam_counters
    monkeypatch.setattr(progress, "beam_counters", lambda result: results.append(result) or counters(result))
    summary = predict.run(["--input", str(SAMPLE), "--output", str(tmp_path / "out"), "--model", MODEL,
                           "--files-per-batch", "32", "--runner", "DirectRunner"])
    (result,) = results
    metrics = inference_metrics(result)
    predicted = summary["totals"]["predicted"]
    assert predicted == 211
    assert metrics["num_inferences"] == predicted
    assert metrics["load_model_latency_milli_secs"].count == 1
    batches = metrics["inference_request_batch_size"]
    assert batches.sum == predicted and batches.count >= 7 and batches.max <= 32
    assert metrics["inference_batch_latency_micro_secs"].count == batches.count
    assert metrics["inference_request_batch_byte_size"].sum == predicted * 48 * 48 * 4


def test_emotion_predict_refuses_no_model_copy_in_one_line(tmp_path):
    from conftest import REPO, run_cli

    for copies in ("0", "-2"):
        proc = run_cli("predict", "--input", REPO / "beam_pipelines" / "sample" / "faces", "--output",
                       tmp_path / "out", "--model-copies", copies, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
        assert lines[0].startswith("emotion predict: error: ") and f"--model-copies {copies}" in lines[0]
        assert not (tmp_path / "out").exists()  # refused before anything is written
