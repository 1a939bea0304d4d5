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
"""

from __future__ import annotations

import json
import platform
import uuid

import keras
import numpy as np
import tensorflow as tf

from model.gate import name_problem
from model import ownership, preprocess, serving, tta
from model.archs import weights_fingerprint
from model.config import command_line
from model.files import local_copy, local_target, read_json_object
from schemas import LABELS, LABELS_VERSION, SCHEMA_VERSION

METADATA = "metadata.json"
EXPORT = "export"
KERAS_FILE = "model.keras"
STAGING_PREFIX = ".export-staging-"  # a new export being written
RETIRED_PREFIX = ".export-old-"  # the previous export, between the two commit renames


class ModelError(ValueError):
    """A model directory that cannot be used as it is; the message is one line that says what to do."""


class ModelMismatchError(ModelError):
    """The model on disk was made for other labels or another schema version, or its files disagree
    (model.keras is not the model metadata.json describes)."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """metadata.json or export/model.keras is missing: not an exported model, or an interrupted export."""


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
        if weights_fingerprint(_load_keras(f"{staging}/{KERAS_FILE}")) != fingerprint:
            raise ModelError(f"{staging}/{KERAS_FILE} does not read back as the model just saved; export again")
        _serving_module(model, image_size, metadata.get("recommended_tta", "none"),
                        _temperature(metadata, root)).write_out(f"{staging}/saved_model", verbose=False)
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
    from model.errors import UsageError

    records = [test_scoring.read(metadata)]
    try:
        records.append(test_scoring.read(_read_metadata(root), f"{root}/{METADATA}"))
    except (ModelError, UsageError):
        pass
    return test_scoring.merge(*records)


def _temperature(metadata: dict, where: str) -> float:
    """metadata's fitted temperature (model/engines.py), a hand-edited one refused as a ModelMismatchError."""
    from model.engines import EngineError, fitted_temperature

    try:
        return fitted_temperature(metadata)
    except EngineError as exc:
        raise ModelMismatchError(f"{where}/{exc}") from None


def _write_engines(model: keras.Model, staging: str, data_dir: str) -> dict:
    """The faster engines' files beside model.keras; their metadata entries (empty when none passes its check)."""
    from model import quantize
    from model.engines import INT8_FILE, INT8_KEY

    result = quantize.int8_engine(model, data_dir)
    if result is None:
        return {}
    content, entry = result
    _write_file(f"{staging}/{INT8_FILE}", content)
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
        _write_file(pending, json.dumps(metadata, indent=2) + "\n")
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


def write_metadata(model_dir: str, metadata: dict) -> None:
    """Replaces DIR/metadata.json in one step (a rename), e.g. to add metrics; the model is unchanged."""
    _write_file(f"{model_dir.rstrip('/')}/{METADATA}", json.dumps(metadata, indent=2) + "\n", atomic=True)
    ownership.record(model_dir, adopt=(METADATA,))


def write_model_card(model_dir: str, metadata: dict) -> str:
    """DIR/MODEL_CARD.md from the metadata (model/templates/model_card.md.j2); returns its path."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("model", "templates"), autoescape=False,
                             undefined=jinja2.ChainableUndefined, keep_trailing_newline=True)
    mode = metadata.get("recommended_tta", "none")
    per_class = [name for name in (f"val{'' if mode == 'none' else f'_{mode}_tta'}",
                                   f"test{'' if mode == 'none' else f'_{mode}_tta'}")
                 if name in metadata.get("metrics", {})]
    card = env.get_template("model_card.md.j2").render(
        m=metadata, imported=metadata.get("training", {}).get("imported_run"), per_class_splits=per_class,
        test_scoring=metadata.get("test_scoring") or {"count": 0, "events": []})
    path = f"{model_dir.rstrip('/')}/MODEL_CARD.md"
    _write_file(path, card, atomic=True)
    ownership.record(model_dir, adopt=("MODEL_CARD.md",))
    return path


# --------------------------------------------------------------------------- file helpers


def _is_local(path: str) -> bool:
    return "://" not in path


def _write_file(path: str, text: str | bytes, atomic: bool = False) -> None:
    """Writes text (or bytes) through the gate: locally always to a fresh temporary name beside it,
    renamed over it (a link there is replaced, never written through); gs://, one upload."""
    head = path.rsplit("/", 1)[0] if "/" in path else "."
    ownership.model_gate(head).write_bytes(path, text.encode() if isinstance(text, str) else text)


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


def _leftovers(root: str) -> list[str]:
    """What interrupted exports left in a model directory."""
    patterns = (f"{STAGING_PREFIX}*", f"{RETIRED_PREFIX}*", f".{METADATA}.*")
    return sorted(p for pattern in patterns for p in tf.io.gfile.glob(f"{root}/{pattern}"))


def _remove_leftovers(root: str) -> None:
    for path in _leftovers(root):
        _remove(path)


def _save_keras(model: keras.Model, path: str) -> None:
    with local_target(path) as local:  # Keras writes .keras files through a local path
        model.save(local)


