"""Helpers shared by the Beam pipelines: options and runner checks, paths, storage access checks, stats merging."""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import socket
import threading
import uuid
from concurrent import futures

import apache_beam as beam
import grpc
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc, endpoints_pb2

from beam_pipelines.listing import exists_any
from model.errors import UsageError  # noqa: F401  (re-exported for the pipelines)

log = logging.getLogger("emotion")


class OneLineErrors(argparse.ArgumentParser):
    """argparse that reports a bad option as a UsageError: one line, exit 2, no usage dump."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def pipeline_options(beam_args: list[str], save_main_session: bool) -> PipelineOptions:
    """PipelineOptions from the pass-through Beam arguments, validated up front.

    The runner defaults to the DirectRunner (Beam's own default downloads Prism, which
    needs the network). Dataflow runs must name a project, region and gs:// temp location.
    """
    options = PipelineOptions(beam_args, save_main_session=save_main_session, pipeline_type_check=True)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = "DirectRunner"
    check_runner(options)
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


ENDPOINT_TIMEOUT_S = 5  # a TCP connect to a job service or a worker pool
WORKER_START_TIMEOUT_S = 60  # a worker pool's new SDK worker connecting back (a Python start-up)


def check_runner(options: PipelineOptions) -> None:
    """The runner exists and what a portable runner needs answers, before anything is built or
    written. Unchecked, an unknown --runner is a traceback at submission, an unreachable job
    service a wait of --job_server_timeout (300 s), and a worker pool whose workers cannot import
    Beam a silent hang: the embedded job service waits forever for them to connect."""
    from apache_beam.runners.portability.portable_runner import PortableRunner

    runner = runner_class(options.view_as(StandardOptions).runner)
    if not issubclass(runner, PortableRunner):
        return
    portable = options.view_as(PortableOptions)
    # FlinkRunner and SparkRunner start a job server of their own; PortableRunner has none.
    if runner is PortableRunner and not portable.job_endpoint:
        raise UsageError("PortableRunner needs --job_endpoint: a job service's HOST:PORT, or embed to run here")
    if portable.job_endpoint and portable.job_endpoint != "embed":
        probe_endpoint(portable.job_endpoint, "the job service (--job_endpoint)")
    # Only an embedded job service asks the pool for workers from this machine. Submitted to a
    # cluster, the EXTERNAL address is the one its nodes see (a pool beside each task manager),
    # which this machine need not reach.
    if portable.job_endpoint == "embed" and portable.environment_type == "EXTERNAL":
        address = external_worker_pool(portable)
        probe_endpoint(address, "the worker pool (--environment_config)")
        check_worker_pool(address, WORKER_START_TIMEOUT_S)


def runner_class(name: str) -> type:
    """The class --runner names, found as Beam's create_runner finds it (a known name in any case,
    with or without "Runner", or a class's dotted path), importing only its module."""
    known = {path.rsplit(".", 1)[-1].lower(): path for path in StandardOptions.ALL_KNOWN_RUNNERS}
    path = known.get(name.lower()) or known.get(name.lower() + "runner") or name
    module, _, class_name = path.rpartition(".")
    if not module:
        raise UsageError(f"unknown --runner {name}: use one of {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)} "
                         "or a runner class's dotted path")
    try:
        return getattr(importlib.import_module(module), class_name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load --runner {name}: {exc}") from None


def external_worker_pool(portable: PortableOptions) -> str:
    """The worker pool's address, read as Beam's ExternalEnvironment reads it (JSON with a "url",
    a plain address, or --environment_options external_service_address=)."""
    config = (portable.environment_config or "").strip()
    if config.startswith("{"):
        try:
            config = json.loads(config).get("url") or ""
        except json.JSONDecodeError as exc:
            raise UsageError(f"--environment_config is not valid JSON: {exc}") from None
    address = config or portable.lookup_environment_option("external_service_address")
    if not address:
        raise UsageError("--environment_type EXTERNAL needs --environment_config HOST:PORT, the worker pool's address")
    return address


def probe_endpoint(address: str, what: str) -> None:
    """A TCP connection to HOST:PORT within ENDPOINT_TIMEOUT_S, or one line naming what is missing."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"{what} must be HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=ENDPOINT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise UsageError(f"cannot reach {what} at {address} within {ENDPOINT_TIMEOUT_S} s: {reason}") from None


class _CallWatcher(grpc.ServerInterceptor):
    """Notes that a call reached the probe's server: a process-mode worker's Control stream, or
    the SDK container's boot program asking for its provisioning first. Both prove a worker
    started and can reach this machine."""

    def __init__(self):
        self.called = threading.Event()

    def intercept_service(self, continuation, handler_call_details):
        self.called.set()
        return continuation(handler_call_details)


class _EndingControl(beam_fn_api_pb2_grpc.BeamFnControlServicer):
    """Ends a worker's control stream at once: given no work, the worker shuts down cleanly."""

    def Control(self, request_iterator, context):  # noqa: N802 (gRPC's method name)
        return iter(())


def check_worker_pool(address: str, timeout_s: float) -> None:
    """The pool at `address` starts an SDK worker that calls back within timeout_s, asked as the
    embedded job service asks it (StartWorker, endpoints on this machine's FQDN). A pool whose
    `python` lacks Beam starts workers that die at once, and the job would wait for them forever."""
    watcher = _CallWatcher()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[watcher])
    beam_fn_api_pb2_grpc.add_BeamFnControlServicer_to_server(_EndingControl(), server)
    port = server.add_insecure_port("[::]:0")
    server.start()
    endpoint = endpoints_pb2.ApiServiceDescriptor(url=f"{socket.getfqdn()}:{port}")
    worker_id = f"emotion-probe-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(address) as channel:
        pool = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel)
        try:
            _start_probe_worker(pool, address, worker_id, endpoint)
            if not watcher.called.wait(timeout_s):
                raise UsageError(
                    f"the worker pool at {address} started a worker that did not call back within {timeout_s:g} s: "
                    "start the pool with the project's Python first on its PATH (Beam and this package installed)")
        finally:
            _stop_probe_worker(pool, worker_id)
            server.stop(None)


