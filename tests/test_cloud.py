"""Cloud scale, offline: Dataflow job graphs built with --dry_run and as a template, Dataflow options
checked up front, gs:// end to end on a local GCS emulator, the flex-template entry point, and
the multi-worker training specs (TF_CONFIG per pod, Vertex AI / Kubernetes manifests).

Nothing here needs Google Cloud or the network: the emulator (gcp-storage-emulator, dev extra)
runs on 127.0.0.1, Beam's GCS client is made anonymous, and Dataflow jobs are only built.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import StandardOptions

from beam_pipelines.ingest import launcher as ingest
from beam_pipelines.predict import launcher as predict
from model.errors import UsageError
from beam_pipelines.base.runner import pipeline_options
from conftest import REPO, SHIPPED_MODEL, make_split_tree
from schemas import LABELS

DEPLOY = REPO / "deploy"
PROJECT = "my-project-123"
REGION = "us-central1"
WORKER_IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/emotion/emotion-worker:0.1.0"
GPU_IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/emotion/emotion-worker-gpu:0.1.0"
T4 = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"

# What a user passes to submit a job, plus --dry_run: the job is built but never sent.
DRY_RUN = [
    "--runner", "DataflowRunner", "--dry_run=True",
    f"--project={PROJECT}", f"--region={REGION}", "--temp_location=gs://my-bucket/tmp",
]
WORKER_OPTIONS = [
    f"--sdk_container_image={WORKER_IMAGE}", "--sdk_location=container", "--experiments=use_runner_v2",
    "--machine_type=n2-standard-4", "--max_num_workers=20", "--autoscaling_algorithm=THROUGHPUT_BASED",
]
GPU_OPTIONS = [
    f"--sdk_container_image={GPU_IMAGE}", "--sdk_location=container", "--experiments=use_runner_v2",
    "--machine_type=n1-standard-8", "--max_num_workers=4", f"--dataflow_service_options={T4}",
    "--experiments=no_use_multiple_sdk_containers",
]
INGEST_STEPS = {
    "Ingest/ListFiles", "Ingest/DecodeBatches", "Ingest/GroupByShard", "Ingest/DedupeAndWrite",
    "Ingest/WriteEmptyShards", "Ingest/WriteRejected", "Ingest/MergeStats", "Ingest/WriteStats",
}
PREDICT_STEPS = {
    "Predict/Classify", "Predict/WritePredictions", "Predict/WriteRejected",
    "Predict/Evaluate", "Predict/WriteEvaluation", "Predict/WriteSummary",
}
PREDICT_INPUT_STEPS = {
    "images": {"Predict/ListImages", "Predict/DecodeImages"},
    "tfrecords": {"Predict/ReadTFRecords", "Predict/ParseExamples"},
}


def load_script(path):
    """A deploy/ script (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flex_main = load_script(DEPLOY / "dataflow" / "flex_main.py")
tf_config = load_script(DEPLOY / "training" / "tf_config.py")
render = load_script(DEPLOY / "training" / "render.py")


@pytest.fixture
def dataflow_jobs(monkeypatch):
    """The Dataflow jobs built during a test: DataflowRunner keeps each as runner.job (an
    apiclient.Job: .proto_pipeline is the Runner API pipeline, .options the pipeline options),
    also when --dry_run or --template_location stops it from submitting."""
    from apache_beam.runners.dataflow import dataflow_runner

    jobs = []
    original = dataflow_runner.DataflowRunner.run_pipeline

    def run_pipeline(self, pipeline, options, pipeline_proto=None):
        result = original(self, pipeline, options, pipeline_proto)
        jobs.append(self.job)
        return result

    monkeypatch.setattr(dataflow_runner.DataflowRunner, "run_pipeline", run_pipeline)
    return jobs


def step_names(job) -> set[str]:
    return {t.unique_name for t in job.proto_pipeline.components.transforms.values()}


def container_images(job) -> set[str]:
    from apache_beam.portability.api import beam_runner_api_pb2

    images = set()
    for env in job.proto_pipeline.components.environments.values():
        payload = beam_runner_api_pb2.DockerPayload.FromString(env.payload)
        images.add(payload.container_image)
    return images


@pytest.fixture(scope="module")
def model_dir(request):
    """The shipped model when there is one, else conftest's tiny_model (trained in ~30 s)."""
    if (SHIPPED_MODEL / "metadata.json").exists():
        return SHIPPED_MODEL
    return request.getfixturevalue("tiny_model")


# =========================================================================== Dataflow graphs, offline


def test_ingest_builds_a_complete_dataflow_job_offline(tmp_path, dataflow_jobs):
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_split_tree(raw, per_class=1, splits=("train", "test"))
    result = ingest.run(
        ["--input", str(raw), "--output", str(out), "--image-size", "64", "--face-crop",
         *DRY_RUN, *WORKER_OPTIONS, "--job_name=emotion-ingest-dry-run"]
    )
    assert result is None  # remote runners return without waiting
    (job,) = dataflow_jobs
    assert INGEST_STEPS <= step_names(job), sorted(step_names(job))
    assert container_images(job) == {WORKER_IMAGE}
    assert job.proto.name == "emotion-ingest-dry-run"
    assert job.proto.type_.name == "JOB_TYPE_BATCH"
    opts = job.options.get_all_options()
    assert opts["max_num_workers"] == 20 and opts["machine_type"] == "n2-standard-4"
    assert "use_runner_v2" in opts["experiments"]
    assert not (out / "stats.json").exists()  # nothing ran


@pytest.mark.parametrize("kind", ["images", "tfrecords"])
def test_predict_builds_a_complete_dataflow_job_offline(kind, tmp_path, model_dir, dataflow_jobs):
    if kind == "images":
        source = tmp_path / "faces"
        make_split_tree(source, per_class=1, splits=("test",))
        input_arg = str(source)
    else:  # the graph only needs the glob to match
        (tmp_path / "tfr").mkdir()
        (tmp_path / "tfr" / "test-00000-of-00001.tfrecord").write_bytes(b"")
        input_arg = str(tmp_path / "tfr" / "test-*.tfrecord")
    result = predict.run(
        ["--input", input_arg, "--output", str(tmp_path / "out"), "--model", str(model_dir),
         *DRY_RUN, *GPU_OPTIONS, "--job_name=emotion-predict-dry-run"]
    )
    assert result is None
    (job,) = dataflow_jobs
    steps = step_names(job)
    assert PREDICT_STEPS | PREDICT_INPUT_STEPS[kind] <= steps, sorted(steps)
    assert container_images(job) == {GPU_IMAGE}
    opts = job.options.get_all_options()
    assert opts["dataflow_service_options"] == [T4]
    assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(opts["experiments"])
    assert opts["machine_type"] == "n1-standard-8"


@pytest.mark.parametrize("stage", ["ingest", "predict"])
def test_a_dry_run_on_gs_paths_touches_no_storage(stage, model_dir, dataflow_jobs, monkeypatch):
    """No credentials and no network (a GCS endpoint where nothing listens): a dry run still builds
    the whole job at once, because it neither lists the input nor claims the output."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    started = time.monotonic()
    io = ["--input", "gs://no-such-bucket/faces", "--output", "gs://no-such-bucket/out"]
    if stage == "ingest":
        result = ingest.run([*io, *DRY_RUN, *WORKER_OPTIONS])
    else:
        result = predict.run([*io, "--model", str(model_dir), *DRY_RUN, *GPU_OPTIONS])
    assert result is None and len(dataflow_jobs) == 1
    assert f"{stage.capitalize()}/Commit/MoveIntoPlace" in step_names(dataflow_jobs[0])
    assert time.monotonic() - started < 30


def makefile_command(target: str, **variables) -> list[str]:
    """The command `make <target>` in deploy/dataflow/Makefile would run, as argv."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(
        [make, "-n", "-s", "-f", str(DEPLOY / "dataflow" / "Makefile"), target,
         *(f"{k}={v}" for k, v in variables.items())],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    return shlex.split(proc.stdout.replace("\\\n", " "))


@pytest.mark.parametrize("target", ["ingest", "predict", "predict-gpu"])
def test_documented_launch_commands_build_dataflow_jobs(target, tmp_path, model_dir, dataflow_jobs):
    """The Makefile's launch commands, pointed at local data and dry-run: every option parses
    and the job comes out as documented."""
    faces = tmp_path / "faces"
    make_split_tree(faces, per_class=1, splits=("test",))
    argv = makefile_command(
        target, PROJECT=PROJECT, BUCKET="my-bucket", INPUT=faces, INGEST_OUT=tmp_path / "ingest",
        PREDICT_IN=faces, PREDICT_OUT=tmp_path / "preds", MODEL=model_dir,
    )
    assert argv[:2] == ["emotion", target.split("-")[0]]
    module = ingest if argv[1] == "ingest" else predict
    assert module.run([*argv[2:], "--dry_run=True"]) is None
    (job,) = dataflow_jobs
    opts = job.options.get_all_options()
    assert opts["project"] == PROJECT and opts["region"] == REGION
    assert opts["temp_location"].startswith("gs://my-bucket/tmp")
    assert opts["sdk_location"] == "container" and "use_runner_v2" in opts["experiments"]
    if target == "predict-gpu":
        assert opts["sdk_container_image"].endswith("/emotion-worker-gpu:0.1.0")
        assert opts["dataflow_service_options"] == [T4]
        assert opts["machine_type"].startswith("n1-")  # T4s attach to N1 machines only
    else:
        assert opts["sdk_container_image"].endswith("/emotion-worker:0.1.0")
    assert (INGEST_STEPS if target == "ingest" else PREDICT_STEPS) <= step_names(job)


# =========================================================================== options checked up front


@pytest.mark.parametrize("missing", ["--project", "--region", "--temp_location"])
def test_dataflow_options_are_checked_before_anything_runs(missing):
    given = {"--project": PROJECT, "--region": REGION, "--temp_location": "gs://my-bucket/tmp"}
    args = ["--runner", "DataflowRunner", *(f"{k}={v}" for k, v in given.items() if k != missing)]
    with pytest.raises(UsageError, match=re.escape(missing)):
        pipeline_options(args, save_main_session=False)


def test_dataflow_option_errors_name_every_missing_flag_and_need_gs_temp():
    with pytest.raises(UsageError) as exc:
        pipeline_options(["--runner=DataflowRunner"], save_main_session=False)
    assert all(flag in str(exc.value) for flag in ("--project", "--region", "--temp_location"))
    with pytest.raises(UsageError, match=r"--temp_location must be a gs://"):
        pipeline_options(
            ["--runner=DataflowRunner", f"--project={PROJECT}", f"--region={REGION}", "--temp_location=/tmp/x"],
            save_main_session=False,
        )
    # the local default needs none of them
    assert pipeline_options([], save_main_session=False).view_as(StandardOptions).runner == "DirectRunner"


@pytest.mark.parametrize("location", ["--temp_location=gs://b/tmp", "--temp_location=gs://my-bucket",
                                      "--staging_location=gs://Bad_Bucket/staging"])
def test_bad_gcs_locations_fail_up_front_instead_of_creating_a_default_bucket(location):
    """Beam answers an invalid temp/staging location by creating a default bucket (network, ~2 min
    of retries when offline): the check runs before that."""
    args = ["--runner=DataflowRunner", f"--project={PROJECT}", f"--region={REGION}", "--temp_location=gs://my-bucket/tmp"]
    with pytest.raises(UsageError, match=location.split("=")[0].lstrip("-")):
        pipeline_options([*args, location], save_main_session=False)


@pytest.mark.parametrize("runner", ["Dataflow", "dataflow", "dataflowrunner", "DataflowRunner"])
def test_every_spelling_of_the_dataflow_runner_is_checked(runner):
    with pytest.raises(UsageError, match="--temp_location"):
        pipeline_options([f"--runner={runner}", f"--project={PROJECT}", f"--region={REGION}"], False)


def test_run_and_cli_fail_on_options_before_touching_inputs(tmp_path, capsys):
    with pytest.raises(UsageError, match="--temp_location"):
        ingest.run(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"),
                    "--runner", "DataflowRunner", "--project", PROJECT, "--region", REGION])
    from beam_pipelines import cli

    code = cli.main(["predict", "--input", "gs://b/in", "--output", "gs://b/out", "--model", str(tmp_path),
                     "--runner", "DataflowRunner", "--project", PROJECT])
    assert code == 2
    err = capsys.readouterr().err
    assert "--region" in err and "--temp_location" in err and "Traceback" not in err


