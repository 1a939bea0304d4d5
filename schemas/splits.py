"""Split names and the smallest evaluation split worth deciding on: shared by ingest (which carves a
fresh split when one is too small) and training (which refuses to select epochs on one)."""

from __future__ import annotations

import math

from schemas.labels import SPLITS  # noqa: F401

MIN_EVAL_IMAGES = 50  # below this, one image moves accuracy by 2 points or more
MIN_EVAL_FRACTION_OF_TRAIN = 0.01  # a large archive deserves more than 50 images of val/test
SMALL_DATA_FRACTION_OF_TRAIN = 0.1  # on a tiny dataset, 10% of train is the most one can ask for


def min_eval_images(n_train: int) -> int:
    """The fewest images a val or test split may hold next to n_train training images: 50, or 1% of
    train for archives past 5,000 images; on datasets too small for 50 (a demo), 10% of train."""
    floor = min(MIN_EVAL_IMAGES, SMALL_DATA_FRACTION_OF_TRAIN * n_train)
    return max(1, math.ceil(max(floor, MIN_EVAL_FRACTION_OF_TRAIN * n_train)))


def eval_split_too_small(n_split: int, n_train: int) -> bool:
    return n_split < min_eval_images(n_train)
