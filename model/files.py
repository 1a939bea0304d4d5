"""Keras and matplotlib write through local files; models and plots may live on gs://. One place for
the local-copy dance, and for rendering a matplotlib figure to PNG bytes (Agg, no display)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local copy of `path` (local or gs://, through tf.io.gfile) for as long as the block runs."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path.rstrip("/")) or "file")
        tf.io.gfile.copy(path, local, overwrite=True)
        yield local


@contextlib.contextmanager
def local_target(path: str) -> Iterator[str]:
    """A local path to write; copied to `path` (local or gs://) when the block ends without error."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path.rstrip("/")) or "file")
        yield local
        tf.io.gfile.copy(local, path, overwrite=True)


def read_json_object(path: str, what: str) -> dict:
    """The JSON object in `path` (local or gs://); ValueError with one line when the file is not valid
    JSON or holds something other than an object (`what` names what it should be)."""
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path) as f:
            value = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not {what} (a JSON object)")
    return value


def pyplot():
    """matplotlib.pyplot on the Agg backend (workers and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed (pyplot keeps every open figure alive)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()