def _load_keras(path: str) -> keras.Model:
    import zipfile

    local = None
    try:
        with local_copy(path) as local:  # Keras reads .keras files through a local path
            if not zipfile.is_zipfile(local):
                raise ValueError("not a .keras zip archive")
            return keras.models.load_model(local, compile=False, safe_mode=True)
    except Exception as exc:  # a truncated zip, a file from another Keras, a non-model: all one answer
        message = str(exc).replace(local, path) if local else str(exc)
        reason = (message.strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"{path} cannot be read as a Keras model ({reason}): a damaged or partly copied "
                         f"export; re-export it") from None


# =========================================================================== reading and checking


def read_metadata(model_dir: str, verify: bool = True) -> dict:
    """metadata.json of an exported model directory, after the checks load() makes (verify=False:
    only those that need no model.keras read: metadata present and readable, labels, schema)."""
    if verify:
        return load(model_dir)[1]
    return _read_metadata(model_dir.rstrip("/"))


def _interrupted(root: str) -> str:
    return " (an export into it was interrupted)" if _leftovers(root) else ""


def _read_metadata(root: str) -> dict:
    path = f"{root}/{METADATA}"
    if not tf.io.gfile.exists(path):
        if not tf.io.gfile.exists(root):
            raise ModelNotFoundError(f"model directory {root} does not exist")
        raise ModelNotFoundError(f"no {METADATA} in {root}{_interrupted(root)}: not an exported model "
                                 f"directory; export or re-export it")
    try:
        metadata = read_json_object(path, "a model's metadata")
    except ValueError as exc:
        raise ModelError(f"{exc}: re-export the model") from None
    check_compatible(metadata, root)
    for key, kind in (("model_fingerprint", str), ("image_size", int)):
        if not isinstance(metadata.get(key), kind):
            raise ModelMismatchError(f"{path} has no valid {key}: a hand-edited or foreign metadata file; "
                                     f"re-export the model")
    # Read back from disk, so untrusted: the version names a table partition, the TTA a code path.
    if "model_version" in metadata and name_problem(metadata["model_version"]):
        raise ModelMismatchError(f"{path}: model_version {str(metadata['model_version'])[:60]!r} is not a safe name "
                                 f"({name_problem(metadata['model_version'])}): a hand-edited metadata file; "
                                 f"re-export the model")
    if metadata.get("recommended_tta", "none") not in tta.MODES:
        raise ModelMismatchError(f"{path}: recommended_tta {str(metadata.get('recommended_tta'))[:40]!r} is none of "
                                 f"{', '.join(tta.MODES)}: a hand-edited metadata file; re-export the model")
    if not 8 <= metadata["image_size"] <= 512:
        raise ModelMismatchError(f"{path}: image_size {metadata['image_size']} is outside 8-512: a hand-edited "
                                 f"metadata file; re-export the model")
    _temperature(metadata, root)
    return metadata


def check_compatible(metadata: dict, where: str = "model") -> None:
    if tuple(metadata.get("labels", ())) != LABELS:
        raise ModelMismatchError(
            f"{where} was trained for labels {metadata.get('labels')}, this code uses {list(LABELS)}: "
            f"use a model trained on these labels"
        )
    if metadata.get("schema_version") != SCHEMA_VERSION:
        raise ModelMismatchError(
            f"{where} has schema version {metadata.get('schema_version')}, this code reads {SCHEMA_VERSION}: "
            f"use a model exported by this version"
        )


def check_model(model: keras.Model, metadata: dict, model_dir: str = "model") -> None:
    """model.keras is the model metadata.json describes: same weights, input size and classes."""
    root = model_dir.rstrip("/")
    keras_path, metadata_path = f"{root}/{EXPORT}/{KERAS_FILE}", f"{root}/{METADATA}"
    stored, actual = metadata["model_fingerprint"], weights_fingerprint(model)
    if stored != actual:
        raise ModelMismatchError(
            f"{keras_path} does not match {metadata_path} (fingerprint {actual[:12]} vs {stored[:12]}): "
            f"an interrupted or hand-edited export; re-export it")
    size = int(metadata["image_size"])
    shape = tuple(model.input_shape[1:]) if isinstance(model.input_shape, tuple) else None
    if shape != (size, size, 1):
        raise ModelMismatchError(
            f"{keras_path} takes inputs of shape {shape}, {metadata_path} says image_size {size}: "
            f"a hand-edited export; re-export it")
    if model.output_shape[-1] != len(LABELS):
        raise ModelMismatchError(f"{keras_path} outputs {model.output_shape[-1]} classes, expected {len(LABELS)}: "
                                 f"re-export it")


def load(model_dir: str) -> tuple[keras.Model, dict]:
    """(Keras model, metadata) of an exported model directory, after every check; ModelError if any fails."""
    root = model_dir.rstrip("/")
    metadata = _read_metadata(root)
    path = f"{root}/{EXPORT}/{KERAS_FILE}"
    if not tf.io.gfile.exists(path):
        raise ModelNotFoundError(f"{path} is missing{_interrupted(root)}: re-export the model")
    model = _load_keras(path)
    check_model(model, metadata, root)
    return model, metadata


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
                        _temperature(metadata, root)).write_out(staging, verbose=False)
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