# =========================================================================== gs:// on a local emulator


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
    """A GCS emulator on 127.0.0.1 that Beam's and google-cloud-storage's clients talk to.

    google-cloud-storage sends every request to STORAGE_EMULATOR_HOST when it is set, with
    anonymous credentials. Beam's GcsIO (apache_beam/io/gcp/gcsio.py, create_storage_client)
    first looks up Application Default Credentials (google.auth.default, retried with backoff:
    ~30 s without credentials) and only then falls back to an anonymous client; the lookup's
    cache (apache_beam.internal.gcp.auth._Credentials) is pre-set to "none found" here.
    """
    pytest.importorskip("gcp_storage_emulator", reason="pip install gcp-storage-emulator (dev extra)")
    from apache_beam.internal.gcp import auth

    port = _free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host=127.0.0.1", f"--port={port}", "--in-memory", "-q"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail(f"GCS emulator did not start:\n{log.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.1)
    mp = pytest.MonkeyPatch()
    mp.setenv("STORAGE_EMULATOR_HOST", url)
    mp.setenv("GOOGLE_CLOUD_PROJECT", "emulator-project")
    mp.setattr(auth._Credentials, "_credentials_init", True)
    mp.setattr(auth._Credentials, "_credentials", None)
    from google.cloud import storage

    client = storage.Client(project="emulator-project")
    client.create_bucket("emotion-test")
    try:
        yield client
    finally:
        mp.undo()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def upload_tree(client, local, bucket: str, prefix: str) -> int:
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for path in files:
        client.bucket(bucket).blob(f"{prefix}/{path.relative_to(local).as_posix()}").upload_from_filename(str(path))
    return len(files)


