"""Inference engines: what runs an exported model's network on batches of preprocessed pixels.

    litert   the export's int8 TFLite file (model/quantize.py: dynamic-range, as both packaged models' files
             are, or full-integer with --full-integer; float32 input and output) on LiteRT's XNNPACK
             kernels: about 4x the images per second of Keras on CPUs, at the accuracy measured in
             bench/engine_bench.py
    keras    the export's model.keras in TensorFlow, float32: the reference every other engine is held to

Both take float32 pixels in [0, 255], shape (B, S, S, 1) (the input contract of model/preprocess.py), apply the
test-time augmentation in numpy (the views of model/tta.py, which tests hold equal) and the temperature the
export fitted on val (metadata.json's "calibration"), and return class probabilities. The LiteRT engine never
builds a Keras model: a predict worker running it loads one small flatbuffer. `auto` (predict's default) is
litert when the export holds a verified int8 file.

The contract between the two (what tests/test_engines.py holds): on the same pixels, TTA and temperature,
no probability of the int8 engine differs from the float model's by more than PROBABILITY_TOLERANCE; so the
int8 engine can pick another class only where the float model's two best classes lie within twice that of
each other, and on val it picks the float model's class on at least AGREEMENT_FLOOR of the images (the
check model/quantize.py runs at export). Exactly equal classes on every file are not promised.
"""

from __future__ import annotations

import hashlib
import os
import threading

import numpy as np

# The export's file names, its metadata entry and fitted temperature, and the engines' error are the model
# directory's (model/artifact.py); this module runs what they describe.
from model.artifact import EXPORT, INT8_FILE, INT8_KEY, METADATA, EngineError, fitted_temperature
from model.artifact import read_metadata as read_checked_metadata
from schemas import TTA_MODES

ENGINES = ("auto", "litert", "keras")
CROP_PAD = 3
AGREEMENT_FLOOR = 0.99  # argmax agreement of an int8 file with the float model on val, one view
PROBABILITY_TOLERANCE = 0.05  # the largest |p_int8 - p_float| allowed on any image and class


def tta_views(pixels: np.ndarray, mode: str) -> list[np.ndarray]:
    """model.tta.views in numpy: the image; for crops four 3-pixel shifted crops of its reflect-padded
    copy; for flip and crops the mirrors of all of them."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown TTA mode {mode!r}; choose from {TTA_MODES}")
    base = [pixels]
    if mode == "crops":
        size = pixels.shape[1]
        padded = np.pad(pixels, [(0, 0), (CROP_PAD, CROP_PAD), (CROP_PAD, CROP_PAD), (0, 0)], mode="reflect")
        for dy, dx in ((0, 0), (0, 2 * CROP_PAD), (2 * CROP_PAD, 0), (2 * CROP_PAD, 2 * CROP_PAD)):
            base.append(padded[:, dy : dy + size, dx : dx + size, :])
    if mode == "none":
        return base
    return base + [v[:, :, ::-1, :] for v in base]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def mean_probabilities(logits_fn, pixels: np.ndarray, mode: str, temperature: float = 1.0) -> np.ndarray:
    """Mean softmax of logits / temperature over the TTA views, all views of a batch run as one call of
    logits_fn."""
    views = tta_views(pixels, mode)
    logits = logits_fn(np.concatenate(views) if len(views) > 1 else pixels)
    probs = softmax(logits.astype(np.float64) / temperature).reshape(len(views), len(pixels), -1)
    return probs.mean(axis=0)


# LiteRT announces its XNNPACK delegate ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.") on the
# C stderr of every process, once, when the first interpreter allocates its tensors: it is no message for
# a user, so interpreters are built with that stream caught until the notice has come, and anything else
# printed meanwhile is passed on.
_DELEGATE_NOTICE = b"Created TensorFlow Lite XNNPACK delegate"
_announced = threading.Lock()
_quiet_done = False


def _without_delegate_notice(build):
    """build() with the process's stderr (fd 2) caught the first time; its other lines written back."""
    global _quiet_done
    with _announced:
        if _quiet_done:
            return build()
        import sys
        import tempfile

        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as caught:
            os.dup2(caught.fileno(), 2)
            try:
                return build()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                caught.seek(0)
                lines = caught.read().splitlines(keepends=True)
                kept = [line for line in lines if _DELEGATE_NOTICE not in line]
                _quiet_done = len(kept) < len(lines)  # the notice came (at the first allocate_tensors)
                if kept:
                    os.write(2, b"".join(kept))


