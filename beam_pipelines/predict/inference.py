"""Predict's model as Beam runs models: `EngineModelHandler`, an `apache_beam.ml.inference` ModelHandler
over model/engines.py's engines, applied by Beam's own `RunInference`.

Beam's TensorFlow handlers cannot load a Keras 3 export; this one loads what model/engines.py loads (the
export's int8 LiteRT file by default, or its Keras model), so a Dataflow user gets RunInference's knobs and
metrics as they know them:

- one model per worker process, shared by its threads (Beam's default), or with `--model-copies N`, N
  copies per machine shared by all its worker processes (Beam's `model_copies`); one copy is shared per
  machine too wherever a machine runs several worker processes (`several_processes_per_machine`);
- under METRICS_NAMESPACE: num_inferences (images), inference_request_batch_size,
  inference_request_batch_byte_size, inference_batch_latency_micro_secs, load_model_latency_milli_secs,
  model_byte_size, failed_batches_counter.

An example is a keyed image: (key, (S, S) float32 pixels in [0, 255]); the key travels untouched to the
image's row. A batch's result is one element: its [(key, PredictionResult(pixels, probabilities, model_id))]
in order, so rows leave the model as they entered it, a batch at a time. Predict hands work items over
prebatched (`with_no_batching()`): a work item's decoded images are already one element (at a thousand
images a second Beam's cost per element, not the model, would set the pace if each image travelled alone),
and the handler runs them in chunks of `batch_size`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.options.pipeline_options import DebugOptions, DirectOptions, PipelineOptions, PortableOptions

from beam_pipelines.base.runner import is_remote_runner
from model.errors import UsageError

METRICS_NAMESPACE = "BeamML_Emotion"  # as Beam's own handlers name theirs (BeamML_TF_Numpy, BeamML_Sklearn)
DEFAULT_MODEL_COPIES = 1

KeyedPixels = tuple[Any, np.ndarray]
KeyedResults = list[tuple[Any, PredictionResult]]


def add_model_copies_argument(parser: argparse.ArgumentParser) -> None:
    """--model-copies, as RunInference's model_copies (the parser of each stage that runs the model)."""
    parser.add_argument(
        "--model-copies", type=int, default=DEFAULT_MODEL_COPIES, metavar="N",
        help="copies of the model each worker machine loads (Beam RunInference's model_copies). 1 (the default): "
             "one per worker process, shared by its threads, or one per machine shared by its processes where a "
             "machine runs several (Dataflow); N > 1: N per machine, shared by all its worker processes")


def check_model_copies(copies: int) -> None:
    if copies < 1:
        raise UsageError(f"--model-copies {copies}: a worker machine needs at least one copy of the model")


def several_processes_per_machine(options: PipelineOptions) -> bool:
    """Whether the runner starts several worker processes on one machine: Dataflow's Python workers
    (one per vCPU unless --experiments=no_use_multiple_sdk_containers), the DirectRunner with
    --direct_running_mode=multi_processing, a portable runner with --sdk_worker_parallelism above 1."""
    if is_remote_runner(options):
        return "no_use_multiple_sdk_containers" not in (options.view_as(DebugOptions).experiments or [])
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "multi_processing" and direct.direct_num_workers != 1:
        return True
    return (options.view_as(PortableOptions).sdk_worker_parallelism or 1) > 1


class EngineModelHandler(ModelHandler[KeyedPixels, KeyedResults, Any]):
    """An exported model's engine (model/engines.py: litert or keras, with the run's TTA and the export's
    temperature) as a Beam ModelHandler. `model_id` names the model in each PredictionResult."""

    def __init__(self, model_dir: str, engine: str, tta: str, batch_size: int, model_id: str,
                 model_copies: int = DEFAULT_MODEL_COPIES, shared_across_processes: bool = False):
        check_model_copies(model_copies)
        # Beam shares a model across a machine's processes exactly when model_copies is given.
        shared = shared_across_processes or model_copies > 1
        super().__init__(max_batch_size=batch_size, model_copies=model_copies if shared else None)
        self.model_dir, self.engine, self.tta = model_dir, engine, tta
        self.batch_size, self.model_id = batch_size, model_id

    def load_model(self):
        """The engine, after every check model/engines.py makes of the export (its file's SHA-256, shapes)."""
        from model import engines

        return engines.load(self.model_dir, self.engine, self.tta)[0]

    def run_inference(self, batch: Sequence[KeyedPixels], model, inference_args: dict | None = None) -> list:
        """[the batch's (key, PredictionResult) pairs], in the batch's order: one element per batch."""
        keys = [key for key, _ in batch]
        pixels = np.stack([image for _, image in batch]).astype(np.float32)
        probs = probabilities(model, pixels, self.batch_size)
        return [[(key, PredictionResult(pixels[i], probs[i], self.model_id)) for i, key in enumerate(keys)]]

    def get_num_bytes(self, batch: Sequence[KeyedPixels]) -> int:
        """The batch's pixel bytes (Beam's default pickles the whole batch to measure it)."""
        return sum(np.asarray(image).nbytes for _, image in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def validate_inference_args(self, inference_args: dict | None) -> None:
        if inference_args:
            raise ValueError(f"{type(self).__name__} takes no inference_args (TTA and engine are set at construction)")

    def update_model_path(self, model_path: str | None = None) -> None:
        """A refreshed model (RunInference's model_metadata_pcoll or watch_model_pattern): its export folder."""
        if model_path:
            self.model_dir = model_path


def probabilities(engine, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    """(N, classes) probabilities of (N, S, S) pixels, the engine run on chunks of at most batch_size images."""
    pixels = pixels[..., None]
    return np.concatenate([engine.probabilities(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])
