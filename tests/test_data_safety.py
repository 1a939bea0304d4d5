"""The data-safety promise, probe by probe: a run removes only what an earlier run wrote, a failed
run leaves the previous output as it was, paths are literal, every file under the input is
accounted, one run per output at a time, and a user's mistake is one line and exit 2.

Each test is a probe a careless or hostile user would try (small data, seconds each). The model-side
probes (interrupted export, train errors) are in test_model_safety.py; the decoding bombs in
test_hostile_decoding.py, whose corpus runs end to end through ingest and predict here.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from conftest import REPO, SHIPPED_MODEL, make_split_tree, synthetic_face, write_image
from hostile_corpus import CORPUS, WRITTEN, preprocess_expected, write_corpus

from beam_pipelines import cli
from beam_pipelines.ingest import launcher as ingest
from beam_pipelines.predict import launcher as predict
from model.errors import UsageError
from beam_pipelines.base.manifest import LOCK, MANIFEST, OutputLock


def tree_snapshot(root: pathlib.Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes), to prove a folder was left as it was."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(capsys, *args) -> tuple[int, str]:
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def rejected_rows(out: pathlib.Path) -> list[dict]:
    return [row for f in sorted((out / "rejected").glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


@pytest.fixture
def faces(tmp_path) -> pathlib.Path:
    """14 labelled faces (2 per class): enough for predict to run in seconds."""
    root = tmp_path / "faces"
    make_split_tree(root, per_class=2, splits=("test",))
    return root / "test"


# =========================================================================== outputs are owned


def test_a_run_refuses_an_output_holding_files_it_did_not_write(capsys, tmp_path, faces):
    out = tmp_path / "out"
    for name in ("plots/mine.png", "predictions/mine.parquet", "evaluation/notes.txt", "summary.json"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f"the user's own {name}")
    before = tree_snapshot(out)

    code, err = run_cli(capsys, "predict", "--input", faces, "--output", out)
    assert code == 2
    assert "4 file(s) no earlier run of this pipeline wrote" in err and "--overwrite" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert tree_snapshot(out) == before  # nothing deleted, nothing written

    # --overwrite replaces them, and from then on they are the pipeline's files.
    assert predict.run(["--input", str(faces), "--output", str(out), "--overwrite"])["totals"]["predicted"] == 14
    assert not (out / "plots" / "mine.png").exists() and not (out / "evaluation" / "notes.txt").exists()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["state"] == "complete" and "summary.json" in manifest["files"]
    assert all((out / rel).is_file() for rel in manifest["files"])


def test_a_rerun_removes_only_what_the_manifest_lists(tmp_path, faces):
    out = tmp_path / "out"
    predict.run(["--input", str(faces), "--output", str(out)])
    first = json.loads((out / MANIFEST).read_text())
    (out / "notes.md").write_text("the user's notes next to the results")
    predict.run(["--input", str(faces), "--output", str(out)])
    second = json.loads((out / MANIFEST).read_text())
    assert (out / "notes.md").read_text() == "the user's notes next to the results"
    assert second["run_id"] != first["run_id"] and second["state"] == "complete"
    assert second["counts"] == {"matched": 14, "predicted": 14, "rejected": 0, "skipped_non_data": 0, "balanced": True}
    assert sorted(second["files"]) == sorted(str(p.relative_to(out)) for p in out.rglob("*")
                                             if p.is_file() and p.name not in (MANIFEST, LOCK, "notes.md"))
    assert not (out / "_staging").exists()


def test_a_failed_run_leaves_the_previous_output_as_it_was(capsys, tmp_path, faces):
    out = tmp_path / "out"
    predict.run(["--input", str(faces), "--output", str(out)])
    before = tree_snapshot(out)

    broken = tmp_path / "broken-model"
    shutil.copytree(SHIPPED_MODEL, broken)
    (broken / "export" / "model.keras").write_bytes(b"half a file")
    code, err = run_cli(capsys, "predict", "--input", faces, "--output", out, "--model", broken, "--engine", "keras")
    assert code == 2 and "model.keras" in err and "Traceback" not in err
    assert tree_snapshot(out) == before
    (broken / "export" / "model_int8.tflite").write_bytes(b"half a file")  # the default engine's file
    code, err = run_cli(capsys, "predict", "--input", faces, "--output", out, "--model", broken)
    assert code == 2 and "model_int8.tflite" in err and "Traceback" not in err
    assert tree_snapshot(out) == before


def test_a_pipeline_failing_midway_leaves_the_previous_output_as_it_was(tmp_path, faces, monkeypatch):
    out = tmp_path / "out"
    predict.run(["--input", str(faces), "--output", str(out)])
    before = tree_snapshot(out)

    def fail(*args, **kwargs):
        raise RuntimeError("a worker died while writing the summary")

    # The DirectRunner runs DoFns in this process: the failure comes after predictions were staged.
    monkeypatch.setattr(predict.WriteSummary, "process", fail)
    with pytest.raises(Exception, match="a worker died"):
        predict.run(["--input", str(faces), "--output", str(out)])
    assert tree_snapshot(out) == before
    assert not (out / "_staging").exists()


def test_output_and_input_paths_are_literal_not_globs(tmp_path):
    for name in ("proj1", "proj2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "stats.json").write_text("the user's project file")
    make_split_tree(tmp_path / "faces [2024]", per_class=1, splits=("train", "test"))
    make_split_tree(tmp_path / "faces 2", per_class=3, splits=("train", "test"), seed=5)

    stats = ingest.run(["--input", str(tmp_path / "faces [2024]"), "--output", str(tmp_path / "proj?")])
    assert stats["totals"]["matched"] == 14  # not the 42 files of faces 2/
    assert all(row.startswith(str(tmp_path / "faces [2024]")) for row in _source_uris(tmp_path / "proj?"))
    for name in ("proj1", "proj2"):
        assert (tmp_path / name / "stats.json").read_text() == "the user's project file"
    assert (tmp_path / "proj?" / "stats.json").exists()

    # predict reads an ingest output folder with glob characters in its name, literally.
    summary = predict.run(["--input", str(tmp_path / "proj?"), "--output", str(tmp_path / "pred [1]")])
    assert summary["totals"]["matched"] == stats["totals"]["written"]


def _source_uris(ingest_out: pathlib.Path) -> list[str]:
    import tensorflow as tf

    uris = []
    for f in sorted((ingest_out / "tfrecords").glob("*.tfrecord")):
        for record in tf.data.TFRecordDataset(str(f)):
            uris.append(tf.train.Example.FromString(record.numpy()).features.feature["source/uri"]
                        .bytes_list.value[0].decode())
    return uris


# =========================================================================== every file accounted


def test_symlinked_folders_are_followed_and_broken_links_rejected(tmp_path):
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=1, splits=("train", "test"))
    elsewhere = tmp_path / "elsewhere" / "happy"
    for i in range(3):
        write_image(elsewhere / f"linked_{i}.png", synthetic_face(900 + i, label=3))
    (raw / "train" / "joy").symlink_to(elsewhere, target_is_directory=True)  # a class folder that is a link
    (raw / "train" / "sad" / "gone.png").symlink_to(tmp_path / "deleted.png")  # dangling
    (raw / "test" / "angry" / "loop").symlink_to(raw, target_is_directory=True)  # back to the root

    out = tmp_path / "out"
    stats = ingest.run(["--input", str(raw), "--output", str(out)])
    t = stats["totals"]
    assert t["matched"] == 14 + 3 + 2 and t["balanced"]
    assert t["written"] == 17
    assert stats["written"]["train"]["happy"] == 1 + 3
    reasons = {row["uri"].rsplit("/", 1)[-1]: row["reason"] for row in rejected_rows(out)}
    assert reasons == {"gone.png": "broken_link", "loop": "symlink_loop"}

    pred = predict.run(["--input", str(raw), "--output", str(tmp_path / "pred")])
    assert pred["totals"]["balanced"] and pred["rejected"] == {"broken_link": 1, "symlink_loop": 1}
    assert pred["totals"]["predicted"] == 17


def test_the_hostile_corpus_is_accounted_file_by_file_in_ingest_and_predict(tmp_path):
    raw = tmp_path / "hostile"
    write_corpus(raw)
    decodes = {e.path for e in CORPUS if preprocess_expected(e) == WRITTEN}
    # What decodes may still be dropped by ingest's data rules (blank, or a copy of another entry).
    data_rules = {"written", "blank_image", "duplicate", "conflicting_labels"}

    out = tmp_path / "ingest"
    stats = ingest.run(["--input", str(raw), "--output", str(out), "--val-fraction", "0", "--test-fraction", "0"])
    assert stats["totals"]["balanced"] and stats["totals"]["matched"] == len(CORPUS)
    rows = [(row["uri"][len(str(raw)) + 1:], row["reason"]) for row in rejected_rows(out)]
    rows += [(uri[len(str(raw)) + 1:], "written") for uri in _source_uris(out)]
    outcome = dict(rows)
    assert len(rows) == len(outcome) == len(CORPUS)  # each file exactly once
    for entry in CORPUS:
        if entry.path in decodes:
            assert outcome[entry.path] in data_rules, entry
        else:
            assert outcome[entry.path] == entry.expected, entry
    for distinct in ("neutral/sixteen_bit.png", "neutral/alpha.png", "fear/visage_ünïcødé_😀.png",
                     "fear/[2024] shot? *final*.jpg"):
        assert outcome[distinct] == "written", distinct

    pred = predict.run(["--input", str(raw), "--output", str(tmp_path / "pred")])
    assert pred["totals"]["balanced"] and pred["totals"]["matched"] == len(CORPUS)
    pred_rejected = {row["uri"][len(str(raw)) + 1:]: row["reason"] for row in rejected_rows(tmp_path / "pred")}
    # predict has no blank-image or duplicate rule: it scores everything that decodes.
    assert pred_rejected == {e.path: e.expected for e in CORPUS if e.path not in decodes}
    assert pred["totals"]["predicted"] == len(decodes)


# =========================================================================== one run per output


def test_a_second_run_into_a_busy_output_names_the_run_that_holds_it(capsys, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_split_tree(raw, per_class=1, splits=("train", "test"))
    holder = OutputLock(str(out), "ingest-20260101T000000Z-deadbeef")
    holder.acquire()
    try:
        code, err = run_cli(capsys, "ingest", "--input", raw, "--output", out)
        assert code == 2 and "in use by run ingest-20260101T000000Z-deadbeef" in err
        assert not (out / "stats.json").exists()
    finally:
        holder.release()
    assert ingest.run(["--input", str(raw), "--output", str(out)])["totals"]["written"] == 14


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_split_tree(raw, per_class=1, splits=("train", "test"))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from beam_pipelines.base.manifest import OutputLock; "
         "OutputLock(sys.argv[1], 'killed-run').acquire(); print('locked', flush=True); time.sleep(60)", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UsageError, match="killed-run"):
        ingest.run(["--input", str(raw), "--output", str(out)])
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert ingest.run(["--input", str(raw), "--output", str(out)])["totals"]["written"] == 14


def test_a_killed_runs_staging_is_removed_by_the_next_run(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_split_tree(raw, per_class=1, splits=("train", "test"))
    ingest.run(["--input", str(raw), "--output", str(out)])
    good = tree_snapshot(out / "tfrecords")
    # What a kill -9 mid-run leaves: a "running" manifest naming its staging folder, half-written files.
    manifest = json.loads((out / MANIFEST).read_text())
    staging = out / "_staging" / "ingest-killed"
    (staging / "tfrecords").mkdir(parents=True)
    (staging / "tfrecords" / "train-00000-of-00001.tfrecord").write_bytes(b"half")
    (out / MANIFEST).write_text(json.dumps({**manifest, "state": "running", "run_id": "ingest-killed",
                                            "staging": "_staging/ingest-killed"}))
    assert tree_snapshot(out / "tfrecords") == good  # the results of the last good run are intact

    ingest.run(["--input", str(raw), "--output", str(out)])
    assert not (out / "_staging").exists()
    assert tree_snapshot(out / "tfrecords") == good  # same input -> byte-identical shards


# =========================================================================== degenerate splits


def test_a_val_left_tiny_by_leakage_removal_is_carved_afresh_from_train(tmp_path):
    """The Kaggle set's shape: val and test are byte copies of train images."""
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=90, splits=("train",))  # 630 distinct training images
    for i, path in enumerate(sorted((raw / "train").rglob("*.png"))[::9]):
        for split in ("val", "test"):
            target = raw / split / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    out = tmp_path / "out"
    stats = ingest.run(["--input", str(raw), "--output", str(out)])
    assert stats["totals"]["balanced"]
    carved = stats["splits_carved_from_train"]
    assert set(carved) == {"val"} and carved["val"]["found"] == 0
    assert 40 <= stats["written_per_split"]["val"] <= 90  # ~10% of ~560 remaining training images
    assert any("fresh val" in w for w in stats["warnings"])
    # The carve is by content hash: no image is in two splits.
    uris = _source_uris(out)
    assert len(uris) == len(set(uris)) == stats["totals"]["written"]