def blob_names(client, bucket: str, prefix: str) -> list[str]:
    return sorted(b.name for b in client.list_blobs(bucket, prefix=prefix))


def read_parquet_rows(client, bucket: str, prefix: str, tmp_path) -> list[dict]:
    rows = []
    for i, name in enumerate(n for n in blob_names(client, bucket, prefix) if n.endswith(".parquet")):
        local = tmp_path / f"part-{i}.parquet"
        client.bucket(bucket).blob(name).download_to_filename(str(local))
        rows += pq.read_table(local).to_pylist()
    return rows


def test_ingest_then_predict_on_gcs(gcs, model_dir, tmp_path):
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=3, splits=("train", "test"), seed=7)  # 42 distinct images
    (raw / "train" / "happy" / "broken.png").write_bytes(b"this is not a png")
    shutil.copy(raw / "train" / "sad" / "sad_0.png", raw / "train" / "sad" / "sad_0_copy.png")
    assert upload_tree(gcs, raw, "emotion-test", "raw") == 44

    stats = ingest.run(["--input", "gs://emotion-test/raw", "--output", "gs://emotion-test/ingest", "--val-fraction", "0"])
    assert stats["totals"] == {"matched": 44, "written": 42, "rejected": 2, "skipped_non_data": 0, "balanced": True}
    assert stats["written_per_split"] == {"train": 21, "test": 21}
    assert sum(stats["rejected"].values()) == 2 and stats["rejected"].get("duplicate") == 1

    # Everything is in the (emulated) bucket and reads back with the plain GCS client.
    bucket = gcs.bucket("emotion-test")
    assert json.loads(bucket.blob("ingest/stats.json").download_as_bytes()) == stats
    shards = [n for n in blob_names(gcs, "emotion-test", "ingest/tfrecords/") if n.endswith(".tfrecord")]
    assert {n.rsplit("/", 1)[-1].split("-")[0] for n in shards} == {"train", "test"}
    import tensorflow as tf

    records = {}
    for name in shards:
        local = tmp_path / name.rsplit("/", 1)[-1]
        bucket.blob(name).download_to_filename(str(local))
        for serialized in tf.data.TFRecordDataset(str(local)):
            ex = tf.train.Example.FromString(serialized.numpy()).features.feature
            records[ex["source/uri"].bytes_list.value[0].decode()] = ex["split"].bytes_list.value[0].decode()
    assert len(records) == 42 and all(uri.startswith("gs://emotion-test/raw/") for uri in records)
    rejected = read_parquet_rows(gcs, "emotion-test", "ingest/rejected/", tmp_path)
    assert sorted(r["uri"].rsplit("/", 1)[-1] for r in rejected) == ["broken.png", "sad_0_copy.png"]
    assert bucket.blob("ingest/plots/class_distribution.png").exists()

    # Predict reads gs:// images and writes gs:// outputs; the model dir is local (TensorFlow's own
    # gs:// client does not know the emulator).
    summary = predict.run(["--input", "gs://emotion-test/raw", "--output", "gs://emotion-test/preds",
                           "--model", str(model_dir), "--no-face-crop"])
    assert summary["totals"] == {"matched": 44, "predicted": 43, "rejected": 1, "skipped_non_data": 0, "balanced": True}
    rows = read_parquet_rows(gcs, "emotion-test", "preds/predictions/", tmp_path)
    assert len(rows) == 43 and {r["true_label"] for r in rows} == set(LABELS)
    assert all(r["uri"].startswith("gs://emotion-test/raw/") for r in rows)
    assert json.loads(bucket.blob("preds/summary.json").download_as_bytes()) == summary
    assert {"preds/evaluation/metrics.json", "preds/bigquery/predictions.schema.json"} <= set(
        blob_names(gcs, "emotion-test", "preds/")
    )

    # ... and the ingest TFRecords on gs:// (ReadFromTFRecord through Beam's GCS filesystem).
    summary = predict.run(["--input", "gs://emotion-test/ingest", "--output", "gs://emotion-test/preds-tfr",
                           "--model", str(model_dir), "--no-face-crop"])
    assert summary["totals"]["predicted"] == 42 and summary["labelled"] == 42
    rows = read_parquet_rows(gcs, "emotion-test", "preds-tfr/predictions/", tmp_path)
    assert {r["uri"]: r["split"] for r in rows} == records


