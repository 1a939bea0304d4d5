"""A local GCS emulator (gcp-storage-emulator, in memory) as a subprocess, for benchmarks and tests.

Clients reach it through STORAGE_EMULATOR_HOST (google-cloud-storage and Beam's gs:// filesystem
both honour it, with anonymous credentials).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if (proc is not None and proc.poll() is not None) or time.time() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout_s} s")
            time.sleep(0.1)


@contextlib.contextmanager
def emulator() -> Iterator[str]:
    """The URL of a fresh in-memory emulator on 127.0.0.1, stopped on exit."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1", f"--port={port}",
             "--in-memory", "-q"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            try:
                wait_for(url + "/", proc)
            except RuntimeError:
                log.seek(0)
                raise RuntimeError(f"GCS emulator did not start:\n{log.read().decode(errors='replace')[-2000:]}")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
