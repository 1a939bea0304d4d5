"""A second real engine: ingest and predict through Beam's portable runner, run by SDK workers that
an external worker pool starts. The pipeline goes through Beam's portable protos and every DoFn,
coder and side input is unpickled in another process, as on Dataflow Runner v2, Flink and Spark;
the outputs must equal a DirectRunner run's. Then the one-line errors (exit 2) for a runner that
cannot be reached or whose workers cannot start."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest

from beam_pipelines.ingest import launcher as ingest
from beam_pipelines.predict import launcher as predict
from model.errors import UsageError
from beam_pipelines.base import runner
from beam_pipelines.base.runner import pipeline_options
from conftest import SAMPLE, SHIPPED_MODEL, run_cli
from schemas import LABELS

VENV_BIN = pathlib.Path(sys.executable).parent  # the project's Python: Beam and this package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_worker_pool(bin_dir: pathlib.Path, folder: pathlib.Path) -> tuple[subprocess.Popen, str]:
    """Beam's worker pool on a free port and its address; its workers run the `python` found first
    in bin_dir. It runs in `folder`, not the repository, so that workers import the installed
    package, not the checkout in their working directory."""
    port = free_port()
    with (folder / "pool.log").open("w") as log:
        pool = subprocess.Popen(
            [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"],
            cwd=folder, env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
            stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True,  # its own process group: stopping it stops the workers it started
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and pool.poll() is None:
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            return pool, f"localhost:{port}"
        except OSError:
            time.sleep(0.2)
    stop_worker_pool(pool)
    raise AssertionError(f"worker pool did not listen on {port}:\n{(folder / 'pool.log').read_text()[-3000:]}")


def stop_worker_pool(pool: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pool.pid, sig)
        except ProcessLookupError:
            pass  # already gone: wait() below reaps it
        try:
            pool.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def worker_pool(tmp_path_factory):
    pool, address = start_worker_pool(VENV_BIN, tmp_path_factory.mktemp("worker_pool"))
    yield address
    stop_worker_pool(pool)


@pytest.fixture(scope="module")
def broken_worker_pool(tmp_path_factory):
    """A pool whose `python` cannot import Beam (the project's Python without its site-packages):
    each worker it starts dies at once, as with a pool started outside the project's venv."""
    folder = tmp_path_factory.mktemp("broken_worker_pool")
    python = folder / "bin" / "python"
    python.parent.mkdir()
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S -I "$@"\n')
    python.chmod(0o755)
    pool, address = start_worker_pool(python.parent, folder)
    yield address
    stop_worker_pool(pool)


def portable(address: str) -> list[str]:
    """The options that run a job here, on an embedded job service, with the pool's workers."""
    return ["--runner", "PortableRunner", "--job_endpoint", "embed",
            "--environment_type", "EXTERNAL", "--environment_config", address]


def run_both(stage, command: str, args: list, address: str, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """The output folders of the same run on the DirectRunner (here) and through the worker pool
    (`emotion COMMAND` in a subprocess, as a user runs it), the two at once to save time."""
    direct, through_pool = tmp_path_factory.mktemp(f"{command}_direct"), tmp_path_factory.mktemp(f"{command}_portable")
    with ThreadPoolExecutor(max_workers=1) as background:
        portable_run = background.submit(run_cli, command, *args, "--output", through_pool, *portable(address),
                                         timeout=300)
        stage.run([*map(str, args), "--output", str(direct)])
        portable_run.result()
    return direct, through_pool


@pytest.fixture(scope="module")
def ingest_runs(worker_pool, tmp_path_factory):
    return run_both(ingest, "ingest", ["--input", SAMPLE], worker_pool, tmp_path_factory)


@pytest.fixture(scope="module")
def predict_runs(worker_pool, tmp_path_factory):
    return run_both(predict, "predict", ["--input", SAMPLE, "--model", SHIPPED_MODEL], worker_pool, tmp_path_factory)


def read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())


def predictions_by_uri(out: pathlib.Path) -> dict[str, dict]:
    rows = [row for f in sorted((out / "predictions").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]
    assert rows, f"no predictions under {out}"
    return {row["uri"]: row for row in rows}


def test_ingest_through_the_worker_pool_writes_the_direct_runners_records(ingest_runs):
    direct, through_pool = map(read_json, (run / "stats.json" for run in ingest_runs))
    assert through_pool["totals"] == direct["totals"] and direct["totals"]["written"] == 210
    assert through_pool["fingerprint"] == direct["fingerprint"]
    assert through_pool["rejected"] == direct["rejected"] and through_pool["written"] == direct["written"]
    # Records are sorted inside each shard, so the same input gives the same bytes on any runner.
    shards = [{p.name: p.read_bytes() for p in (run / "tfrecords").glob("*.tfrecord")} for run in ingest_runs]
    assert sorted(shards[1]) == sorted(shards[0]) == ["test-00000-of-00001.tfrecord",
                                                      "train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"]
    assert shards[1] == shards[0]


def test_predict_through_the_worker_pool_predicts_what_the_direct_runner_predicts(predict_runs):
    direct, through_pool = map(predictions_by_uri, predict_runs)
    assert sorted(through_pool) == sorted(direct) and len(direct) == 211
    for uri, expected in direct.items():
        got = through_pool[uri]
        assert got["predicted_label"] == expected["predicted_label"], uri
        for label in LABELS:
            assert got[f"prob_{label}"] == pytest.approx(expected[f"prob_{label}"], abs=1e-5), (uri, label)
    summaries = [read_json(run / "summary.json") for run in predict_runs]
    assert summaries[1]["totals"] == summaries[0]["totals"]
    assert summaries[1]["accuracy"] == pytest.approx(summaries[0]["accuracy"])


def assert_one_line_usage_error(proc: subprocess.CompletedProcess, *expected: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert all(text in lines[0] for text in expected), lines[0]


@pytest.mark.parametrize("command", ["ingest", "predict"])
def test_an_unknown_runner_is_one_line_before_anything_is_written(command, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(command, "--input", SAMPLE, "--output", out, "--runner", "NoSuchRunner", check=False, timeout=120)
    assert_one_line_usage_error(proc, f"emotion {command}: error: unknown --runner NoSuchRunner", "PortableRunner")
    assert not out.exists()


def test_an_unreachable_worker_pool_is_one_line_within_seconds(tmp_path):
    nothing_there = f"localhost:{free_port()}"
    started = time.monotonic()
    proc = run_cli("ingest", "--input", SAMPLE, "--output", tmp_path / "out", *portable(nothing_there),
                   check=False, timeout=120)
    assert_one_line_usage_error(proc, f"cannot reach the worker pool (--environment_config) at {nothing_there}")
    assert time.monotonic() - started < 30 and not (tmp_path / "out").exists()


def test_an_unreachable_job_service_is_one_line_within_seconds(tmp_path):
    nothing_there = f"localhost:{free_port()}"
    started = time.monotonic()
    proc = run_cli("ingest", "--input", SAMPLE, "--output", tmp_path / "out", "--runner", "PortableRunner",
                   "--job_endpoint", nothing_there, check=False, timeout=120)
    assert_one_line_usage_error(proc, f"cannot reach the job service (--job_endpoint) at {nothing_there}")
    assert time.monotonic() - started < 30  # Beam alone waits --job_server_timeout, 300 s


def test_a_pool_whose_workers_cannot_start_is_refused_in_bounded_time(broken_worker_pool, worker_pool, monkeypatch):
    monkeypatch.setattr(runner, "WORKER_START_TIMEOUT_S", 5)  # 60 s in `emotion`: a Python start-up on a busy node
    pipeline_options(portable(worker_pool), save_main_session=False)  # a working pool passes the same checks
    started = time.monotonic()
    with pytest.raises(UsageError, match="did not call back within 5 s: start the pool with the project's Python"):
        pipeline_options(portable(broken_worker_pool), save_main_session=False)
    assert time.monotonic() - started < 15  # Beam alone waits forever
