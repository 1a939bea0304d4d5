"""`emotion demo` end to end on the embedded sample, and `emotion report` on its own.

The demo compares its freshly trained model with the shipped model; when model/shipped is
not there (a checkout without it), the tiny_model fixture stands in for it.
"""

from __future__ import annotations

import base64
import json
import re
import shutil

import pyarrow.parquet as pq
import pytest

from conftest import SHIPPED_MODEL, run_cli

PREDICT_DIRS = ("predict-trained", "predict-shipped", "predict-raw-shipped")
PREDICT_PLOTS = ("confusion_matrix", "per_class", "reliability", "accuracy_coverage", "samples", "low_confidence",
                 "predicted_classes")


@pytest.fixture(scope="module")
def shipped(request):
    if (SHIPPED_MODEL / "metadata.json").exists():
        return SHIPPED_MODEL
    return request.getfixturevalue("tiny_model")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, shipped):
    out = tmp_path_factory.mktemp("demo") / "emotion-demo"
    proc = run_cli("demo", "--output", out, "--shipped-model", shipped)
    return out, proc


def _one_line_error(proc, command):
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"emotion {command}: error: ")
    return lines[0]


def test_demo_writes_every_stage(demo):
    out, _ = demo
    ingest = out / "ingest"
    stats = json.loads((ingest / "stats.json").read_text())
    assert stats["totals"]["balanced"]
    assert stats["totals"]["written"] == 210  # 7 classes x 30 images
    assert set(stats["rejected"]) == {"empty_file", "truncated_image", "not_an_image", "unknown_class"}
    assert stats["written_per_split"]["test"] > 0 and stats["written_per_split"]["val"] > 0
    assert list((ingest / "tfrecords").glob("test-*.tfrecord"))
    assert (ingest / "plots" / "class_distribution.png").stat().st_size > 1000
    assert sum(pq.read_table(p).num_rows for p in (ingest / "rejected").glob("*.parquet")) == 4

    train = out / "train"
    meta = json.loads((train / "metadata.json").read_text())
    from model import recipe

    assert meta["arch"] == recipe.load("demo")["arch"]
    assert meta["recipe"]["config"] == "demo"
    # Training scores val only: test is sealed until `emotion evaluate --final` (never run by the demo).
    assert {"val", "val_flip_tta"} <= set(meta["metrics"])
    # Fine-tuned from the shipped weights, its model line carries the shipped model's scorings and adds none.
    shipped_meta = json.loads((SHIPPED_MODEL / "metadata.json").read_text())
    assert not any(name.startswith("test") for name in meta["metrics"])
    assert meta["test_scoring"] == shipped_meta["test_scoring"] and meta["test_scoring"]["count"] >= 1
    assert (train / "history.csv").read_text().count("\n") == 1 + meta["training"]["epochs_run"]
    assert (train / "plots" / "training_curves.png").exists()
    assert (train / "export" / "model.keras").exists()

    for name in PREDICT_DIRS:
        folder = out / name
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["totals"]["balanced"], name
        for f in ("metrics.json", "per_class.parquet", "confusion.parquet"):
            assert (folder / "evaluation" / f).exists(), (name, f)
        for plot in PREDICT_PLOTS:
            assert (folder / "plots" / f"{plot}.png").exists(), (name, plot)
        assert list((folder / "predictions").glob("*.parquet")), name
    test_n = stats["written_per_split"]["test"]
    trained = json.loads((out / "predict-trained" / "summary.json").read_text())
    shipped = json.loads((out / "predict-shipped" / "summary.json").read_text())
    assert trained["totals"]["predicted"] == shipped["totals"]["predicted"] == test_n
    assert trained["model_version"] == meta["model_version"] != shipped["model_version"]
    # The demo's training visibly learns: fine-tuned from the shipped weights it stays far above
    # chance (1/7) on the held-out test split, where a net trained from zero predicted one class.
    assert trained["accuracy"] > 0.4 and trained["macro_f1"] > 0.3, trained
    predicted = pq.read_table(next((out / "predict-trained" / "predictions").glob("*.parquet")))
    assert len(set(predicted.column("predicted_label").to_pylist())) >= 5
    raw = json.loads((out / "predict-raw-shipped" / "summary.json").read_text())
    assert raw["rejected"] == {"empty_file": 1, "not_an_image": 1, "truncated_image": 1}  # the dead-letter path
    rows = pq.read_table(next((out / "predict-raw-shipped" / "rejected").glob("*.parquet"))).to_pylist()
    assert sorted(r["reason"] for r in rows) == ["empty_file", "not_an_image", "truncated_image"]
    # The two models compared image by image, on the same test images.
    comparison = json.loads((out / "compare-trained-vs-shipped" / "compare" / "comparison.json").read_text())
    trained = json.loads((out / "predict-trained" / "summary.json").read_text())
    shipped = json.loads((out / "predict-shipped" / "summary.json").read_text())
    assert comparison["images_in_both"] == trained["totals"]["predicted"] == shipped["totals"]["predicted"]
    assert comparison["accuracy_a"] == pytest.approx(trained["accuracy"])
    assert comparison["accuracy_b"] == pytest.approx(shipped["accuracy"])
    page = (out / "report.html").read_text()
    assert "Trained (a) against shipped (b), image by image" in page and "Most confident disagreements" in page