# =========================================================================== user mistakes, storage


def test_gs_paths_without_credentials_fail_fast_naming_adc(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))  # no gcloud ADC file
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # and no metadata server
    started = time.monotonic()
    code, err = run_cli(capsys, "ingest", "--input", "gs://some-bucket/faces", "--output", tmp_path / "out")
    assert code == 2 and "Application Default Credentials" in err and "Traceback" not in err
    assert time.monotonic() - started < 30
    assert not (tmp_path / "out").exists()


def test_gs_paths_with_no_network_fail_fast(capsys, tmp_path, monkeypatch):
    from beam_pipelines.base import files

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(files, "GCS_TIMEOUT_S", 3)
    started = time.monotonic()
    code, err = run_cli(capsys, "predict", "--input", "gs://some-bucket/faces", "--output", tmp_path / "out")
    assert code == 2 and "cannot reach gs://some-bucket" in err and "Traceback" not in err
    assert time.monotonic() - started < 30


def test_max_pixels_above_the_decoder_ceiling_is_a_usage_error(capsys, tmp_path, faces):
    code, err = run_cli(capsys, "ingest", "--input", faces, "--output", tmp_path / "out", "--max-pixels", str(10**10))
    assert code == 2 and "OPENCV_IO_MAX_IMAGE_PIXELS" in err


def test_an_interruption_after_the_commit_keeps_the_committed_run(tmp_path, faces, monkeypatch):
    """Ctrl-C in the milliseconds between the commit and the claim letting go: the output is the new
    run's, whole, and its manifest must say so (putting the old one back described files now gone)."""
    out = tmp_path / "out"
    predict.run(["--input", str(faces), "--output", str(out), "--run-id", "first"])
    real = predict._run_pipeline

    def commit_then_interrupt(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "_run_pipeline", commit_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        predict.run(["--input", str(faces), "--output", str(out), "--run-id", "second"])
    manifest = json.loads((out / MANIFEST).read_text())
    assert (manifest["run_id"], manifest["state"]) == ("second", "complete")
    assert not (out / "_staging").exists()
    assert json.loads((out / "summary.json").read_text())["totals"]["balanced"]
    listed = set(manifest["files"])
    present = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name not in (MANIFEST, LOCK)}
    assert listed == present
