"""Loading an exported model: export/model.keras read back (Keras 3, safe_mode, no pickle) and held to the
metadata.json beside it (model/artifact.py): the same weights fingerprint, input size and classes. Every
problem is a ModelError with one line that says what to do. No TensorFlow for a local model (gs:// reads
go through tf.io.gfile): both training runners, the JAX one included, load a start model here."""

from __future__ import annotations

import keras

from model.archs import weights_fingerprint
from model.artifact import (EXPORT, KERAS_FILE, METADATA, ModelError, ModelMismatchError, ModelNotFoundError,
                            interrupted)
from model.artifact import read_metadata as read_checked_metadata
from model import files
from schemas import LABELS


def load(model_dir: str) -> tuple[keras.Model, dict]:
    """(Keras model, metadata) of an exported model directory, after every check; ModelError if any fails."""
    root = model_dir.rstrip("/")
    metadata = read_checked_metadata(root)
    path = f"{root}/{EXPORT}/{KERAS_FILE}"
    if not files.exists(path):
        raise ModelNotFoundError(f"{path} is missing{interrupted(root)}: re-export the model")
    model = load_keras(path)
    check_model(model, metadata, root)
    return model, metadata


def read_metadata(model_dir: str, verify: bool = True) -> dict:
    """metadata.json of an exported model directory, after the checks load() makes (verify=False:
    only those that need no model.keras read, model/artifact.py's read_metadata)."""
    if verify:
        return load(model_dir)[1]
    return read_checked_metadata(model_dir)


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


def load_keras(path: str) -> keras.Model:
    """A .keras file (local or gs://) as a model, unchecked; anything unreadable is one ModelError."""
    import zipfile

    local = None
    try:
        with files.local_copy(path) as local:  # Keras reads .keras files through a local path
            if not zipfile.is_zipfile(local):
                raise ValueError("not a .keras zip archive")
            return keras.models.load_model(local, compile=False, safe_mode=True)
    except Exception as exc:  # a truncated zip, a file from another Keras, a non-model: all one answer
        message = str(exc).replace(local, path) if local else str(exc)
        reason = (message.strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"{path} cannot be read as a Keras model ({reason}): a damaged or partly copied "
                         f"export; re-export it") from None