def test_demo_prints_progress_and_summary(demo):
    out, proc = demo
    stdout = proc.stdout
    for stage in ("1/6 ingest", "2/6 train", "3/6 predict", "4/6 predict", "5/6 compare", "6/6 report"):
        assert stdout.count(stage) == 1, stage
    assert "export: best weights" in stdout
    assert re.search(r"\[\s*\d+\.\ds\]\s+epoch 1/\d+", stdout)
    assert "215 files matched" in stdout
    table = stdout[stdout.index("Demo finished in") :]
    for row in ("stage", "ingest", "train", "test, trained model", "test, shipped model", "raw folder", "report"):
        assert re.search(rf"^\s+{re.escape(row)}\s", table, re.MULTILINE), row
    assert "val macro-F1" in table and "accuracy" in table
    assert str(out / "report.html") in table
    assert "Traceback" not in proc.stderr
    assert "memory usage cannot be fetched" not in proc.stderr


def test_demo_report_is_self_contained(demo):
    out, _ = demo
    page = (out / "report.html").read_text()
    for heading in (
        "Overview",
        "Models compared",
        "Data: the embedded sample",
        "Class balance",
        "Duplicates and leakage",
        "Image statistics",
        "Training: recipe demo",
        "Metrics of the exported (best) weights",
        "flip TTA",
        "Test split: freshly trained model",
        "Test split: shipped model",
        "Raw sample folder: shipped model",
        "Per-class metrics",
        "Sample predictions",
        "Rejected inputs",
        "truncated_image",
        "unknown_class",
    ):
        assert heading in page, heading
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 1 + 1 + len(PREDICT_DIRS) * len(PREDICT_PLOTS)
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert not re.search(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower()
    # the totals add up, and the page says so
    assert "215 matched = 210 written + 4 rejected + 1 skipped" in page
    assert "&#10007;" not in page and "could not be read" not in page  # no failed check, no part lost


def test_report_on_a_predict_only_folder_escapes_text(demo, tmp_path):
    out, _ = demo
    folder = tmp_path / "preds"
    shutil.copytree(out / "predict-raw-shipped", folder)
    summary = json.loads((folder / "summary.json").read_text())
    summary["input"] = "/data/<b>faces</b> & more"
    (folder / "summary.json").write_text(json.dumps(summary))
    proc = run_cli("report", "--output", folder)
    assert str(folder / "report.html") in proc.stdout
    page = (folder / "report.html").read_text()
    assert "/data/&lt;b&gt;faces&lt;/b&gt; &amp; more" in page and "<b>faces</b>" not in page
    assert page.count("data:image/png;base64,") == len(PREDICT_PLOTS)
    assert "Rejected inputs" in page and "empty_file" in page and "Per-class metrics" in page
    assert "Class balance" not in page and "Training" not in page  # only what is there


def test_report_errors_are_one_line(tmp_path):
    line = _one_line_error(run_cli("report", "--output", "/nonexistent/emotion", check=False), "report")
    assert "/nonexistent/emotion" in line
    line = _one_line_error(run_cli("report", "--output", tmp_path, check=False), "report")
    assert "no ingest, train, predict or compare output" in line


def test_demo_user_errors_are_one_line(tmp_path):
    assert "--bogus-option" in _one_line_error(run_cli("demo", "--bogus-option", check=False), "demo")
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, expected in (
        (["--input", tmp_path / "missing"], "does not exist"),
        (["--input", empty], "no files under --input"),
        (["--shipped-model", tmp_path, "--output", tmp_path / "o"], "not an exported model directory"),
    ):
        assert expected in _one_line_error(run_cli("demo", *args, check=False), "demo")