def _start_probe_worker(pool, address: str, worker_id: str, endpoint) -> None:
    try:
        response = pool.StartWorker(beam_fn_api_pb2.StartWorkerRequest(
            worker_id=worker_id, control_endpoint=endpoint, logging_endpoint=endpoint,
            artifact_endpoint=endpoint, provision_endpoint=endpoint), timeout=ENDPOINT_TIMEOUT_S)
    except grpc.RpcError as exc:
        raise UsageError(f"{address} does not answer as a Beam worker pool: {exc.code().name}") from None
    if response.error:  # the pool's traceback: its last line says why (e.g. no `python` on its PATH)
        reason = response.error.strip().splitlines()[-1]
        raise UsageError(f"the worker pool at {address} cannot start a worker: {reason}")


def _stop_probe_worker(pool, worker_id: str) -> None:
    """Has the pool kill and reap the probe's worker process (it keeps it otherwise)."""
    try:
        pool.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id=worker_id), timeout=ENDPOINT_TIMEOUT_S)
    except grpc.RpcError:
        pass  # the pool is gone or never answered: there is no worker to stop


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


def check_remote_paths(options: PipelineOptions, **paths: str) -> None:
    """On Dataflow every path is read or written by workers: it must be gs:// (dry runs excepted)."""
    if not is_remote_runner(options) or is_dry_run(options):
        return
    for flag, path in paths.items():
        if not str(path).startswith("gs://"):
            raise UsageError(f"--{flag} must be a gs:// path on Dataflow (workers cannot see {path})")


def check_unknown_args(beam_args: list[str], prog: str) -> None:
    """What a stage's parser did not know goes to Beam, which silently drops what it does not know
    either: a mistyped option (--face-crp) would run something else than asked. Every leftover
    option must be one of Beam's pipeline options (any PipelineOptions subclass), or a UsageError
    names it. Beam's own parser (handed over by get_all_options) decides, abbreviations excluded."""
    parsers = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    parser = parsers[0]

    def error(message):
        raise UsageError(f"{message} (a Beam pipeline option of {prog})")

    parser.error = error  # one line instead of argparse's usage dump
    _, unknown = parser.parse_known_args(list(beam_args))
    flags = [arg for arg in unknown if arg.startswith("-")]
    stray = [arg for arg in unknown if not arg.startswith("-")]
    if flags or stray:
        shown = " ".join((flags or stray)[:3])
        raise UsageError(f"unrecognized argument{'s' if len(flags or stray) > 1 else ''}: {shown} "
                         f"(neither an option of {prog} nor a Beam pipeline option; see {prog} --help)")