def test_fan_out_listing_on_gcs_covers_every_object_once(gcs):
    """gs:// units (class prefixes by a delimiter listing, name ranges for a folder's own objects)
    together list exactly what one recursive listing does."""
    from beam_pipelines.base.listing import NAME_RANGE_BOUNDS, list_entries, list_unit, plan_units

    bucket = gcs.bucket("emotion-test")
    names = [f"fan/{c}{i}.png" for c in "0Aa~_z-" for i in range(2)]  # a flat part, across the name ranges
    names += [f"fan/train/happy/{i}.png" for i in range(3)] + ["fan/train/loose.png", "fan/test/sad/x/deep.png"]
    for name in names:
        bucket.blob(name).upload_from_string(b"x")
    units, problems = plan_units("gs://emotion-test/fan")
    assert not problems
    assert sum(1 for u in units if u.path == "gs://emotion-test/fan") == len(NAME_RANGE_BOUNDS) + 1
    assert {u.path for u in units if u.recursive} == {"gs://emotion-test/fan/train/happy",
                                                      "gs://emotion-test/fan/test/sad"}
    fanned = sorted(e.path for u in units for e in list_unit(u, "gs://emotion-test/fan"))
    assert fanned == sorted(e.path for e in list_entries("gs://emotion-test/fan")) == sorted(
        f"gs://emotion-test/{n}" for n in names)


