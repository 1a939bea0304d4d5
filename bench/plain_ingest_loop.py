"""The baseline for bench/ingest_bench.py: a plain single-process loop doing the core work of
ingest (cv2 decode -> tf.train.Example -> TFRecordWriter per split), with no dedupe, no stats
and no dead-letter handling.

    python bench/plain_ingest_loop.py --input /tmp/fer2013 --output /tmp/plain-out
"""

import argparse
import os

import cv2
import numpy as np
import tensorflow as tf

from schemas import LABEL_TO_INDEX, canonical_label, canonical_split


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    args = p.parse_args()
    os.makedirs(args.output, exist_ok=True)
    writers = {}
    n = 0
    for dirpath, _, files in sorted(os.walk(args.input)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            split_dir, class_dir = path.split("/")[-3], path.split("/")[-2]
            split, label = canonical_split(split_dir), canonical_label(class_dir)
            with open(path, "rb") as f:
                data = f.read()
            gray = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            if gray is None or split is None or label is None:
                continue
            if gray.shape != (48, 48):
                gray = cv2.resize(gray, (48, 48), interpolation=cv2.INTER_AREA)
            example = tf.train.Example(features=tf.train.Features(feature={
                "image/raw": tf.train.Feature(bytes_list=tf.train.BytesList(value=[gray.tobytes()])),
                "label/index": tf.train.Feature(int64_list=tf.train.Int64List(value=[LABEL_TO_INDEX[label]])),
                "label/name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[label.encode()])),
                "source/uri": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode()])),
            }))
            if split not in writers:
                writers[split] = tf.io.TFRecordWriter(os.path.join(args.output, f"{split}.tfrecord"))
            writers[split].write(example.SerializeToString())
            n += 1
    for w in writers.values():
        w.close()
    print(f"wrote {n} examples")


if __name__ == "__main__":
    main()
