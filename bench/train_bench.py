"""Training throughput, side by side in one run: the tf.data input pipeline alone, then for float32
and for the mixed policy `--mixed-precision auto` picks here (bfloat16 on CPUs with AVX512_BF16 or
AMX), the training step on in-memory tensors and the full job (`emotion train`: input + step +
checkpoints). Precisions alternate, so machine noise hits both alike.

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
from model.train import cpu_has_bfloat16  # noqa: E402


def step_images_per_s(arch: str, policy: str, x, y, steps: int) -> float:
    """Training steps per second x batch on one in-memory batch, under a Keras dtype policy."""
    keras.mixed_precision.set_global_policy(policy)
    model = archs.build(arch, 48, 7)
    opt = keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    for _ in range(3):
        step(x, y)
    t = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    float(step(x, y))
    keras.mixed_precision.set_global_policy("float32")
    return (steps + 1) * int(x.shape[0]) / (time.perf_counter() - t)


def job_images_per_s(args, precision: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "beam_pipelines.cli", "train", "--data", args.data, "--model-dir", tmp,
                        "--arch", args.arch, "--batch-size", str(args.batch_size), "--epochs", "2",
                        "--steps-per-epoch", str(args.steps), "--mixed-precision", precision],
                       check=True, capture_output=True)
        with open(f"{tmp}/history.csv") as f:
            rows = list(csv.DictReader(f))
    return float(rows[-1]["images_per_s"])  # the second epoch: no tracing


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--arch", default="vgg_s")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2, help="alternating float32 / mixed rounds")
    args = p.parse_args()
    files = data.split_files(args.data, "train")
    b = args.batch_size
    mixed = "mixed_bfloat16" if cpu_has_bfloat16() else "float32"

    ds = data.train_dataset(files, 48, b, seed=1)
    it = iter(ds)
    for _ in range(5):
        next(it)
    t = time.perf_counter()
    for _ in range(args.steps * 3):
        next(it)
    input_ips = args.steps * 3 * b / (time.perf_counter() - t)
    x, y = next(it)

    step = {"float32": [], mixed: []}
    job = {"float32": [], mixed: []}
    for _ in range(args.rounds):
        for policy, flag in (("float32", "off"), (mixed, "auto")):
            step[policy].append(step_images_per_s(args.arch, policy, x, y, args.steps))
            job[policy].append(job_images_per_s(args, flag))
    best = {k: max(v) for k, v in step.items()}
    best_job = {k: max(v) for k, v in job.items()}
    print(json.dumps({
        "arch": args.arch, "batch_size": b, "cpu_has_bfloat16": cpu_has_bfloat16(), "auto_policy_on_cpu": mixed,
        "input_pipeline_images_per_s": round(input_ips, 1),
        "train_step_images_per_s": {k: [round(v, 1) for v in vs] for k, vs in step.items()},
        "full_job_images_per_s": {k: [round(v, 1) for v in vs] for k, vs in job.items()},
        "step_mixed_over_float32": round(best[mixed] / best["float32"], 2),
        "job_mixed_over_float32": round(best_job[mixed] / best_job["float32"], 2),
        "input_over_float32_step": round(input_ips / best["float32"], 1),
    }, indent=2))


if __name__ == "__main__":
    main()