def test_output_ownership_and_lock_on_gcs(gcs, tmp_path):
    """The data-safety rules hold on gs:// as on disk: manifest, staging committed and gone, the lock
    released; a busy output, and files no run wrote, stop a run before it writes anything."""
    from model.errors import UsageError
    from beam_pipelines.base.manifest import OutputLock

    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=1, splits=("train", "test"))
    upload_tree(gcs, raw, "emotion-test", "own/raw")
    bucket = gcs.bucket("emotion-test")
    args = ["--input", "gs://emotion-test/own/raw", "--output", "gs://emotion-test/own/out", "--val-fraction", "0"]

    ingest.run(args)
    manifest = json.loads(bucket.blob("own/out/_run.json").download_as_bytes())
    assert manifest["state"] == "complete" and manifest["counts"]["written"] == 14
    names = blob_names(gcs, "emotion-test", "own/out/")
    assert sorted(f"own/out/{rel}" for rel in manifest["files"]) == sorted(n for n in names if not n.endswith("_run.json"))
    assert not any("_staging" in n or n.endswith("_run.lock") for n in names)

    holder = OutputLock("gs://emotion-test/own/out", "ingest-elsewhere")
    holder.holder["host"] = "another-host"  # a run on another machine: never taken over
    holder.acquire()
    with pytest.raises(UsageError, match="in use by run ingest-elsewhere"):
        ingest.run(args)
    holder.release()
    assert not bucket.blob("own/out/_run.lock").exists()

    bucket.blob("own/out/plots/mine.png").upload_from_string(b"the user's")
    with pytest.raises(UsageError, match="no earlier run of this pipeline wrote"):
        ingest.run(args)
    assert blob_names(gcs, "emotion-test", "own/out/") == sorted(names + ["own/out/plots/mine.png"])
    ingest.run([*args, "--overwrite"])
    assert not bucket.blob("own/out/plots/mine.png").exists()


# =========================================================================== flex templates


def launcher_options(tmp_path, image=WORKER_IMAGE):
    """Roughly what Dataflow's flex-template launcher appends: the job is written to
    --template_location instead of being submitted, after staging to --staging_location."""
    return [
        "--runner=DataflowRunner", f"--project={PROJECT}", f"--region={REGION}",
        "--temp_location=gs://emotion-test/tmp", "--staging_location=gs://emotion-test/staging",
        f"--template_location={tmp_path / 'job_object'}", f"--sdk_container_image={image}",
        "--sdk_location=container", "--job_name=emotion-flex-test",
    ]


