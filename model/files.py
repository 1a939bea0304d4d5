"""Keras and matplotlib write through local files; models and plots may live on gs://. One place for
the local-copy dance, for reading a file that may be local or on gs:// (local: the standard library;
gs://: tf.io.gfile, imported only then), and for rendering a matplotlib figure to PNG bytes (Agg, no display)."""

from __future__ import annotations

import contextlib
import glob as _glob
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local copy of `path` for as long as the block runs (gs:// through tf.io.gfile; a local file by
    the standard library, so that a Keras process without TensorFlow, the portable trainer's, can use it)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path.rstrip("/")) or "file")
        if _is_local(path):
            shutil.copyfile(path, local)
        else:
            import tensorflow as tf

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


def _is_local(path: str) -> bool:
    return "://" not in path


def exists(path: str) -> bool:
    """Whether a file or folder is at `path` (local: links followed; gs://: an object or a prefix)."""
    if _is_local(path):
        return os.path.exists(path)
    import tensorflow as tf

    return tf.io.gfile.exists(path)


def glob(pattern: str) -> list[str]:
    """The paths matching `pattern` (local or gs://), sorted."""
    if _is_local(pattern):
        return sorted(_glob.glob(pattern))
    import tensorflow as tf

    return sorted(tf.io.gfile.glob(pattern))


def _read_text(path: str) -> str:
    """A file's content as UTF-8 text (strict: a byte that is not UTF-8 is a UnicodeDecodeError)."""
    if _is_local(path):
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        return f.read()


def read_json_object(path: str, what: str) -> dict:
    """The JSON object in `path` (local or gs://); ValueError with one line when the file is not valid
    JSON or holds something other than an object (`what` names what it should be)."""
    try:
        value = json.loads(_read_text(path))
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
