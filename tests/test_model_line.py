"""The model line's records: test is scored only by the final step, which counts every scoring in
metadata.json (a count no re-export resets); the recipe and TTA rule that trained and those used at export
are kept apart and the card says how the TTA was decided; --import-run refuses a run trained on other data
or recipe values; the temperature is fitted on val; `python -m model.quantize` writes only through the gate
and under the directory's lock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli
from model import evaluate, metrics


def module(*args, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def one_line_refusal(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def model_copy(tiny_model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy, ignore=shutil.ignore_patterns("_train.lock"))
    return copy


def _metadata(model_dir):
    return json.loads((model_dir / "metadata.json").read_text())


# --------------------------------------------------------------------------- test is sealed


def test_choosing_cannot_score_test(tiny_ingest):
    with pytest.raises(evaluate.SealedSplitError, match="final step"):
        evaluate.score_split(lambda x: x, str(tiny_ingest), "test", 48)
    with pytest.raises(evaluate.SealedSplitError):
        evaluate.evaluate_all(lambda x: x, str(tiny_ingest), ["val", "test"], 48)
    proc = module("model.evaluate", "--model", "shipped", "--data", tiny_ingest, "--splits", "test")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_the_final_step_counts_every_scoring_and_a_reexport_keeps_the_count(model_copy, tiny_ingest):
    trained = _metadata(model_copy)
    assert trained["test_scoring"]["count"] == 0 and trained["tta"]["decided"] == "chosen on val"
    assert "not scored for this model line" in (model_copy / "MODEL_CARD.md").read_text()

    module("model.evaluate", "--model", model_copy, "--data", tiny_ingest, "--final", check=True)
    meta = _metadata(model_copy)
    name = evaluate.metric_name("test", meta["recommended_tta"])
    assert meta["test_scoring"]["count"] == 1 and [n for n in meta["metrics"] if n.startswith("test")] == [name]
    assert meta["metrics"][name]["examples"] == json.loads((tiny_ingest / "stats.json").read_text())[
        "written_per_split"]["test"]
    event = meta["test_scoring"]["events"][0]
    assert event["model_version"] == meta["model_version"] and "--final" in event["command"]
    assert set(meta["calibration"]["test"]) >= {"ece_before", "ece_after"}
    assert "scored **1 time** for this model line" in (model_copy / "MODEL_CARD.md").read_text()

    before = (model_copy / "metadata.json").read_bytes()
    one_line_refusal(module("model.evaluate", "--model", model_copy, "--data", tiny_ingest, "--final"),
                     "scored 1 time", "--again")
    assert (model_copy / "metadata.json").read_bytes() == before
    module("model.evaluate", "--model", model_copy, "--data", tiny_ingest, "--final", "--again", check=True)
    assert _metadata(model_copy)["test_scoring"]["count"] == 2

    # A re-export (nothing left to train) under another TTA rule: the count stays, test is not scored,
    # and the records keep the rule that trained apart from the one that exported.
    run_cli("train", "--data", tiny_ingest, "--model-dir", model_copy, "--arch", "vgg_xs", "--epochs", "2",
            "--batch-size", "32", "--steps-per-epoch", "4", "--tta", "none")
    meta = _metadata(model_copy)
    assert meta["training"]["steps"] == meta["training"]["resumed_from_step"]  # nothing trained
    assert meta["test_scoring"]["count"] == 2
    assert not [n for n in meta["metrics"] if n.startswith("test")]
    assert meta["trained_with"]["tta_rule"] == "auto" and meta["exported_with"]["tta_rule"] == "none"
    assert meta["tta"] == {**meta["tta"], "mode": "none", "decided": "fixed by the recipe"}
    card = (model_copy / "MODEL_CARD.md").read_text()
    assert "augmentation was fixed by the recipe" in card and "augmentation was chosen on val" not in card
    assert "TTA rule auto when trained, none at export" in card and "scored **2 times**" in card


def test_the_final_step_refuses_another_data_set(model_copy, tiny_ingest, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_ingest, other)
    stats = json.loads((other / "stats.json").read_text())
    (other / "stats.json").write_text(json.dumps({**stats, "fingerprint": "another-data-set"}))
    one_line_refusal(module("model.evaluate", "--model", model_copy, "--data", other, "--final"), "fingerprint")
    assert _metadata(model_copy)["test_scoring"]["count"] == 0


def test_a_hand_edited_count_is_refused(model_copy, tiny_ingest):
    meta = _metadata(model_copy)
    meta["test_scoring"] = {"count": 0, "events": [{"when": "2026-01-01"}]}
    (model_copy / "metadata.json").write_text(json.dumps(meta))
    one_line_refusal(module("model.evaluate", "--model", model_copy, "--data", tiny_ingest, "--final"),
                     "test_scoring")


# --------------------------------------------------------------------------- --import-run


def _portable_run(folder, fingerprint, recipe):
    folder.mkdir()
    (folder / "best.weights.h5").write_bytes(b"")
    (folder / "history.csv").write_text("epoch\n1\n")
    (folder / "run.json").write_text(json.dumps({"data_fingerprint": fingerprint, "config": "r", "recipe": recipe}))
    return folder


def test_import_run_refuses_a_run_of_other_data_or_recipe_values(tiny_ingest, tmp_path):
    fingerprint = json.loads((tiny_ingest / "stats.json").read_text())["fingerprint"]
    flags = ["--data", tiny_ingest, "--arch", "vgg_xs", "--batch-size", "32"]
    other_data = _portable_run(tmp_path / "a", "0000-1", {"arch": "vgg_xs", "batch_size": 32})
    proc = run_cli("train", *flags, "--model-dir", tmp_path / "m1", "--import-run", other_data, check=False)
    one_line_refusal(proc, "trained on data 0000-1", fingerprint)
    other_recipe = _portable_run(tmp_path / "b", fingerprint, {"arch": "vgg_m", "batch_size": 32, "lr": 0.2})
    proc = run_cli("train", *flags, "--model-dir", tmp_path / "m2", "--import-run", other_recipe, check=False)
    one_line_refusal(proc, "other recipe values", "arch 'vgg_m' there, 'vgg_xs' here", "lr 0.2 there, None here")
    assert not (tmp_path / "m1").exists() and not (tmp_path / "m2").exists()


# --------------------------------------------------------------------------- calibration


def test_the_fitted_temperature_is_the_one_that_made_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (1, 20000, 7))
    truth = 2.5
    probs = metrics.tempered_probabilities(logits, truth)
    labels = np.array([rng.choice(7, p=p) for p in probs])
    fitted = metrics.fit_temperature(logits, labels)
    assert abs(fitted - truth) < 0.15
    scored = evaluate.Scored(labels, logits)
    record = evaluate.calibration_record(scored, "none")
    assert record["val"]["ece_after"] < record["val"]["ece_before"] / 3
    assert record["val"]["nll_after"] < record["val"]["nll_before"]


# --------------------------------------------------------------------------- python -m model.quantize


def test_quantize_refuses_while_the_directory_is_locked(model_copy, tiny_ingest):
    from model import ownership
    from model.gate import RootLock

    before = {p: p.read_bytes() for p in model_copy.rglob("*") if p.is_file() and p.name != "_train.lock"}
    lock = RootLock(str(model_copy), "train-held-by-the-test", flag="--model-dir", name=ownership.LOCK)
    lock.acquire()
    try:
        proc = module("model.quantize", "--model-dir", model_copy, "--data", tiny_ingest)
    finally:
        lock.release()
    one_line_refusal(proc, "in use by run train-held-by-the-test")
    assert {p: p.read_bytes() for p in model_copy.rglob("*") if p.is_file() and p.name != "_train.lock"} == before


def test_quantize_replaces_a_hard_link_and_never_writes_through_it(tiny_ingest, tmp_path):
    """The engine file hard-linked to a file outside the model directory: the new file takes its name,
    the outside file keeps its bytes."""
    copy = tmp_path / "fast"
    shutil.copytree(REPO / "model" / "fast", copy)
    engine_file = copy / "export" / "model_int8.tflite"
    shared = tmp_path / "shared.tflite"
    shared.write_bytes(b"someone else's file")
    engine_file.unlink()
    os.link(shared, engine_file)
    proc = module("model.quantize", "--model-dir", copy, "--data", tiny_ingest)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert shared.read_bytes() == b"someone else's file"
    assert os.stat(engine_file).st_ino != os.stat(shared).st_ino
    entry = _metadata(copy)["engines"]["litert_int8"]
    assert entry["mode"] == "dynamic-range" and entry["check"]["split"] == "val"
    import hashlib

    assert hashlib.sha256(engine_file.read_bytes()).hexdigest() == entry["sha256"]


def test_quantize_refuses_an_export_folder_that_links_out(model_copy, tiny_ingest, tmp_path):
    moved = tmp_path / "outside" / "export"
    moved.parent.mkdir()
    shutil.move(model_copy / "export", moved)
    (model_copy / "export").symlink_to(moved, target_is_directory=True)
    snapshot = {p: p.read_bytes() for p in moved.rglob("*") if p.is_file()}
    proc = module("model.quantize", "--model-dir", model_copy, "--data", tiny_ingest)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    assert {p: p.read_bytes() for p in moved.rglob("*") if p.is_file()} == snapshot


def test_quantize_help_says_what_each_mode_calibrates_on():
    proc = module("model.quantize", "--help", check=True)
    assert "calibration on train" not in proc.stdout
    assert "val split" in proc.stdout and "--full-integer" in proc.stdout


# --------------------------------------------------------------------------- the card


def test_every_card_names_the_uses_the_eu_ai_act_forbids(tiny_model):
    for card in (tiny_model / "MODEL_CARD.md", REPO / "model" / "shipped" / "MODEL_CARD.md",
                 REPO / "model" / "fast" / "MODEL_CARD.md"):
        text = card.read_text()
        assert "Art. 5(1)(f)" in text and "workplace and education institutions" in text, card


def test_a_model_lines_scorings_merge_in_time_order_reconstructed_ones_included():
    from model import test_scoring

    def event(when, what):
        return {"when": when, "model_version": "m", "command": "c", "what": what, "recorded": "r"}

    old = {"count": 2, "events": [event("by 2026-11-26T12:00:00+00:00", "a"), event("by 2026-12-01T00:00:00+00:00", "b")]}
    new = test_scoring.add(old, event("2026-12-05T17:00:00+00:00", "c"))
    merged = test_scoring.merge(new, old)
    assert [e["what"] for e in merged["events"]] == ["a", "b", "c"] and merged["count"] == 3
    assert test_scoring.merge(old, new) == merged