def test_flex_template_launch_of_predict_writes_the_dataflow_job(gcs, model_dir, tmp_path, monkeypatch, dataflow_jobs):
    faces = tmp_path / "faces"
    make_split_tree(faces, per_class=1, splits=("test",))
    upload_tree(gcs, faces, "emotion-test", "flex/faces")
    monkeypatch.setenv("EMOTION_PIPELINE", "predict")
    # Workers cannot see a model on the launcher's disk: refused up front...
    assert flex_main.main([
        "--input=gs://emotion-test/flex/faces", "--output=gs://emotion-test/flex/preds", f"--model={model_dir}",
        *launcher_options(tmp_path, GPU_IMAGE)]) == 2
    # ...while 'shipped' resolves to the model installed in the worker image.
    code = flex_main.main([
        "--input=gs://emotion-test/flex/faces", "--output=gs://emotion-test/flex/preds", "--model=shipped",
        "--face_crop=false", "--batch_size=64",
        *launcher_options(tmp_path, GPU_IMAGE),
        "--machine_type=n1-standard-8", "--max_num_workers=4", f"--dataflow_service_options={T4}",
        "--experiments=use_runner_v2", "--experiments=no_use_multiple_sdk_containers",
    ])
    assert code == 0
    (job,) = dataflow_jobs
    assert PREDICT_STEPS | PREDICT_INPUT_STEPS["images"] <= step_names(job)
    spec = json.loads((tmp_path / "job_object").read_text())
    env = spec["environment"]
    (pool,) = env["workerPools"]
    assert pool["machineType"] == "n1-standard-8"
    assert pool["autoscalingSettings"]["maxNumWorkers"] == 4
    assert pool["workerHarnessContainerImage"] == GPU_IMAGE
    assert {c["containerImage"] for c in pool["sdkHarnessContainerImages"]} == {GPU_IMAGE}
    assert env["serviceOptions"] == [T4]
    assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(env["experiments"])
    assert spec["name"] == "emotion-flex-test" and spec["type"] == "JOB_TYPE_BATCH"
    staged = blob_names(gcs, "emotion-test", "staging/")
    assert any(n.endswith("/pipeline.pb") for n in staged), staged
    assert not blob_names(gcs, "emotion-test", "flex/preds/predictions/")  # launched, not run


def test_flex_template_launch_of_ingest_writes_the_dataflow_job(gcs, tmp_path, monkeypatch, dataflow_jobs):
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=1, splits=("train",))
    upload_tree(gcs, raw, "emotion-test", "flex/raw")
    monkeypatch.setenv("EMOTION_PIPELINE", "ingest")
    code = flex_main.main([
        "--input=gs://emotion-test/flex/raw", "--output=gs://emotion-test/flex/ingest", "--image_size=48",
        "--face_crop=true", *launcher_options(tmp_path), "--machine_type=n2-standard-4", "--max_num_workers=20",
    ])
    assert code == 0
    assert INGEST_STEPS <= step_names(dataflow_jobs[0])
    spec = json.loads((tmp_path / "job_object").read_text())
    assert spec["environment"]["workerPools"][0]["workerHarnessContainerImage"] == WORKER_IMAGE


SAMPLE_VALUES = {
    "input": "gs://b/in", "output": "gs://b/out", "model": "gs://b/model", "image_size": "64", "face_crop": "true",
    "val_fraction": "0.2", "test_fraction": ".15", "seed": "3", "num_shards": "8", "max_pixels": "1000000",
    "files_per_batch": "128", "batch_size": "64", "face_detector": "mtcnn", "tta": "flip", "engine": "litert",
    "overwrite": "true",
    "table": "gs://b/table", "run_id": "run-1", "quiet": "true", "shuffle": "records", "incremental": "true",
    "faces": "all", "min_confidence": "0.6", "min_margin": "0.1", "slices": "gs://b/slices.csv", "model_copies": "2",
}


@pytest.mark.parametrize("pipeline", ["ingest", "predict"])
def test_flex_metadata_parameters_map_onto_pipeline_flags(pipeline):
    metadata = json.loads((DEPLOY / "dataflow" / f"{pipeline}.metadata.json").read_text())
    assert metadata["name"] == f"emotion-{pipeline}"
    params = {p["name"]: p for p in metadata["parameters"]}
    assert set(params) == set(flex_main.PARAMETERS[pipeline])
    assert {name for name, p in params.items() if not p.get("isOptional")} == {"input", "output"}
    for name, p in params.items():
        assert p["label"] and p["helpText"], name
        for regex in p.get("regexes", []):
            assert re.fullmatch(regex, SAMPLE_VALUES[name]), (name, regex)
    assert not any(re.fullmatch(r, "/local/path") for r in params["input"]["regexes"])

    argv = [f"--{name}={SAMPLE_VALUES[name]}" for name in params] + ["--runner=DataflowRunner", "--project=p"]
    translated = flex_main.translate(pipeline, argv)
    module = ingest if pipeline == "ingest" else predict
    args, beam_args = module.parse_args(translated)
    assert beam_args == ["--runner=DataflowRunner", "--project=p"]
    assert args.input == "gs://b/in" and args.output == "gs://b/out" and args.face_crop is True
    assert args.files_per_batch == 128 and args.max_pixels == 1000000
    if pipeline == "ingest":
        assert (args.image_size, args.val_fraction, args.test_fraction, args.seed, args.num_shards) == (64, 0.2, 0.15, 3, 8)
        assert args.shuffle == "records"
    else:
        assert (args.model, args.batch_size, args.incremental) == ("gs://b/model", 64, True)


