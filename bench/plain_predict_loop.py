"""The baseline predict is measured against: one plain process that reads every image with OpenCV,
preprocesses it with the same function, and calls the model in batches with the same test-time
augmentation, writing the probabilities to one .npy file. No Beam, no dead letter, no evaluation.

    python bench/plain_predict_loop.py --input /tmp/fer2013/test --output /tmp/plain.npy [--tta flip] [--engine litert]

--engine keras (the default here) is the plain Keras float32 process the README's bars compare with;
--engine litert runs the export's int8 file, the same engine as emotion predict's default.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from model.preprocess import PreprocessError, preprocess  # noqa: E402  (before cv2: it sets the pixel ceiling)
from schemas import TTA_MODES  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--model", default="shipped")
    p.add_argument("--tta", default="flip", choices=TTA_MODES)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--engine", default="keras", choices=["keras", "litert"])
    args = p.parse_args()
    started = time.perf_counter()

    from model import engines

    engine, metadata = engines.load(args.model, args.engine, args.tta)
    size = int(metadata["image_size"])

    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(args.input) for f in files)
    outputs, batch = [], []
    for i, path in enumerate(paths):
        with open(path, "rb") as f:
            try:
                pixels, _ = preprocess(f.read(), size, False, as_float=True)
                batch.append(pixels)
            except PreprocessError:
                pass
        if len(batch) == args.batch_size or (i == len(paths) - 1 and batch):
            outputs.append(engine.probabilities(np.stack(batch)[..., None]))
            batch = []
    np.save(args.output, np.concatenate(outputs))
    print(f"{sum(len(o) for o in outputs)} images in {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
