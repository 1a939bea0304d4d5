"""Inference engines side by side: views/s, accuracy, and agreement with the Keras float32 reference.

One run, one split loaded once as pixels, every engine built from the same exported model. All of FER2013
test takes roughly 10-15 minutes on 2 idle cores (estimated from smoke runs); a smoke test:
--images 256 --timing-images 256 --repeats 2.

    .venv/bin/python bench/engine_bench.py --model shipped --data /tmp/fer-out --repeats 3 --threads 2 \\
        --json /tmp/engine_bench.json

Engines (--engines picks a subset):

    keras-fp32           the export's model.keras in TensorFlow, float32: the reference
    keras-bf16           the same weights in the architecture rebuilt under the mixed_bfloat16 policy
    litert-fp32          a TFLite file converted without quantization
    litert-int8-full     full-integer TFLite: activation ranges calibrated on 512 train images (seed 0)
    litert-int8-dynamic  the export's own engine file (export/model_int8.tflite; converted here if it has none)
    ort-fp32             ONNX (tf2onnx) in ONNX Runtime
    ort-int8-dynamic     onnxruntime.quantization.quantize_dynamic of that file (ConvInteger: ONNX Runtime leaves
                         it unoptimised and recommends static quantization for CNNs; expect it to be slow)
    ort-int8-static      quantize_static (QDQ, per-channel) calibrated on the same 512 train images

ONNX needs `pip install -e ".[bench]"` (onnxruntime, tf2onnx: bench only). An engine whose
package is missing or whose conversion fails is reported as "unavailable: <reason>" and the run goes on.

Measured per engine on the --split split (test by default; calibration never sees it), single view, batch
--batch-size: accuracy and macro-F1 (model/metrics.py), argmax agreement with keras-fp32 and the max and mean
|p - p_keras-fp32| over all images and classes; then views/s: --timing-images of the split (whole batches),
after one untimed batch, best of --repeats passes. Each repeat times every engine once, in an order rotated
by one per repeat, so machine noise is spread over all of them. Every engine gets --threads threads
(TensorFlow's intra-op pool too).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from model import engines, metrics, quantize  # noqa: E402
from schemas import LABELS  # noqa: E402

REFERENCE = "keras-fp32"


# --------------------------------------------------------------------------- data


def load_split(data_dir: str, split: str, limit: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(float32 pixels, labels) of a split of an ingest output; with `limit`, a seeded sample of that many."""
    from model import data

    size = int(data.read_stats(data_dir)["image_size"])
    batches = list(data.eval_dataset(data.split_files(data_dir, split), size))
    pixels = np.concatenate([b["pixels"].numpy() for b in batches]).astype(np.float32)
    labels = np.concatenate([b["label"].numpy() for b in batches])
    if limit and len(pixels) > limit:
        pick = np.sort(np.random.default_rng(seed).choice(len(pixels), limit, replace=False))
        pixels, labels = pixels[pick], labels[pick]
    return pixels, labels


# --------------------------------------------------------------------------- conversions


def saved_model(model, directory: str) -> None:
    """The model's forward pass as a SavedModel with a `serve` endpoint (as model/quantize.py writes it)."""
    import keras
    import tensorflow as tf

    size = int(model.input_shape[1])
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda pixels: model(pixels, training=False),
                         input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32, name="pixels")])
    archive.write_out(directory, verbose=False)


def tflite_float(model) -> bytes:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        saved_model(model, tmp)
        return tf.lite.TFLiteConverter.from_saved_model(tmp).convert()


def onnx_float(model) -> bytes:
    """tf2onnx straight from a tf.function of the Keras 3 model (its variables are frozen on the way)."""
    import logging

    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    size = int(model.input_shape[1])
    spec = [tf.TensorSpec([None, size, size, 1], tf.float32, name="pixels")]
    function = tf.function(lambda pixels: model(pixels, training=False), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=17)
    return proto.SerializeToString()


def onnx_int8(content: bytes, calibration: np.ndarray | None = None) -> bytes:
    """After onnxruntime's quantization pre-processing: quantize_dynamic (uint8 weights: ONNX Runtime runs
    ConvInteger unoptimised, u8 x u8 measured ~5x faster than its default u8 x s8), or with calibration pixels
    quantize_static (QDQ; uint8 activations, per-channel int8 weights; MinMax ranges)."""
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, target = f"{tmp}/float.onnx", f"{tmp}/prepared.onnx", f"{tmp}/int8.onnx"
        with open(source, "wb") as f:
            f.write(content)
        quant_pre_process(source, prepared, skip_symbolic_shape=True)  # symbolic shapes need sympy; not here
        if calibration is None:
            q.quantize_dynamic(prepared, target, weight_type=q.QuantType.QUInt8)
        else:
            q.quantize_static(prepared, target, CalibrationReader(calibration, _input_name(content)),
                              quant_format=q.QuantFormat.QDQ, per_channel=True,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8)
        with open(target, "rb") as f:
            return f.read()