def test_flex_translation_of_switches_and_empty_values():
    t = flex_main.translate
    assert t("predict", ["--input=gs://a", "--face_crop=false"]) == ["--input", "gs://a", "--no-face-crop"]
    assert t("predict", ["--face_crop=auto", "--model="]) == []
    assert t("ingest", ["--face_crop=false", "--image_size", "96"]) == ["--image-size", "96"]
    assert t("ingest", ["--face_crop", "--pipeline=ingest", "--max_num_workers", "5"]) == [
        "--face-crop", "--max_num_workers", "5"]
    with pytest.raises(flex_main.TemplateError):
        t("ingest", ["--face_crop=maybe"])
    with pytest.raises(flex_main.TemplateError):
        t("", [])
    assert flex_main.pipeline_from(["--pipeline=predict"]) == "predict"


# =========================================================================== training on a cluster


def pod_env(index, n=3, **extra):
    return {"NUM_WORKERS": str(n), "TF_SERVICE": "emotion-train", "TF_JOB_NAME": "emotion-train",
            "JOB_COMPLETION_INDEX": str(index), "HOSTNAME": f"emotion-train-{index}-abcde", **extra}


def test_tf_config_per_pod_is_what_multi_worker_strategy_reads(monkeypatch):
    configs = [tf_config.tf_config(pod_env(i)) for i in range(3)]
    workers = [f"emotion-train-{i}.emotion-train:2222" for i in range(3)]
    for i, config in enumerate(configs):
        assert config == {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
    import tensorflow as tf

    monkeypatch.setenv("TF_CONFIG", json.dumps(configs[1]))
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    assert resolver.cluster_spec().as_dict() == {"worker": workers}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)


def test_tf_config_variants_and_errors():
    # StatefulSet: the index is the hostname's ordinal; fully qualified names with a namespace
    sts = {"NUM_WORKERS": "2", "TF_SERVICE": "trainers", "HOSTNAME": "trainer-1", "POD_NAMESPACE": "ml", "TF_PORT": "5000"}
    assert tf_config.tf_config(sts) == {
        "cluster": {"worker": ["trainer-0.trainers.ml.svc.cluster.local:5000", "trainer-1.trainers.ml.svc.cluster.local:5000"]},
        "task": {"type": "worker", "index": 1},
    }
    vertex = {"cluster": {"chief": ["a:2222"], "worker": ["b:2222"]}, "task": {"type": "chief", "index": 0}}
    assert tf_config.tf_config({"TF_CONFIG": json.dumps(vertex), "NUM_WORKERS": "9"}) == vertex
    for bad in ({}, pod_env(0, n=0), pod_env(3, n=3), {**pod_env(0), "TF_SERVICE": ""},
                {"NUM_WORKERS": "2", "TF_SERVICE": "s", "HOSTNAME": "nohostindex"}):
        with pytest.raises(tf_config.ConfigError):
            tf_config.tf_config(bad)


