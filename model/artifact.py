"""An exported model directory: its layout, metadata.json (read and checked, or written) and the model card.

    DIR/metadata.json               METADATA: labels, image size, preprocessing, schema, data fingerprint,
                                    weights fingerprint, metrics, engines, calibration, command and versions
    DIR/export/                     EXPORT: model.keras (KERAS_FILE), model_int8.tflite (INT8_FILE),
                                    saved_model/ (model/export.py writes them, model/loading.py and
                                    model/engines.py read them)
    DIR/MODEL_CARD.md               MODEL_CARD, rendered from the metadata (model/templates/model_card.md.j2)
    DIR/.export-staging-<id>/ ...   what an interrupted export leaves (LEFTOVER_PATTERNS)

No TensorFlow and no Keras here: the LiteRT engine and the portable trainer read a model directory without
either. Local files are read with the standard library, gs:// ones through model/files.py (tf.io.gfile, only
then); every write goes through the model directory's gate (model/ownership.py).

metadata.json is read back from disk, so it is untrusted input: `read_metadata` checks what needs no
model.keras (labels, schema, fingerprint and image size present, a safe model_version, a known TTA, a
temperature in range) and refuses anything else as a ModelError with one line that says what to do.
"""

from __future__ import annotations

import json

from model import files, ownership
from model.gate import name_problem
from schemas import LABELS, SCHEMA_VERSION, TTA_MODES

METADATA = "metadata.json"
EXPORT = "export"
KERAS_FILE = "model.keras"
INT8_FILE = "model_int8.tflite"
INT8_KEY = "litert_int8"  # its entry in metadata["engines"]
MODEL_CARD = "MODEL_CARD.md"
STAGING_PREFIX = ".export-staging-"  # a new export being written
RETIRED_PREFIX = ".export-old-"  # the previous export, between the two commit renames
# What interrupted exports leave in a model directory: staging, the retired export, a pending metadata.json.
LEFTOVER_PATTERNS = (f"{STAGING_PREFIX}*", f"{RETIRED_PREFIX}*", f".{METADATA}.*")
TEMPERATURE_RANGE = (0.05, 20.0)  # a fitted temperature outside it is a hand-edited metadata file


class ModelError(ValueError):
    """A model directory that cannot be used as it is; the message is one line that says what to do."""


class ModelMismatchError(ModelError):
    """The model on disk was made for other labels or another schema version, or its files disagree
    (model.keras is not the model metadata.json describes)."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """metadata.json or export/model.keras is missing: not an exported model, or an interrupted export."""


class EngineError(ValueError):
    """An engine that cannot run this export (missing or altered file); one line for the user."""


# =========================================================================== reading and checking


def read_metadata(model_dir: str) -> dict:
    """metadata.json of an exported model directory, after every check that needs no model.keras read
    (model/loading.py's `load` adds those that do)."""
    root = model_dir.rstrip("/")
    path = f"{root}/{METADATA}"
    if not files.exists(path):
        if not files.exists(root):
            raise ModelNotFoundError(f"model directory {root} does not exist")
        raise ModelNotFoundError(f"no {METADATA} in {root}{interrupted(root)}: not an exported model "
                                 f"directory; export or re-export it")
    try:
        metadata = files.read_json_object(path, "a model's metadata")
    except ValueError as exc:
        raise ModelError(f"{exc}: re-export the model") from None
    except OSError as exc:  # permissions, a folder in its place: a read refused, not a write
        raise ModelError(f"{path}: cannot read it ({exc.strerror or exc}): make it readable, or re-export "
                         f"the model") from None
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
    if metadata.get("recommended_tta", "none") not in TTA_MODES:
        raise ModelMismatchError(f"{path}: recommended_tta {str(metadata.get('recommended_tta'))[:40]!r} is none of "
                                 f"{', '.join(TTA_MODES)}: a hand-edited metadata file; re-export the model")
    if not 8 <= metadata["image_size"] <= 512:
        raise ModelMismatchError(f"{path}: image_size {metadata['image_size']} is outside 8-512: a hand-edited "
                                 f"metadata file; re-export the model")
    checked_temperature(metadata, root)
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


def fitted_temperature(metadata: dict) -> float:
    """The temperature an export's engines divide logits by (1.0: none was fitted). Read from disk, so
    checked: a number within TEMPERATURE_RANGE, or an EngineError."""
    calibration = metadata.get("calibration")
    if calibration is None:
        return 1.0
    value = calibration.get("temperature") if isinstance(calibration, dict) else None
    low, high = TEMPERATURE_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise EngineError(f"metadata.json: calibration.temperature {str(value)[:40]!r} is not a number in "
                          f"{low}-{high}: a hand-edited metadata file; re-export the model")
    return float(value)


def checked_temperature(metadata: dict, where: str) -> float:
    """fitted_temperature, a hand-edited one refused as a ModelMismatchError naming the directory `where`."""
    try:
        return fitted_temperature(metadata)
    except EngineError as exc:
        raise ModelMismatchError(f"{where}/{exc}") from None


def leftovers(root: str) -> list[str]:
    """What interrupted exports left in a model directory."""
    return sorted(p for pattern in LEFTOVER_PATTERNS for p in files.glob(f"{root}/{pattern}"))


def interrupted(root: str) -> str:
    return " (an export into it was interrupted)" if leftovers(root) else ""


# =========================================================================== writing


def write_file(path: str, text: str | bytes) -> None:
    """Writes text (or bytes) through the model directory's gate: locally always to a fresh temporary name
    beside it, renamed over it (a link there is replaced, never written through); gs://, one upload."""
    head = path.rsplit("/", 1)[0] if "/" in path else "."
    ownership.model_gate(head).write_bytes(path, text.encode() if isinstance(text, str) else text)


def metadata_text(metadata: dict) -> str:
    """metadata.json's content, as every writer of it writes it."""
    return json.dumps(metadata, indent=2) + "\n"


def write_metadata(model_dir: str, metadata: dict) -> None:
    """Replaces DIR/metadata.json in one step (a rename), e.g. to add metrics; the model is unchanged."""
    write_file(f"{model_dir.rstrip('/')}/{METADATA}", metadata_text(metadata))
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
    path = f"{model_dir.rstrip('/')}/{MODEL_CARD}"
    write_file(path, card)
    ownership.record(model_dir, adopt=(MODEL_CARD,))
    return path
