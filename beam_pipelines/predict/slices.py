"""`emotion predict --slices FILE`: the user's own groups of images, for an evaluation per group.

FILE is a CSV (with a header) or a Parquet file: a `uri` column and any other columns (site, camera,
session, an age band the user recorded...). Each other column is a slicing: the evaluation reports
every value of it (evaluation/slices.parquet, schemas.SLICES_SCHEMA). The pipeline never infers such
attributes itself: a slice is only ever what the user's file says.

A `uri` is an image's path as the predictions name it (local path or gs:// URI), or a path relative
to --input. Rows whose image the file does not list, or lists with an empty value, count as the value
"(none)", so each column's counts add up to the run's. The file is read (and checked) by the launcher
before anything is written, and again by the pipeline (a side input), so it never travels inside the
job's graph.
"""

from __future__ import annotations

import csv
import io

import numpy as np
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.base.files import join
from model.errors import UsageError

URI = "uri"
NONE_VALUE = "(none)"
MAX_VALUES = 1000  # per column: a slicing is a handful of groups, not an identifier
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
Z95 = 1.959963984540054


# --------------------------------------------------------------------------- reading the file


def read_slices(path: str, input_root: str) -> tuple[list[str], dict[str, tuple]]:
    """(the slicing columns, {image uri: their values, None where empty}) of a slices file; every way
    the file can be unusable is a UsageError naming it."""
    try:
        with FileSystems.open(path) as f:
            data = f.read()
    except Exception as exc:
        raise UsageError(f"--slices {path} cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from None
    names, rows = _parquet_rows(path, data) if data[:4] == b"PAR1" else _csv_rows(path, data)
    if URI not in names:
        raise UsageError(f"--slices {path} has no '{URI}' column (its columns: {', '.join(names[:8]) or 'none'})")
    columns = [n for n in names if n != URI]
    if not columns:
        raise UsageError(f"--slices {path} has only a '{URI}' column: add the columns to slice by")
    if len(set(names)) != len(names) or any(not n.strip() for n in names):
        raise UsageError(f"--slices {path}: its column names must be unique and not empty")
    lookup: dict[str, tuple] = {}
    for row in rows:
        uri = _absolute(str(row[URI] or "").strip(), input_root)
        if not uri:
            raise UsageError(f"--slices {path} has a row without a {URI}")
        if uri in lookup:
            raise UsageError(f"--slices {path} lists {uri[-120:]} twice: one row per image")
        lookup[uri] = tuple(_value(row[c]) for c in columns)
    for i, column in enumerate(columns):
        distinct = {values[i] for values in lookup.values()}
        if len(distinct) > MAX_VALUES:
            raise UsageError(f"--slices {path}: column {column!r} has {len(distinct)} distinct values (at most "
                             f"{MAX_VALUES}): a slice is a group of images, not an identifier")
    return columns, lookup


def _value(value) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def _absolute(uri: str, input_root: str) -> str:
    """A file's uri as predictions name it: relative ones are taken under --input."""
    if not uri or "://" in uri or uri.startswith("/"):
        return uri
    return join(input_root, uri.removeprefix("./"))


def _csv_rows(path: str, data: bytes) -> tuple[list[str], list[dict]]:
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8-sig")))
        names = list(reader.fieldnames or [])
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"--slices {path} is neither Parquet nor a UTF-8 CSV ({str(exc)[:120]})") from None
    if any(None in row for row in rows):
        raise UsageError(f"--slices {path}: a CSV row has more fields than the header")
    return names, rows


def _parquet_rows(path: str, data: bytes) -> tuple[list[str], list[dict]]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
        table = pa.table({name: pc.cast(table[name], pa.string()) for name in table.column_names})
    except Exception as exc:
        raise UsageError(f"--slices {path} cannot be read as Parquet of plain columns "
                         f"({str(exc).splitlines()[0][:120]})") from None
    return table.column_names, table.to_pylist()


def slice_pairs(path: str, input_root: str):
    """(uri, values) of each image the file lists: the pipeline's side input."""
    _, lookup = read_slices(path, input_root)
    yield from lookup.items()


# --------------------------------------------------------------------------- the numbers of a slice


def wilson(correct: int, n: int) -> tuple[float | None, float | None]:
    """The 95% Wilson score interval of a proportion (None, None without examples)."""
    if n == 0:
        return None, None
    p = correct / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def macro_f1_of(confusion: np.ndarray) -> np.ndarray:
    """Macro-F1 of each confusion matrix of a (..., C, C) stack: the mean F1 of the classes present
    (true or predicted), as model.metrics.summarize counts them."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    true, predicted = confusion.sum(axis=-1), confusion.sum(axis=-2)
    denominator = true + predicted
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    present = denominator > 0
    return f1.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def macro_f1_interval(confusion: np.ndarray) -> tuple[float | None, float | None]:
    """A 95% bootstrap interval of the macro-F1: the labelled rows resampled with replacement, which
    for these metrics is a multinomial draw of the confusion matrix's cells (seeded: runs agree)."""
    n = int(confusion.sum())
    if n == 0:
        return None, None
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    cells = confusion.reshape(-1).astype(np.float64)
    draws = rng.multinomial(n, cells / n, size=BOOTSTRAP_RESAMPLES).reshape(-1, *confusion.shape)
    low, high = np.quantile(macro_f1_of(draws), [0.025, 0.975])
    return float(low), float(high)


def slice_rows(columns: list[str], counts: dict) -> list[dict]:
    """The rows of evaluation/slices.parquet from the evaluation's per-slice counts
    ({column: {value: {"rows", "answered", "confusion"}}}), values sorted, "(none)" last."""
    out = []
    for column in columns:
        values = counts.get(column, {})
        for value in sorted(values, key=lambda v: (v is None, str(v))):
            c = values[value]
            confusion = np.asarray(c["confusion"])
            labelled, correct = int(confusion.sum()), int(np.trace(confusion))
            accuracy_low, accuracy_high = wilson(correct, labelled)
            f1_low, f1_high = macro_f1_interval(confusion)
            out.append({
                "column": column, "value": NONE_VALUE if value is None else value,
                "rows": int(c["rows"]), "answered": int(c["answered"]), "labelled": labelled, "correct": correct,
                "accuracy": correct / labelled if labelled else None,
                "accuracy_low": accuracy_low, "accuracy_high": accuracy_high,
                "macro_f1": float(macro_f1_of(confusion)) if labelled else None,
                "macro_f1_low": f1_low, "macro_f1_high": f1_high,
            })
    return out