def test_training_entrypoint_exports_tf_config(tmp_path):
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no POSIX shell")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "emotion").write_text('#!/bin/sh\necho "args=$*"\necho "TF_CONFIG=$TF_CONFIG"\n')
    (fake / "emotion").chmod(0o755)
    (fake / "python").symlink_to(sys.executable)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "TF_CONFIG_SCRIPT": str(DEPLOY / "training" / "tf_config.py"), **pod_env(2)}
    entry = str(DEPLOY / "training" / "entrypoint.sh")
    proc = subprocess.run([sh, entry, "train", "--strategy", "multi-worker"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert out["args"] == "train --strategy multi-worker"
    assert json.loads(out["TF_CONFIG"])["task"] == {"type": "worker", "index": 2}
    # a missing setting stops the pod with the reason, before training starts
    proc = subprocess.run([sh, entry, "train"], env={**env, "TF_SERVICE": ""}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "TF_SERVICE" in proc.stderr and "args=" not in proc.stdout


JOB_VALUES = {
    "TRAIN_IMAGE": f"{REGION}-docker.pkg.dev/{PROJECT}/emotion/emotion-train:0.1.0", "DATA": "gs://my-bucket/ingest/fer",
    "MODEL_DIR": "gs://my-bucket/models/run1", "EPOCHS": "30", "BATCH_SIZE": "64", "MACHINE_TYPE": "n1-standard-8",
    "ACCELERATOR_TYPE": "NVIDIA_TESLA_T4", "ACCELERATOR_COUNT": "1", "WORKERS": "3", "SERVICE_ACCOUNT": "",
    "NUM_WORKERS": "4", "CPU": "6", "MEMORY": "24Gi", "GPUS": "1", "GKE_ACCELERATOR": "nvidia-tesla-t4", "GSA_EMAIL": "",
}


def check_train_args(args):
    from model.train import parse_args

    parsed = parse_args(args[1:])
    assert args[0] == "train"
    assert (parsed.strategy, parsed.data, parsed.model_dir) == ("multi-worker", JOB_VALUES["DATA"], JOB_VALUES["MODEL_DIR"])


def test_vertex_job_spec_has_a_chief_and_workers_running_multi_worker_training():
    import yaml

    spec = yaml.safe_load(render.render((DEPLOY / "training" / "vertex-job.yaml").read_text(), JOB_VALUES))
    chief, workers = spec["workerPoolSpecs"]
    assert chief["replicaCount"] == 1 and workers["replicaCount"] == 3
    assert chief["machineSpec"] == workers["machineSpec"] == {
        "machineType": "n1-standard-8", "acceleratorType": "NVIDIA_TESLA_T4", "acceleratorCount": 1}
    for pool in (chief, workers):
        assert pool["containerSpec"]["imageUri"] == JOB_VALUES["TRAIN_IMAGE"]
        check_train_args(pool["containerSpec"]["args"])
    assert "serviceAccount" not in spec  # optional line dropped when empty
    cpu = yaml.safe_load(render.render((DEPLOY / "training" / "vertex-job.yaml").read_text(),
                                       {**JOB_VALUES, "ACCELERATOR_COUNT": "0", "SERVICE_ACCOUNT": "sa@p.iam"}))
    assert cpu["workerPoolSpecs"][0]["machineSpec"] == {"machineType": "n1-standard-8"}
    assert cpu["serviceAccount"] == "sa@p.iam"
    with pytest.raises(KeyError, match="DATA"):
        render.render((DEPLOY / "training" / "vertex-job.yaml").read_text(), {k: v for k, v in JOB_VALUES.items() if k != "DATA"})


def test_kubernetes_manifest_gives_each_pod_a_resolvable_tf_config():
    import yaml

    docs = {d["kind"]: d for d in yaml.safe_load_all(render.render((DEPLOY / "training" / "k8s" / "train.yaml").read_text(), JOB_VALUES))}
    service, job = docs["Service"], docs["Job"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    (container,) = pod["containers"]
    check_train_args(container["args"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NUM_WORKERS"] == "4" and env["TF_SERVICE"] == service["metadata"]["name"]
    # Indexed Job pods are named <job-name>-<index>; with subdomain=<service> that name resolves.
    config = tf_config.tf_config({**env, "JOB_COMPLETION_INDEX": "3", "HOSTNAME": f"{job['metadata']['name']}-3"})
    assert config["cluster"]["worker"][3] == f"{job['metadata']['name']}-3.{service['metadata']['name']}:2222"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    cpu_only = list(yaml.safe_load_all(render.render((DEPLOY / "training" / "k8s" / "train.yaml").read_text(), {**JOB_VALUES, "GPUS": "0"})))
    cpu_pod = [d for d in cpu_only if d["kind"] == "Job"][0]["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu_pod and "nvidia.com/gpu" not in cpu_pod["containers"][0]["resources"]["limits"]


@pytest.mark.parametrize("dockerfile", ["dataflow/Dockerfile", "dataflow/Dockerfile.launcher", "training/Dockerfile"])
def test_dockerfiles_copy_only_files_that_exist(dockerfile):
    text = (DEPLOY / dockerfile).read_text().replace("\\\n", " ")
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        sources = words[1:-1]
        matched = [s for s in sources if list(REPO.glob(s))]
        assert matched and all(s.endswith("*") or s in matched for s in sources), (dockerfile, line)
    if dockerfile == "dataflow/Dockerfile":
        assert "FROM apache/beam_python3.11_sdk:${BEAM_VERSION}" in text and "ARG BEAM_VERSION=2.77.0" in text
        assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text


def test_constraints_agree_with_pyproject():
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    constraints = (DEPLOY / "dataflow" / "constraints.txt").read_text()
    extras = deps["optional-dependencies"]
    assert "apache-beam==2.77.0" in constraints and "apache-beam[gcp]==2.77.*" in extras["pipelines"]
    assert "tensorflow==2.21.*" in constraints and "tensorflow==2.21.*" in extras["training"]
    # The training image installs no Beam; the README's `.[dev]` install installs everything.
    assert not any(d.startswith("apache-beam") for d in deps["dependencies"] + extras["training"])
    assert extras["all"] == ["emotion-pipeline[pipelines,training]"] and "emotion-pipeline[all]" in extras["dev"]
    for dockerfile, default in (("training/Dockerfile", "training,gpu"), ("dataflow/Dockerfile", "all")):
        assert f"ARG EXTRAS={default}\n" in (DEPLOY / dockerfile).read_text(), dockerfile
    assert "opencv-python-headless>=4.10,<5" in constraints
    assert any(d.startswith("gcp-storage-emulator") for d in deps["optional-dependencies"]["dev"])
    assert deps["optional-dependencies"]["gpu"] == ["tensorflow[and-cuda]==2.21.*"]
