"""Files as the stages read and write them, local or gs:// (through Beam's FileSystems): paths and
extensions, bytes and Parquet in and out (`parquet_bytes`/`write_bytes`, `read_parquet`), and the
start-up checks of what a run will read (`check_input`, `check_storage_access`, `check_max_pixels`)."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from beam_pipelines.base.listing import exists_any
from model.errors import UsageError


def split_and_class_dir(rel: str) -> tuple[str | None, str | None]:
    """(canonical split, class folder) of a path relative to the input root:
    <split>/<class>/... or <class>/...; (None, None) for a file directly under the root."""
    from schemas import canonical_split

    parts = rel.split("/")
    if len(parts) >= 3 and canonical_split(parts[0]):
        return canonical_split(parts[0]), parts[1]
    return None, parts[0] if len(parts) >= 2 else None


def extension(path: str) -> str:
    """The lower-cased extension of a path's file name, with its dot ('' when none)."""
    name = path.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def join(root: str, *parts: str) -> str:
    """root/part/...: one slash between parts (a recorded folder name may end in one)."""
    return "/".join([root.rstrip("/"), *(part.strip("/") for part in parts)])


def parquet_bytes(table: pa.Table, **write_options) -> bytes:
    """A Parquet file's bytes (pyarrow.parquet.write_table options), to write with write_bytes."""
    sink = io.BytesIO()
    pq.write_table(table, sink, **write_options)
    return sink.getvalue()


def write_bytes(path: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
    with FileSystems.create(path, mime_type=mime_type) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as f:
        return f.read()


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file, local or gs:// (through Beam's FileSystems), as a pyarrow Table: the one way the
    pipelines read Parquet back (parquet_bytes is the way they write it). The file is read whole first, as
    pyarrow seeks to the footer and back. Raises what opening (OSError) or parsing (pyarrow.ArrowInvalid)
    raises: whether that is the user's mistake or a part to leave out is the caller's to say."""
    with FileSystems.open(path) as f:
        return pq.read_table(io.BytesIO(f.read()), columns=columns)


def parquet_num_rows(path: str) -> int:
    """The row count of one Parquet file, from its footer alone (no column is read)."""
    try:
        with FileSystems.open(path) as f:
            return pq.ParquetFile(f).metadata.num_rows
    except Exception:  # a stream pyarrow cannot seek in: the file read whole
        return pq.ParquetFile(io.BytesIO(read_bytes(path))).metadata.num_rows


def check_max_pixels(max_pixels: int) -> None:
    """--max-pixels must lie under OpenCV's own ceiling (model.preprocess sets it before importing
    cv2), or larger images would be refused by the decoder whatever the flag says."""
    import os

    import model.preprocess  # noqa: F401  (sets the ceiling)

    ceiling = int(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"])
    if not 0 < max_pixels <= ceiling:
        raise UsageError(f"--max-pixels must be between 1 and the decoder's ceiling {ceiling:,} "
                         "(raise it by setting OPENCV_IO_MAX_IMAGE_PIXELS in the environment)")


GCS_TIMEOUT_S = 20


def check_storage_access(*paths: str) -> None:
    """Every gs:// path's bucket answers within GCS_TIMEOUT_S with the credentials at hand, or one
    line says what is missing. (Unchecked, Beam's GCS client retries for minutes, then fails with
    an error that never mentions credentials.)"""
    buckets = sorted({p[len("gs://"):].split("/", 1)[0] for p in paths if str(p).startswith("gs://")})
    if not buckets:
        return
    import os

    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    if not os.environ.get("STORAGE_EMULATOR_HOST"):  # the emulator needs no credentials
        try:
            google.auth.default()
        except DefaultCredentialsError:
            raise UsageError(
                "gs:// paths need Google Cloud credentials and none were found: run "
                "`gcloud auth application-default login` (Application Default Credentials) or set "
                "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"
            ) from None
    from google.api_core.exceptions import Forbidden, NotFound
    from google.api_core.retry import Retry
    from google.cloud import storage

    client = storage.Client()
    for bucket in buckets:
        try:
            next(iter(client.list_blobs(bucket, max_results=1, timeout=GCS_TIMEOUT_S,
                                        retry=Retry(timeout=GCS_TIMEOUT_S))), None)
        except NotFound:
            raise UsageError(f"bucket gs://{bucket} does not exist") from None
        except Forbidden as exc:
            raise UsageError(f"no access to gs://{bucket} with the current credentials: {exc.message}") from None
        except Exception as exc:
            raise UsageError(
                f"cannot reach gs://{bucket} within {GCS_TIMEOUT_S} s ({type(exc).__name__}): check the network "
                "and the Application Default Credentials (`gcloud auth application-default login`)"
            ) from None


def check_input(path: str, pattern: str | None = None) -> None:
    """A stage's start-up check of --input: at least one file under it (or matching `pattern`, a TFRecord
    glob), listed now, before any output is claimed; one line saying what is wrong otherwise."""
    import os

    try:  # (a file where a folder should be: listing says "X is a file, not a folder")
        found = FileSystems.match([pattern], limits=[1])[0].metadata_list if pattern else exists_any(path)
    except Exception as exc:
        raise UsageError(f"cannot list --input {path}: {exc}") from None
    if not found:
        missing = "" if "://" in path or os.path.exists(path) else ": it does not exist"
        raise UsageError(f"no files under --input {path}{missing}")
