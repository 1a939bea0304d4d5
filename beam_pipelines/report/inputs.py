"""How `emotion report` reads the outputs it shows: forgiving, as a report must be.

Files are read through Beam's FileSystems (gs:// folders work too). What is missing or cannot be
read is None, or is left out with a warning: a page shows what is there, and one part that cannot
be read loses only its own section (report.render).
"""

from __future__ import annotations

import csv
import io
import json

from apache_beam.io.filesystems import FileSystems

from beam_pipelines.base.files import parquet_num_rows, read_parquet
from beam_pipelines.base.runner import log


def match(pattern: str) -> list[str]:
    """The paths matching a glob, sorted; [] when the folder does not exist or nothing matched."""
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # no such folder, nothing matched
        return []


def exists(path: str) -> bool:
    try:
        return FileSystems.exists(path)
    except Exception:
        return False


def read(path: str) -> bytes | None:
    try:
        with FileSystems.open(path) as f:
            return f.read()
    except Exception:
        return None


def read_json(path: str) -> dict | None:
    data = read(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        log.warning("report: %s is not valid JSON; left out", path)
        return None


def read_csv(path: str) -> list[dict]:
    """The rows of a CSV file with a header ([] when there is no such file)."""
    data = read(path)
    return list(csv.DictReader(io.StringIO(data.decode("utf-8", "replace")))) if data else []


def read_tables(pattern: str, columns=None):
    """All rows of the Parquet files matching pattern as one pyarrow Table (None: no files). A file
    that cannot be read is left out with a warning."""
    import pyarrow as pa

    tables = []
    for path in match(pattern):
        try:
            tables.append(read_parquet(path, columns=columns))
        except Exception as exc:
            log.warning("report: cannot read %s: %s", path, exc)
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def count_rows(pattern: str) -> int | None:
    """Row count of the Parquet files matching pattern, from their footers only (None: no files)."""
    paths = match(pattern)
    return sum(parquet_num_rows(path) for path in paths) if paths else None
