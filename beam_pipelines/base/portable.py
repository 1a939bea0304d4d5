"""A portable runner's endpoints checked before anything is built or written: the job service and the
external worker pool answer (a TCP connect), and the pool starts an SDK worker that calls back (a
gRPC probe). The one module of the pipelines that imports gRPC; `runner.check_runner` imports it
only when a portable runner is named."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from concurrent import futures

import grpc
from apache_beam.options.pipeline_options import PortableOptions
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc, endpoints_pb2

from model.errors import UsageError


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


ENDPOINT_TIMEOUT_S = 5  # a TCP connect to a job service or a worker pool


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
