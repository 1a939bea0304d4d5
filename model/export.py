"""Export and load: a SavedModel with serving signatures, a .keras file and metadata.json.

    DIR/export/model.keras          Keras 3 model (load with safe_mode; no pickle)
    DIR/export/saved_model/         signatures: serve (encoded image bytes -> probabilities)
                                                serve_pixels (float pixels -> probabilities)
    DIR/metadata.json               labels, image size, preprocessing, schema, data fingerprint,
                                    metrics, command and versions
    DIR/MODEL_CARD.md               intended use, data, recipe, metrics, cross-checks, known limits

Loading refuses a model whose labels or schema disagree with this code.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

from model import serving, tta
from schemas import LABELS, LABELS_VERSION, SCHEMA_VERSION

METADATA = "metadata.json"


class ModelMismatchError(ValueError):
    """The model on disk was trained for other labels or another schema version."""


def weights_fingerprint(model: keras.Model) -> str:
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


def versions() -> dict:
    import cv2

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }


def _serving_module(model: keras.Model, image_size: int, tta_mode: str = "none") -> keras.export.ExportArchive:
    """serve: encoded image bytes -> probabilities, with model/preprocess.py's steps (model/serving.py)
    and the recommended test-time augmentation, so a deployed SavedModel is the model predict evaluated.
    serve_pixels: already preprocessed pixels -> probabilities (same TTA)."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def probabilities(pixels):
        return tta.probabilities(lambda views: model(views, training=False), pixels, tta_mode)

    archive.add_endpoint(
        name="serve",
        fn=lambda images: {
            "probabilities": probabilities(
                tf.map_fn(lambda data: serving.preprocess(data, image_size), images, fn_output_signature=tf.float32)
            ),
            "labels": tf.constant(list(LABELS)),
        },
        input_signature=[tf.TensorSpec([None], tf.string, name="images")],
    )
    archive.add_endpoint(
        name="serve_pixels",
        fn=lambda pixels: {"probabilities": probabilities(pixels)},
        input_signature=[tf.TensorSpec([None, image_size, image_size, 1], tf.float32, name="pixels")],
    )
    return archive


def export(model: keras.Model, model_dir: str, metadata: dict) -> dict:
    """Writes export/ and metadata.json for a trained (non-distributed) model; returns the metadata."""
    image_size = int(model.input_shape[1])
    export_dir = f"{model_dir.rstrip('/')}/export"
    tf.io.gfile.makedirs(export_dir)
    fingerprint = weights_fingerprint(model)
    # Keras writes .keras files through a local path; copy it so gs:// model dirs work.
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.keras")
        model.save(local)
        tf.io.gfile.copy(local, f"{export_dir}/model.keras", overwrite=True)
    _serving_module(model, image_size, metadata.get("recommended_tta", "none")).write_out(
        f"{export_dir}/saved_model", verbose=False)
    metadata = {
        "labels": list(LABELS),
        "labels_version": LABELS_VERSION,
        "schema_version": SCHEMA_VERSION,
        "image_size": image_size,
        "input": "float32 pixels in [0, 255], shape (N, S, S, 1), grayscale",
        "preprocessing": {
            "function": "model.preprocess.preprocess",
            "steps": "OpenCV decode -> 8-bit grayscale -> optional Haar face crop -> centre square -> resize (INTER_AREA)",
            "serving": "model.serving.preprocess: the same steps in TensorFlow ops (no face crop), then the "
                       "recommended TTA",
        },
        "model_fingerprint": fingerprint,
        "model_version": f"{model.name}-{fingerprint[:12]}",
        "parameters": int(model.count_params()),
        **metadata,
        "versions": versions(),
        "command": " ".join(sys.argv),
    }
    with tf.io.gfile.GFile(f"{model_dir.rstrip('/')}/{METADATA}", "w") as f:
        f.write(json.dumps(metadata, indent=2) + "\n")
    write_model_card(model_dir, metadata)
    return metadata


def write_model_card(model_dir: str, metadata: dict) -> str:
    """DIR/MODEL_CARD.md from the metadata (model/templates/model_card.md.j2); returns its path."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("model", "templates"), autoescape=False,
                             undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)
    per_class = [name for name in ("test", f"test_{metadata.get('recommended_tta')}_tta") if name in metadata.get("metrics", {})]
    card = env.get_template("model_card.md.j2").render(
        m=metadata, imported=metadata.get("training", {}).get("imported_run"), per_class_splits=per_class)
    path = f"{model_dir.rstrip('/')}/MODEL_CARD.md"
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(card)
    return path


def read_metadata(model_dir: str) -> dict:
    path = f"{model_dir.rstrip('/')}/{METADATA}"
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"no {METADATA} in {model_dir}: not an exported model directory")
    with tf.io.gfile.GFile(path) as f:
        metadata = json.load(f)
    check_compatible(metadata, model_dir)
    return metadata


def check_compatible(metadata: dict, where: str = "model") -> None:
    if tuple(metadata.get("labels", ())) != LABELS:
        raise ModelMismatchError(
            f"{where} was trained for labels {metadata.get('labels')}, this code uses {list(LABELS)}"
        )
    if metadata.get("schema_version") != SCHEMA_VERSION:
        raise ModelMismatchError(
            f"{where} has schema version {metadata.get('schema_version')}, this code reads {SCHEMA_VERSION}"
        )


def load(model_dir: str) -> tuple[keras.Model, dict]:
    """(Keras model, metadata) of an exported model directory, after the compatibility check."""
    metadata = read_metadata(model_dir)
    path = f"{model_dir.rstrip('/')}/export/model.keras"
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.keras")
        tf.io.gfile.copy(path, local, overwrite=True)
        model = keras.models.load_model(local, compile=False, safe_mode=True)
    if model.output_shape[-1] != len(LABELS):
        raise ModelMismatchError(f"{model_dir} outputs {model.output_shape[-1]} classes, expected {len(LABELS)}")
    return model, metadata


def main(argv=None) -> None:
    """Rebuilds DIR/export/saved_model from DIR/export/model.keras (the shipped model carries only the
    .keras file to stay small) and DIR/MODEL_CARD.md:  python -m model.export --model-dir model/shipped"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m model.export")
    p.add_argument("--model-dir", required=True)
    args = p.parse_args(argv)
    model, metadata = load(args.model_dir)
    _serving_module(model, int(metadata["image_size"]), metadata.get("recommended_tta", "none")).write_out(
        f"{args.model_dir.rstrip('/')}/export/saved_model", verbose=False
    )
    write_model_card(args.model_dir, metadata)
    print(f"wrote {args.model_dir.rstrip('/')}/export/saved_model and MODEL_CARD.md")


if __name__ == "__main__":
    main()
