"""The export's int8 engine file: TensorFlow's TFLite converter, checked against the float model on val
before it is shipped.

    python -m model.quantize --model-dir DIR --data /tmp/fer-out                  # add it to an existing export
    python -m model.quantize --model-dir DIR --data /tmp/fer-out --full-integer   # the full-integer file instead

Training's export calls `int8_engine` itself, dynamic-range. Dynamic range: weights are int8 (per channel);
activations are quantized per batch at run time (XNNPACK's dynamically quantized kernels), so no calibration
set is needed and no activation range can be mis-estimated. Full integer (--full-integer): activations too,
their ranges calibrated on CALIBRATION_IMAGES train images (seeded); faster on CPUs with VNNI, but a range
calibrated on a sample can clip what the sample did not hold. Either way the input and output stay float32,
so the file takes the same [0, 255] pixels as the Keras model and returns its logits.

Every file is checked the same way before it is kept: the float and the int8 model run on the val split
(never test), one view; a file whose argmax agrees with the float model's on fewer than AGREEMENT_FLOOR of
the images, or whose probabilities differ by more than PROBABILITY_TOLERANCE anywhere, is not kept (the
contract is model/engines.py's). Measured for the shipped model: bench/int8_modes.py, docs/model-line.md.

`python -m model.quantize` writes only through the gate (model/gate: a new file replaces a link, never
writes through one; nothing outside the model directory) and holds the directory's _train.lock while it
writes, so it never races a training or an export into the same directory.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from model.artifact import EXPORT, INT8_FILE
from model.engines import AGREEMENT_FLOOR, PROBABILITY_TOLERANCE

log = logging.getLogger("emotion")

CALIBRATION_IMAGES = 512  # train images a full-integer file's activation ranges are calibrated on
MODES = ("dynamic-range", "full-integer")
_DESCRIPTIONS = {
    "dynamic-range": "dynamic-range int8: per-channel int8 weights, activations quantized per batch; "
                     "float32 input and output",
    "full-integer": "full-integer int8: per-channel int8 weights, int8 activations with ranges calibrated on "
                    f"{CALIBRATION_IMAGES} train images (seed 0); float32 input and output",
}


def split_pixels(data_dir: str, split: str, limit: int | None = None, seed: int = 0) -> np.ndarray:
    """Float pixels of a split of an ingest output; with `limit`, a seeded random sample of that many."""
    from model import data

    stats = data.read_stats(data_dir)
    size = int(stats["image_size"])
    batches = [b["pixels"].numpy() for b in data.eval_dataset(data.split_files(data_dir, split), size)]
    pixels = np.concatenate(batches)
    if limit and len(pixels) > limit:
        pixels = pixels[np.sort(np.random.default_rng(seed).choice(len(pixels), limit, replace=False))]
    return pixels.astype(np.float32)


def convert_int8(model, calibration: np.ndarray | None = None) -> bytes:
    """The Keras model as an int8 TFLite flatbuffer with float32 input and output: dynamic-range
    quantization, or full-integer with activation ranges calibrated on `calibration` (train pixels)."""
    import tempfile

    import keras
    import tensorflow as tf

    size = int(model.input_shape[1])
    # Through a SavedModel: the converter freezes its variables (a bare concrete function keeps them as
    # resource reads that the calibrator cannot run).
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda pixels: model(pixels, training=False),
                         input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32, name="pixels")])
    with tempfile.TemporaryDirectory() as tmp:
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if calibration is not None:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
        return converter.convert()


def agreement(model, content: bytes, pixels: np.ndarray) -> dict:
    """How the int8 file agrees with the float model on `pixels` (single view)."""
    from model.engines import KerasEngine, LiteRTEngine

    float_probs = np.concatenate([KerasEngine(model).probabilities(pixels[i : i + 256])
                                  for i in range(0, len(pixels), 256)])
    int8_probs = np.concatenate([LiteRTEngine(content).probabilities(pixels[i : i + 256])
                                 for i in range(0, len(pixels), 256)])
    diff = np.abs(float_probs - int8_probs)
    return {"images": int(len(pixels)),
            "argmax_agreement": float((float_probs.argmax(-1) == int8_probs.argmax(-1)).mean()),
            "max_probability_difference": float(diff.max()),
            "mean_probability_difference": float(diff.mean())}


def int8_engine(model, data_dir: str, mode: str = "dynamic-range") -> tuple[bytes, dict] | None:
    """(file content, metadata entry) for a trained model, or None when the int8 file disagrees with the
    float model on val (below AGREEMENT_FLOOR or beyond PROBABILITY_TOLERANCE): the export then offers the
    keras engine only. Full integer calibrates on train images, never on val or test."""
    calibration = split_pixels(data_dir, "train", CALIBRATION_IMAGES, seed=0) if mode == "full-integer" else None
    content = convert_int8(model, calibration)
    check = agreement(model, content, split_pixels(data_dir, "val"))
    entry = {"file": f"{EXPORT}/{INT8_FILE}", "sha256": hashlib.sha256(content).hexdigest(),
             "bytes": len(content), "runtime": "LiteRT (ai-edge-litert), XNNPACK",
             "mode": mode, "quantization": _DESCRIPTIONS[mode],
             "check": {"split": "val", "tta": "none", "floor": AGREEMENT_FLOOR, "tolerance": PROBABILITY_TOLERANCE,
                       **check}}
    if check["argmax_agreement"] < AGREEMENT_FLOOR or check["max_probability_difference"] > PROBABILITY_TOLERANCE:
        log.warning("int8 engine agrees with the float model on %.2f%% of val (floor %.0f%%), max probability "
                    "difference %.3f (tolerance %.2f): not exported", 100 * check["argmax_agreement"],
                    100 * AGREEMENT_FLOOR, check["max_probability_difference"], PROBABILITY_TOLERANCE)
        return None
    return content, entry


def main(argv=None) -> None:
    """Adds export/model_int8.tflite and its metadata entry to an existing export (e.g. the shipped model)."""
    import argparse

    from model import ownership, resolve_model_dir
    from model.errors import UsageError
    from model.gate import RootLock, new_id
    from model.quiet import import_tensorflow_quietly

    p = argparse.ArgumentParser(prog="python -m model.quantize", description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data", required=True,
                   help="ingest output: the check runs on its val split (and --full-integer calibrates on train)")
    p.add_argument("--full-integer", action="store_true",
                   help=f"quantize activations too, calibrated on {CALIBRATION_IMAGES} train images (default: "
                        f"dynamic range, no calibration)")
    args = p.parse_args(argv)
    root = resolve_model_dir(args.model_dir).rstrip("/")
    import_tensorflow_quietly()
    lock = RootLock(root, new_id("quantize"), flag="--model-dir", name=ownership.LOCK)
    try:
        lock.acquire()  # a training or an export into this directory now: one line, nothing written
        try:
            entry = _add_engine(root, args.data, "full-integer" if args.full_integer else "dynamic-range")
        finally:
            lock.release()
    except (UsageError, ValueError) as exc:  # ModelError is a ValueError; PathRefused a UsageError
        p.exit(2, f"{p.prog}: error: {exc}\n")
    if entry is None:
        p.exit(1, f"{p.prog}: the int8 file disagrees with the float model on val; nothing written\n")
    print(f"wrote {root}/{EXPORT}/{entry['file'].rsplit('/', 1)[1]} ({entry['bytes']:,} bytes, {entry['mode']}); "
          f"val agreement {entry['check']['argmax_agreement']:.4f}, max probability difference "
          f"{entry['check']['max_probability_difference']:.3f}")


def _add_engine(root: str, data_dir: str, mode: str) -> dict | None:
    """Under the directory's lock: the int8 file written through the gate, then metadata.json and the card."""
    from model import ownership
    from model.artifact import INT8_KEY, METADATA, MODEL_CARD, write_metadata, write_model_card
    from model.loading import load

    model, metadata = load(root)
    _check_replaced_owned(root, (f"{EXPORT}/{INT8_FILE}", METADATA, MODEL_CARD))
    result = int8_engine(model, data_dir, mode)
    if result is None:
        return None
    content, entry = result
    ownership.model_gate(root).write_bytes(f"{root}/{EXPORT}/{INT8_FILE}", content)
    metadata["engines"] = {**(metadata.get("engines") or {}), INT8_KEY: entry}
    write_metadata(root, metadata)
    write_model_card(root, metadata)
    ownership.record(root, adopt=(f"{EXPORT}/{INT8_FILE}",))
    return entry


def _check_replaced_owned(root: str, replaced: tuple[str, ...]) -> None:
    """The files this command replaces are an export's (a user's file under those names is never
    replaced; other files beside them, such as a packaged model's export/.gitignore, are not its concern)."""
    from model import ownership
    from model.errors import UsageError

    present = set(ownership.present(root, replaced))
    foreign = sorted(present - ownership.owned(root, ownership.read_manifest(root)))
    if foreign:
        raise UsageError(f"--model-dir {root} holds {', '.join(foreign)}, which no training or export wrote: "
                         f"move it away, or choose another --model-dir")


if __name__ == "__main__":
    main()