def _input_name(content: bytes) -> str:
    import onnx

    return onnx.load_from_string(content).graph.input[0].name


class CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol: the calibration pixels, 64 at a time."""

    def __init__(self, pixels: np.ndarray, input_name: str):
        self._batches = iter([{input_name: pixels[i : i + 64]} for i in range(0, len(pixels), 64)])

    def get_next(self):
        return next(self._batches, None)


# --------------------------------------------------------------------------- engines


class OrtEngine:
    """An ONNX file in ONNX Runtime's CPU provider, with model/engines.py's probabilities interface."""

    def __init__(self, content: bytes, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def _logits(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: np.ascontiguousarray(pixels, np.float32)})[0]

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return engines.mean_probabilities(self._logits, pixels, "none")


class Sources:
    """What the engines are built from, each made once and only when an engine asks for it."""

    def __init__(self, model_dir: str, data_dir: str, threads: int):
        from model import resolve_model_dir
        from model.loading import load

        self.root = resolve_model_dir(model_dir).rstrip("/")
        self.model, self.metadata = load(self.root)
        self.data_dir, self.threads = data_dir, threads

    @functools.cached_property
    def calibration(self) -> np.ndarray:
        return quantize.split_pixels(self.data_dir, "train", quantize.CALIBRATION_IMAGES, seed=0)

    @functools.cached_property
    def onnx_float(self) -> bytes:
        return onnx_float(self.model)


def keras_bf16_model(src: Sources):
    """The export's architecture rebuilt under mixed_bfloat16 (float32 variables, bfloat16 compute)."""
    import keras

    from model import archs

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        twin = archs.build(src.metadata["arch"], int(src.metadata["image_size"]), len(LABELS))
    finally:
        keras.config.set_dtype_policy(previous)
    twin.set_weights(src.model.get_weights())
    return twin


def shipped_int8(src: Sources) -> bytes:
    if engines.INT8_KEY in (src.metadata.get("engines") or {}):
        return engines.read_int8(src.root, src.metadata)
    return quantize.convert_int8(src.model)


def litert(content: bytes, src: Sources):
    return engines.LiteRTEngine(content, threads=src.threads), len(content)


def ort(content: bytes, src: Sources):
    return OrtEngine(content, src.threads), len(content)


# name -> builder(Sources) -> (engine, file bytes or None)
BUILDERS = {
    "keras-fp32": lambda s: (engines.KerasEngine(s.model), None),
    "keras-bf16": lambda s: (engines.KerasEngine(keras_bf16_model(s)), None),
    "litert-fp32": lambda s: litert(tflite_float(s.model), s),
    "litert-int8-full": lambda s: litert(quantize.convert_int8(s.model, s.calibration), s),
    "litert-int8-dynamic": lambda s: litert(shipped_int8(s), s),
    "ort-fp32": lambda s: ort(s.onnx_float, s),
    "ort-int8-dynamic": lambda s: ort(onnx_int8(s.onnx_float), s),
    "ort-int8-static": lambda s: ort(onnx_int8(s.onnx_float, s.calibration), s),
}


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def build(name: str, src: Sources) -> dict:
    """{'name', 'engine', 'bytes', 'build_s'}, or {'name', 'status': 'unavailable: ...'}."""
    started = time.perf_counter()
    try:
        engine, size = BUILDERS[name](src)
    except Exception as exc:  # a missing package or a failed conversion: reported, the run goes on
        return {"name": name, "status": f"unavailable: {one_line(exc)}"}
    return {"name": name, "status": "ok", "engine": engine, "bytes": size,
            "build_s": round(time.perf_counter() - started, 1)}


# --------------------------------------------------------------------------- measurement


