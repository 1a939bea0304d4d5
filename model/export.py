"""Export and load: a SavedModel with serving signatures, a .keras file and metadata.json.

    DIR/export/model.keras          Keras 3 model (load with safe_mode; no pickle)
    DIR/export/saved_model/         signatures: serve (encoded image bytes -> probabilities)
                                                serve_pixels (float pixels -> probabilities)
    DIR/metadata.json               labels, image size, preprocessing, schema, data fingerprint,
                                    weights fingerprint, metrics, command and versions
    DIR/MODEL_CARD.md               intended use, data, recipe, metrics, cross-checks, known limits

A model directory is whole or refused. An export is written into DIR/.export-staging-<id>/ and
committed by renames, metadata.json last (see _commit), so an export killed at any point leaves either
the previous model whole or a directory that load() refuses. The commit replaces only what an earlier
export (or the running training) wrote, and records what it committed in DIR/_train.json
(model/ownership.py); every remove and rename goes through model/gate/. Loading checks that export/model.keras is
the model metadata.json describes (weights fingerprint, input size, classes) and that its labels and
schema are this code's; every problem is a ModelError with one line that says what to do.

The directory's layout, metadata.json and the model card are model/artifact.py's (no TensorFlow there);
reading model.keras back and holding it to metadata.json is model/loading.py's.
"""

from __future__ import annotations

import platform
import uuid

import keras
import numpy as np
import tensorflow as tf

from model import ownership, preprocess, serving, tta
from model.archs import weights_fingerprint
from model.artifact import (EXPORT, INT8_FILE, INT8_KEY, KERAS_FILE, METADATA, RETIRED_PREFIX, STAGING_PREFIX,
                            ModelError, checked_temperature, leftovers, metadata_text, write_file, write_model_card)
from model.config import command_line
from model.files import local_target
from model.loading import load, load_keras
from schemas import LABELS, LABELS_VERSION, SCHEMA_VERSION


def versions() -> dict:
    import cv2

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }


def _serving_module(model: keras.Model, image_size: int, tta_mode: str = "none",
                    temperature: float = 1.0) -> keras.export.ExportArchive:
    """serve: encoded image bytes -> probabilities, with model/preprocess.py's steps (model/serving.py),
    the recommended test-time augmentation and the temperature fitted on val, so a deployed SavedModel is
    the model predict runs. serve_pixels: already preprocessed pixels -> probabilities (same TTA)."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def probabilities(pixels):
        return tta.probabilities(lambda views: model(views, training=False) / temperature, pixels, tta_mode)

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


# =========================================================================== writing


def export(model: keras.Model, model_dir: str, metadata: dict, engine_data: str | None = None) -> dict:
    """Writes export/ and metadata.json for a trained (non-distributed) model, whole or not at all;
    returns the metadata. An exception leaves the previous export and metadata as they were.
    One export at a time per model directory (training exports from the chief only).
    With `engine_data` (an ingest output), export/ also gets the int8 engine file, checked on its val split
    (model/quantize.py)."""
    root = model_dir.rstrip("/")
    image_size = int(model.input_shape[1])
    fingerprint = weights_fingerprint(model)
    metadata = {
        "labels": list(LABELS),
        "labels_version": LABELS_VERSION,
        "schema_version": SCHEMA_VERSION,
        "image_size": image_size,
        "input": "float32 pixels in [0, 255], shape (N, S, S, 1), grayscale",
        "preprocessing": {
            "function": "model.preprocess.preprocess",
            "steps": preprocess.STEPS,
            "serving": "model.serving.preprocess: the same steps in TensorFlow ops (no face crop), then the "
                       "recommended TTA",
        },
        "model_fingerprint": fingerprint,
        "model_version": f"{model.name}-{fingerprint[:12]}",
        "parameters": int(model.count_params()),
        **metadata,
        "versions": versions(),
        "command": command_line(),  # portable: no absolute path of the checkout it ran from
    }
    tf.io.gfile.makedirs(root)
    metadata["test_scoring"] = _carried_test_scoring(root, metadata)
    staging = f"{root}/{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        tf.io.gfile.makedirs(staging)
        _save_keras(model, f"{staging}/{KERAS_FILE}")
        if weights_fingerprint(load_keras(f"{staging}/{KERAS_FILE}")) != fingerprint:
            raise ModelError(f"{staging}/{KERAS_FILE} does not read back as the model just saved; export again")
        _serving_module(model, image_size, metadata.get("recommended_tta", "none"),
                        checked_temperature(metadata, root)).write_out(f"{staging}/saved_model", verbose=False)
        if engine_data:
            metadata["engines"] = _write_engines(model, staging, engine_data)
    except BaseException:
        _remove(staging)
        raise
    _commit(root, staging, metadata)
    _remove_leftovers(root)  # of exports interrupted before this one
    write_model_card(root, metadata)
    return metadata


def _carried_test_scoring(root: str, metadata: dict) -> dict:
    """The test scorings of this model line: those given (the model training started from) and those of
    the metadata.json this export replaces, so that re-exporting never resets the count. An unreadable
    previous metadata.json carries nothing (it is replaced)."""
    from model import test_scoring
    from model.artifact import read_metadata as read_checked_metadata
    from model.errors import UsageError

    records = [test_scoring.read(metadata)]
    try:
        records.append(test_scoring.read(read_checked_metadata(root), f"{root}/{METADATA}"))
    except (ModelError, UsageError):
        pass
    return test_scoring.merge(*records)


def _write_engines(model: keras.Model, staging: str, data_dir: str) -> dict:
    """The faster engines' files beside model.keras; their metadata entries (empty when none passes its check)."""
    from model import quantize

    result = quantize.int8_engine(model, data_dir)
    if result is None:
        return {}
    content, entry = result
    write_file(f"{staging}/{INT8_FILE}", content)
    return {INT8_KEY: entry}


