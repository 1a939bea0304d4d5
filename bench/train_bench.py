"""Training throughput, side by side in one run: the tf.data input pipeline alone, the training
step on in-memory tensors, and the full job (`emotion train`, input + step + checkpoints).

    PYTHONPATH=bench python bench/train_bench.py --data /tmp/fer-ingest --arch vgg_s --batch-size 128 --steps 40
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from model import archs, data  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--arch", default="vgg_s")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args()
    files = data.split_files(args.data, "train")
    b = args.batch_size

    ds = data.train_dataset(files, 48, b, seed=1)
    it = iter(ds)
    for _ in range(5):
        next(it)
    t = time.perf_counter()
    for _ in range(args.steps * 3):
        next(it)
    input_ips = args.steps * 3 * b / (time.perf_counter() - t)

    model = archs.build(args.arch, 48, 7)
    opt = keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)
    x, y = next(it)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for _ in range(3):
        step(x, y)
    t = time.perf_counter()
    for _ in range(args.steps):
        step(x, y)
    float(step(x, y))
    step_ips = (args.steps + 1) * b / (time.perf_counter() - t)

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "beam_pipelines.cli", "train", "--data", args.data, "--model-dir", tmp,
                        "--arch", args.arch, "--batch-size", str(b), "--epochs", "2", "--steps-per-epoch",
                        str(args.steps)], check=True, capture_output=True)
        with open(f"{tmp}/history.csv") as f:
            rows = list(csv.DictReader(f))
        job_ips = float(rows[-1]["images_per_s"])  # the second epoch: no tracing
    print(json.dumps({
        "arch": args.arch, "batch_size": b,
        "input_pipeline_images_per_s": round(input_ips, 1),
        "train_step_in_memory_images_per_s": round(step_ips, 1),
        "full_job_images_per_s": round(job_ips, 1),
        "full_job_over_step": round(job_ips / step_ips, 2),
        "input_over_step": round(input_ips / step_ips, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
