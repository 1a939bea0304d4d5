"""Helpers shared by the Beam pipelines: options, paths, storage access checks, stats merging."""

from __future__ import annotations

import io
import logging

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

from beam_pipelines.errors import UsageError  # noqa: F401  (re-exported for the pipelines)

log = logging.getLogger("emotion")


def pipeline_options(beam_args: list[str], save_main_session: bool) -> PipelineOptions:
    """PipelineOptions from the pass-through Beam arguments, validated up front.

    The runner defaults to the DirectRunner (Beam's own default downloads Prism, which
    needs the network). Dataflow runs must name a project, region and gs:// temp location.
    """
    options = PipelineOptions(beam_args, save_main_session=save_main_session, pipeline_type_check=True)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = "DirectRunner"
    if is_dataflow_runner(standard.runner):
        gcp = options.view_as(GoogleCloudOptions)
        missing = [
            flag
            for flag, value in (
                ("--project", gcp.project),
                ("--region", gcp.region),
                ("--temp_location", gcp.temp_location),
            )
            if not value
        ]
        if missing:
            raise UsageError(f"DataflowRunner needs {', '.join(missing)}")
        if not gcp.temp_location.startswith("gs://"):
            raise UsageError(f"--temp_location must be a gs:// path for Dataflow, got {gcp.temp_location}")
        # Beam's own check, now rather than at submission: given an invalid bucket name (or no
        # object path), Dataflow falls back to creating a default bucket over the network.
        validator = PipelineOptionsValidator(options, standard.runner)
        problems = [
            problem
            for name in ("temp_location", "staging_location")
            if getattr(gcp, name)
            for problem in validator.validate_gcs_path(gcp, name)
        ]
        if problems:
            raise UsageError("; ".join(problems))
    return options


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
    return "/".join([root.rstrip("/"), *parts])


def is_dataflow_runner(runner) -> bool:
    """Beam resolves runner names case-insensitively, with or without "Runner" (Dataflow,
    dataflow, DataflowRunner, TestDataflowRunner, the class path): all of them submit to Dataflow."""
    name = runner if isinstance(runner, str) else type(runner).__name__
    return "dataflow" in (name or "").lower()


def is_remote_runner(options: PipelineOptions) -> bool:
    return is_dataflow_runner(options.view_as(StandardOptions).runner)


def merge_counts(a: dict, b: dict) -> dict:
    """Adds nested dicts of numbers; other values: first wins."""
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict):
            out[key] = merge_counts(out[key], value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = out[key] + value
    return out


class MergeCounts(beam.CombineFn):
    """Merges dicts of counts (common.merge_counts) into one: stats, listing summaries."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, value):
        return merge_counts(acc, value)

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            out = merge_counts(out, acc)
        return out

    def extract_output(self, acc):
        return acc


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


def is_dry_run(options: PipelineOptions) -> bool:
    """--dry_run builds a Dataflow job without submitting it, and touches no storage."""
    from apache_beam.options.pipeline_options import TestOptions

    dry_run = bool(options.view_as(TestOptions).dry_run)
    if dry_run and not is_remote_runner(options):
        raise UsageError("--dry_run builds a Dataflow job: use it with --runner DataflowRunner")
    return dry_run


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


def check_remote_paths(options: PipelineOptions, **paths: str) -> None:
    """On Dataflow every path is read or written by workers: it must be gs:// (dry runs excepted)."""
    if not is_remote_runner(options) or is_dry_run(options):
        return
    for flag, path in paths.items():
        if not str(path).startswith("gs://"):
            raise UsageError(f"--{flag} must be a gs:// path on Dataflow (workers cannot see {path})")