def _commit(root: str, staging: str, metadata: dict) -> None:
    """Puts a complete staging folder in place of DIR/export, then writes metadata.json.

    Local disks rename folders atomically: export/ is moved aside, staging/ becomes export/,
    metadata.json is replaced by a rename, and the old export is removed last. Killed between two
    steps, the directory holds no export/ (refused as missing) or a new model.keras beside the old
    metadata.json (refused: the fingerprints differ). An exception puts the previous export back.

    Object stores (gs://) cannot rename a folder in one step; there metadata.json is deleted first,
    so that the directory is refused as "no metadata.json" until the new export is copied in whole."""
    export_dir = f"{root}/{EXPORT}"
    final = f"{root}/{METADATA}"
    pending = f"{root}/.{METADATA}.{uuid.uuid4().hex[:12]}"
    g = ownership.model_gate(root)
    try:
        ownership.check_export_owned(root)  # a user's files under export/ are never replaced
        write_file(pending, metadata_text(metadata))
    except BaseException:
        _remove(staging)
        _remove(pending)
        raise
    if not _is_local(root):
        g.remove(final)
        g.remove_tree(export_dir)
        _copy_tree(staging, export_dir)
        g.move(pending, final)
        _remove(staging)
        ownership.record(root, adopt=(EXPORT, METADATA), create=True)
        return
    retired = f"{root}/{RETIRED_PREFIX}{uuid.uuid4().hex[:12]}"
    had_export = tf.io.gfile.exists(export_dir)
    try:
        if had_export:
            g.move(export_dir, retired)
        g.move(staging, export_dir)
        g.move(pending, final)
    except BaseException:
        if not tf.io.gfile.exists(staging) and tf.io.gfile.exists(export_dir):
            g.move(export_dir, staging)  # the new export was in place: take it out again
        if had_export and tf.io.gfile.exists(retired):
            g.move(retired, export_dir)
        _remove(staging)
        _remove(pending)
        raise
    _remove(retired)
    ownership.record(root, adopt=(EXPORT, METADATA), create=True)


# --------------------------------------------------------------------------- file helpers


def _is_local(path: str) -> bool:
    return "://" not in path


# The names an export removes on its own in a model directory (or in export/, for main's rebuild).
_TRANSIENT = (STAGING_PREFIX, RETIRED_PREFIX, f".{METADATA}.", ".saved_model-", "saved_model")


def _remove(path: str, root: str | None = None) -> None:
    """Removes a file or folder of the export's own, through the gate: under `root`, or (no root) one
    of the export's transient names (staging, retired export, pending metadata) in its folder."""
    head, name = path.rstrip("/").rsplit("/", 1) if "/" in path else (".", path)
    if root is None and not name.startswith(_TRANSIENT):
        raise ValueError(f"{path} is not one of the export's own transient files")
    g = ownership.model_gate(root or head)
    if tf.io.gfile.isdir(path):
        g.remove_tree(path)
    elif tf.io.gfile.exists(path):
        g.remove(path)


def _copy_tree(src: str, dst: str) -> None:
    for folder, _, files in tf.io.gfile.walk(src):
        target = dst + folder[len(src):]
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(f"{folder}/{name}", f"{target}/{name}", overwrite=True)


def _remove_leftovers(root: str) -> None:
    for path in leftovers(root):
        _remove(path)


def _save_keras(model: keras.Model, path: str) -> None:
    with local_target(path) as local:  # Keras writes .keras files through a local path
        model.save(local)


def main(argv=None) -> None:
    """Rebuilds DIR/export/saved_model from DIR/export/model.keras (the shipped model carries only the
    .keras file to stay small) and DIR/MODEL_CARD.md:  python -m model.export --model-dir model/shipped"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m model.export")
    p.add_argument("--model-dir", required=True)
    args = p.parse_args(argv)
    root = args.model_dir.rstrip("/")
    try:
        model, metadata = load(root)
    except ModelError as exc:
        p.exit(2, f"{p.prog}: error: {exc}\n")
    target = f"{root}/{EXPORT}/saved_model"
    staging = f"{root}/{EXPORT}/.saved_model-{uuid.uuid4().hex[:12]}"
    try:
        _serving_module(model, int(metadata["image_size"]), metadata.get("recommended_tta", "none"),
                        checked_temperature(metadata, root)).write_out(staging, verbose=False)
        _remove(target, root)
        if _is_local(root):
            ownership.model_gate(root).move(staging, target)
        else:
            _copy_tree(staging, target)
    finally:
        _remove(staging, root)
    write_model_card(root, metadata)
    print(f"wrote {target} and MODEL_CARD.md")


if __name__ == "__main__":
    main()