def predict(engine, pixels: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([engine.probabilities(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])


def quality(probs: np.ndarray, labels: np.ndarray, reference: np.ndarray | None) -> dict:
    summary = metrics.summarize(metrics.confusion(labels, probs.argmax(-1)))
    result = {"accuracy": summary["accuracy"], "macro_f1": summary["macro_f1"]}
    if reference is not None:
        diff = np.abs(probs - reference)
        result.update(agreement=float((probs.argmax(-1) == reference.argmax(-1)).mean()),
                      max_probability_difference=float(diff.max()),
                      mean_probability_difference=float(diff.mean()))
    return result


def score_all(entries: list[dict], pixels: np.ndarray, labels: np.ndarray, batch: int) -> None:
    """Adds each engine's quality on the whole split (the reference first); an engine that fails to run
    becomes unavailable. This pass is also every engine's warm-up."""
    reference = None
    for entry in sorted(ready(entries), key=lambda e: e["name"] != REFERENCE):
        try:
            probs = predict(entry["engine"], pixels, batch)
        except Exception as exc:
            entry.update(status=f"unavailable: {one_line(exc)}")
            continue
        if entry["name"] == REFERENCE:
            reference = probs
        entry.update(quality(probs, labels, reference))


def time_all(entries: list[dict], pixels: np.ndarray, batch: int, repeats: int) -> None:
    """Adds 'views_per_s' (best of `repeats`) and every pass's seconds, engines taken round-robin."""
    running = ready(entries)
    if not running:
        return
    for entry in running:
        entry["pass_seconds"] = []
    for r in range(repeats):
        for entry in running[r % len(running):] + running[: r % len(running)]:
            entry["engine"].probabilities(pixels[:batch])  # untimed: back into this engine's caches
            started = time.perf_counter()
            predict(entry["engine"], pixels, batch)
            entry["pass_seconds"].append(round(time.perf_counter() - started, 3))
    for entry in running:
        entry["views_per_s"] = len(pixels) / min(entry["pass_seconds"])


def ready(entries: list[dict]) -> list[dict]:
    return [e for e in entries if e["status"] == "ok"]


# --------------------------------------------------------------------------- report


def table(entries: list[dict]) -> str:
    rows = ["| engine | views/s | vs keras-fp32 | accuracy | macro-F1 | agreement | max \\|Δp\\| | mean \\|Δp\\| "
            "| file MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = next((e.get("views_per_s") for e in entries if e["name"] == REFERENCE), None)
    for e in entries:
        if "views_per_s" not in e:
            rows.append(f"| {e['name']} | {e['status']} |" + " |" * 7)
            continue
        cells = [f"{e['views_per_s']:.0f}", f"{e['views_per_s'] / base:.2f}x" if base else "-",
                 _cell(e, "accuracy", ".4f"), _cell(e, "macro_f1", ".4f"), _cell(e, "agreement", ".4f"),
                 _cell(e, "max_probability_difference", ".4f"), _cell(e, "mean_probability_difference", ".5f"),
                 f"{e['bytes'] / 1e6:.1f}" if e.get("bytes") else "-"]
        rows.append(f"| {e['name']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _cell(entry: dict, key: str, spec: str) -> str:
    return format(entry[key], spec) if key in entry else "-"


def versions() -> dict:
    from importlib import metadata

    found = {}
    for package in ("tensorflow", "keras", "ai-edge-litert", "onnxruntime", "tf2onnx", "onnx", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def report(args, src: Sources, entries: list[dict], images: int, timing_images: int) -> dict:
    return {
        "command": " ".join([sys.executable, *sys.argv]),
        "model": args.model, "model_version": src.metadata.get("model_version"),
        "data": args.data, "split": args.split, "images": images, "timing_images": timing_images,
        "batch_size": args.batch_size, "repeats": args.repeats, "threads": args.threads,
        "cpus": os.cpu_count(), "versions": versions(),
        "engines": [{k: v for k, v in e.items() if k != "engine"} for e in entries],
    }


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="shipped", help="an exported model directory, or 'shipped'")
    p.add_argument("--data", default="/tmp/fer-out", help="an ingest output")
    p.add_argument("--split", default="test")
    p.add_argument("--images", type=int, default=None, help="a seeded sample of this many (default: all)")
    p.add_argument("--timing-images", type=int, default=2048, help="images per timed pass (whole batches)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--engines", default=",".join(BUILDERS), help="comma-separated subset of: " + ", ".join(BUILDERS))
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    unknown = set(args.engines.split(",")) - set(BUILDERS)
    if unknown:
        p.error(f"unknown engines {sorted(unknown)}; choose from {list(BUILDERS)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    src = Sources(args.model, args.data, args.threads)
    pixels, labels = load_split(args.data, args.split, args.images)
    if pixels.shape[1] != int(src.metadata["image_size"]):
        sys.exit(f"{args.data} holds {pixels.shape[1]}px images, the model takes {src.metadata['image_size']}px")
    print(f"{len(pixels)} {args.split} images from {args.data}; model {src.metadata.get('model_version')}",
          flush=True)
    entries = []
    for name in args.engines.split(","):
        entries.append(build(name, src))
        print(f"  {name}: {entries[-1]['status']}", flush=True)
    score_all(entries, pixels, labels, args.batch_size)
    batches = max(1, min(len(pixels), args.timing_images) // args.batch_size)
    timing = pixels[: batches * args.batch_size]
    time_all(entries, timing, args.batch_size, args.repeats)
    print(table(entries))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report(args, src, entries, len(pixels), len(timing)), f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
