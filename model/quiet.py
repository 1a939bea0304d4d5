"""TensorFlow imported without its C++ start-up lines, for the `python -m model.*` commands.

TensorFlow's runtime prints start-up lines (CUDA probing, oneDNN notices) straight to stderr whatever
TF_CPP_MIN_LOG_LEVEL says; a command whose refusals are one line on stderr hides them (EMOTION_VERBOSE=1
shows them). beam_pipelines/cli.py does the same for `emotion`.
"""

from __future__ import annotations

import os


def import_tensorflow_quietly() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("EMOTION_VERBOSE"):
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)