class LiteRTEngine:
    """A TFLite flatbuffer in LiteRT's interpreter.

    Re-planning an interpreter for a new batch size costs more than running a small batch, and Beam's
    batching hands over batches of every size: so there is one interpreter per power-of-two batch size
    (planned once, on first use), and a batch is run in chunks of the largest size, its tail padded up to
    the next power of two. The interpreters are not thread-safe and predict's RunInference
    (beam_pipelines/predict/inference.py) shares one engine between a worker's threads: calls are serialised (each
    already uses every core)."""

    name = "litert"
    MAX_CHUNK = 256

    def __init__(self, content: bytes, tta: str = "none", threads: int | None = None, temperature: float = 1.0):
        from ai_edge_litert.interpreter import Interpreter

        self.tta, self.temperature = tta, temperature
        self._new_interpreter = lambda: Interpreter(model_content=content, num_threads=threads or os.cpu_count() or 1)
        self._by_size: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def shapes(self) -> tuple[tuple, tuple]:
        """(input shape without the batch, output shape without the batch) the file was converted for."""
        interpreter = _without_delegate_notice(self._new_interpreter)
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        return tuple(int(d) for d in inp["shape"][1:]), tuple(int(d) for d in out["shape"][1:])

    def _planned(self, size: int, shape: tuple) -> tuple:
        if size not in self._by_size:
            def build():
                interpreter = self._new_interpreter()
                index = interpreter.get_input_details()[0]["index"]
                interpreter.resize_tensor_input(index, [size, *shape], strict=False)
                interpreter.allocate_tensors()
                return interpreter, index, interpreter.get_output_details()[0]["index"]

            self._by_size[size] = _without_delegate_notice(build)
        return self._by_size[size]

    def _logits(self, pixels: np.ndarray) -> np.ndarray:
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        chunks = []
        with self._lock:
            for start in range(0, len(pixels), self.MAX_CHUNK):
                chunk = pixels[start : start + self.MAX_CHUNK]
                size = 1 << max(0, len(chunk) - 1).bit_length()  # the next power of two
                if size != len(chunk):
                    chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.float32)])
                interpreter, inp, out = self._planned(size, chunk.shape[1:])
                interpreter.set_tensor(inp, chunk)
                interpreter.invoke()
                chunks.append(interpreter.get_tensor(out)[: min(self.MAX_CHUNK, len(pixels) - start)].copy())
        return np.concatenate(chunks)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return mean_probabilities(self._logits, pixels, self.tta, self.temperature)


class KerasEngine:
    """The export's Keras model in TensorFlow (float32), compiled once per input shape."""

    name = "keras"

    def __init__(self, model, tta: str = "none", temperature: float = 1.0):
        import tensorflow as tf

        self.tta, self.temperature = tta, temperature
        self._logits_fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def _logits(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self._logits_fn(pixels.astype(np.float32)))

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return mean_probabilities(self._logits, pixels, self.tta, self.temperature)


def available(metadata: dict) -> list[str]:
    """The engines an export supports, best first."""
    return (["litert"] if INT8_KEY in (metadata.get("engines") or {}) else []) + ["keras"]


def resolve(engine: str, metadata: dict) -> str:
    """The engine a run uses: auto -> the best available; an unavailable one is an EngineError."""
    supported = available(metadata)
    if engine == "auto":
        return supported[0]
    if engine not in supported:
        raise EngineError(f"--engine {engine}: this model's export has no {engine} file (it supports "
                          f"{', '.join(supported)}); re-export it with this version")
    return engine


def read_int8(model_dir: str, metadata: dict) -> bytes:
    """The export's int8 file, after checking it is the one metadata.json describes (its SHA-256)."""
    entry = (metadata.get("engines") or {}).get(INT8_KEY)
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        raise EngineError(f"{model_dir}/{METADATA} has no valid engines.{INT8_KEY} entry: re-export the model")
    path = f"{model_dir.rstrip('/')}/{EXPORT}/{INT8_FILE}"
    content = _read_bytes(path)
    if hashlib.sha256(content).hexdigest() != entry["sha256"]:
        raise EngineError(f"{path} does not match {model_dir}/{METADATA} (SHA-256 differs): an interrupted or "
                          f"hand-edited export; re-export it")
    return content


def _read_bytes(path: str) -> bytes:
    if "://" not in path:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise EngineError(f"cannot read {path}: {exc.strerror}") from None
    from model.files import local_copy

    try:
        with local_copy(path) as local, open(local, "rb") as f:
            return f.read()
    except Exception as exc:  # gfile raises NotFoundError and friends: all one answer here
        raise EngineError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}") from None


def load(model_dir: str, engine: str = "auto", tta: str = "none", threads: int | None = None):
    """(engine, metadata) for an exported model directory, after every check its engine needs."""
    from model import resolve_model_dir
    from model.loading import load as load_keras

    root = resolve_model_dir(model_dir).rstrip("/")
    metadata = read_checked_metadata(root)
    chosen = resolve(engine, metadata)
    scale = fitted_temperature(metadata)
    if chosen == "litert":
        engine = LiteRTEngine(read_int8(root, metadata), tta, threads, scale)
        check_int8_shapes(engine, metadata, root)
        return engine, metadata
    model, metadata = load_keras(root)
    return KerasEngine(model, tta, scale), metadata


def check_int8_shapes(engine: LiteRTEngine, metadata: dict, model_dir: str) -> None:
    """The int8 file is the model metadata.json describes: its input is image_size square, one channel,
    and it outputs one score per label (as model.loading.check_model holds model.keras)."""
    path, metadata_path = f"{model_dir}/{EXPORT}/{INT8_FILE}", f"{model_dir}/{METADATA}"
    size = int(metadata["image_size"])
    inputs, outputs = engine.shapes()
    if inputs != (size, size, 1):
        raise EngineError(f"{path} takes inputs of shape {inputs}, {metadata_path} says image_size {size}: "
                          f"a hand-edited export; re-export it")
    if outputs != (len(metadata["labels"]),):  # the labels themselves are checked by read_metadata
        raise EngineError(f"{path} outputs {outputs} scores, expected {len(metadata['labels'])}: re-export it")
