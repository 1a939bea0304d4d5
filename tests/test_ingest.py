"""Ingest: whole `run([...])` calls on temp folders with the DirectRunner, outputs read back."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_pipelines.ingest import launcher as ingest
from model.errors import UsageError
from conftest import make_split_tree, synthetic_face, write_image
from schemas import LABELS, REJECTED_SCHEMA


def read_records(out):
    """All TFRecord examples under out/tfrecords as dicts, read with tf.data."""
    import tensorflow as tf

    from model.data import feature_spec

    files = sorted(str(p) for p in (out / "tfrecords").glob("*.tfrecord"))
    rows = []
    for serialized in tf.data.TFRecordDataset(files):
        ex = tf.io.parse_single_example(serialized, feature_spec())
        rows.append(
            {
                "pixels": np.frombuffer(ex["image/raw"].numpy(), np.uint8).reshape(
                    int(ex["image/height"]), int(ex["image/width"])
                ),
                "label": LABELS[int(ex["label/index"])],
                "label_name": ex["label/name"].numpy().decode(),
                "uri": ex["source/uri"].numpy().decode(),
                "split": ex["split"].numpy().decode(),
                "sha256": ex["image/sha256"].numpy().decode(),
            }
        )
    return rows


def read_rejected(out):
    tables = [pq.read_table(p) for p in sorted((out / "rejected").glob("*.parquet"))]
    for t in tables:
        assert t.schema.equals(REJECTED_SCHEMA, check_metadata=False)
    return [row for t in tables for row in t.to_pylist()]


def stats_of(out):
    return json.loads((out / "stats.json").read_text())


def test_split_layout_with_aliases_roundtrips_pixels_and_labels(tmp_path):
    raw = tmp_path / "raw"
    aliases = {"angry": "Angry", "disgust": "disgusted", "fear": "Fearful", "happy": "happiness",
               "sad": "Sadness", "surprise": "Surprize", "neutral": "NEUTRAL"}
    make_split_tree(raw, per_class=3, splits=("Train", "Validation", "TEST"), class_dirs=aliases)
    out = tmp_path / "out"
    stats = ingest.run(["--input", str(raw), "--output", str(out)])

    assert stats["totals"] == {"matched": 63, "written": 63, "rejected": 0, "skipped_non_data": 0, "balanced": True}
    assert stats["written_per_split"] == {"train": 21, "val": 21, "test": 21}
    assert stats["split_source"] == "folders" and not stats["val_carved_from_train"]
    records = read_records(out)
    assert len(records) == 63
    for r in records:
        # The stored pixels are exactly the source image's, the label is the canonical one.
        source = cv2.imread(r["uri"], cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(r["pixels"], source)
        folder = r["uri"].split("/")[-2]
        assert r["label"] == r["label_name"] == {v: k for k, v in aliases.items()}[folder]
        assert r["split"] == {"Train": "train", "Validation": "val", "TEST": "test"}[r["uri"].split("/")[-3]]
    shards = sorted(p.name for p in (out / "tfrecords").iterdir())
    assert shards == ["test-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord", "val-00000-of-00001.tfrecord"]
    assert (out / "plots" / "class_distribution.png").stat().st_size > 1000


def test_class_layout_gets_deterministic_hash_splits(tmp_path):
    raw = tmp_path / "raw"
    for i in range(140):
        write_image(raw / LABELS[i % 7] / f"img{i}.png", synthetic_face(1000 + i, label=i % 7))
    splits = {}
    for run_id, seed in (("a", 0), ("b", 0), ("c", 5)):
        out = tmp_path / run_id
        stats = ingest.run(["--input", str(raw), "--output", str(out), "--val-fraction", "0.2",
                            "--test-fraction", "0.2", "--seed", str(seed), "--num-shards", "3"])
        assert stats["split_source"] == "content_hash"
        assert stats["totals"]["written"] == 140
        splits[run_id] = {r["uri"]: r["split"] for r in read_records(out)}
    assert splits["a"] == splits["b"]  # same seed, same assignment
    assert splits["a"] != splits["c"]  # the seed salts it
    counts = {s: list(splits["a"].values()).count(s) for s in ("train", "val", "test")}
    assert all(10 <= counts[s] for s in ("val", "test")) and counts["train"] > 60
    assert len(list((tmp_path / "a" / "tfrecords").glob("train-*-of-00003.tfrecord"))) == 3


def test_val_is_carved_from_train_only(tmp_path):
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=20, splits=("train", "test"))
    out = tmp_path / "out"
    stats = ingest.run(["--input", str(raw), "--output", str(out), "--val-fraction", "0.25"])
    assert stats["val_carved_from_train"]
    records = read_records(out)
    val_sources = {r["uri"].split("/")[-3] for r in records if r["split"] == "val"}
    assert val_sources == {"train"}
    assert stats["written_per_split"]["test"] == 140
    assert 15 <= stats["written_per_split"]["val"] <= 60


def test_every_bad_input_is_rejected_with_its_reason_and_totals_add_up(tmp_path):
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=2, splits=("train", "test"))
    good = (raw / "train" / "happy" / "happy_0.png").read_bytes()
    jpg = cv2.imencode(".jpg", synthetic_face(77))[1].tobytes()
    bad = {
        "train/happy/zero.png": (b"", "empty_file"),
        "train/happy/truncated.jpg": (jpg[: len(jpg) // 2], "truncated_image"),
        "train/sad/notes.jpg": (b"just some text", "not_an_image"),
        "train/sad/anim.gif": (b"GIF89a" + bytes(30), "unsupported_format"),
        "train/fear/huge.png": (good[:16] + (60000).to_bytes(4, "big") * 2 + good[24:], "too_large"),
        "train/contempt/x.png": (good, "unknown_class"),
        "train/angry/readme.txt": (b"labels by hand", "unsupported_extension"),
        "loose.png": (good, "no_class_folder"),
        "train/neutral/flat.png": (cv2.imencode(".png", np.full((48, 48), 7, np.uint8))[1].tobytes(), "blank_image"),
        "train/angry/corrupt.png": (good[:60] + bytes(len(good) - 72) + good[-12:], "corrupt_image"),
    }
    for rel, (data, _) in bad.items():
        path = raw / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (raw / "train" / ".DS_Store").write_bytes(b"\x00\x01")
    (raw / "test" / "Thumbs.db").write_bytes(b"\x00\x01")
    out = tmp_path / "out"
    stats = ingest.run(["--input", str(raw), "--output", str(out), "--val-fraction", "0"])

    rejected = {r["uri"].split("raw/")[1]: r for r in read_rejected(out)}
    assert {k: v["reason"] for k, v in rejected.items()} == {k: reason for k, (_, reason) in bad.items()}
    assert all(r["detail"] and r["stage"] == "ingest" for r in rejected.values())
    t = stats["totals"]
    assert t == {"matched": 28 + len(bad) + 2, "written": 28, "rejected": len(bad), "skipped_non_data": 2,
                 "balanced": True}
    assert sum(stats["rejected"].values()) == len(bad)
    assert stats["skipped"] == {".DS_Store": 1, "Thumbs.db": 1}
    assert len(read_records(out)) == 28


def test_duplicates_leakage_and_conflicts(tmp_path):
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=3, splits=("train", "val", "test"))
    # Within-split duplicate (same label): one copy kept.
    shutil.copy(raw / "train/happy/happy_0.png", raw / "train/happy/happy_0_copy.png")
    # Same pixels re-encoded as BMP in another split: train and val copies dropped, test kept.
    img = cv2.imread(str(raw / "test/sad/sad_1.png"), cv2.IMREAD_GRAYSCALE)
    write_image(raw / "train/sad/leak.bmp", img, ".bmp")
    write_image(raw / "val/sad/leak.png", img)
    # Same pixels, different labels: every copy rejected.
    shutil.copy(raw / "train/fear/fear_2.png", raw / "train/angry/conflict.png")
    shutil.copy(raw / "train/fear/fear_2.png", raw / "test/surprise/conflict.png")
    out = tmp_path / "out"
    stats = ingest.run(["--input", str(raw), "--output", str(out)])

    reasons = {r["uri"].split("raw/")[1]: r["reason"] for r in read_rejected(out)}
    assert reasons["train/sad/leak.bmp"] == "leakage"
    assert reasons["val/sad/leak.png"] == "leakage"
    assert reasons["train/happy/happy_0_copy.png"] == "duplicate"  # the first uri of a group is kept
    assert "train/happy/happy_0.png" not in reasons
    for rel in ("train/fear/fear_2.png", "train/angry/conflict.png", "test/surprise/conflict.png"):
        assert reasons[rel] == "conflicting_labels"
    kept = {r["uri"].split("raw/")[1] for r in read_records(out)}
    assert "test/sad/sad_1.png" in kept
    d = stats["duplicates"]
    assert d["leakage_dropped"] == {"train->test": 1, "val->test": 1}
    assert d["dropped_within_split"] == 1
    assert d["conflicting_label_groups"] == 1 and d["conflicting_label_files"] == 3
    # 63 originals + 1 copy + 2 leaked + 2 conflicting copies; fear_2 is lost to the conflict.
    assert stats["totals"]["matched"] == 68 and stats["totals"]["written"] == 62 and stats["totals"]["balanced"]
    assert any("across splits" in w for w in stats["warnings"])
    # Nothing is kept twice.
    hashes = [r["sha256"] for r in read_records(out)]
    assert len(hashes) == len(set(hashes))


def test_blurred_split_is_flagged(tmp_path):
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=6, splits=("train", "test"))
    for path in (raw / "train").rglob("*.png"):
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(path), cv2.GaussianBlur(img, (0, 0), 2.0))
    stats = ingest.run(["--input", str(raw), "--output", str(tmp_path / "out"), "--val-fraction", "0"])
    assert any("sharpness" in w and "train and test" in w for w in stats["warnings"])
    assert stats["image_stats"]["train"]["sharpness_geomean"] < stats["image_stats"]["test"]["sharpness_geomean"] / 2


def test_rerun_is_identical_and_leaves_nothing_stale(tmp_path):
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=5, splits=("train", "test"))
    out = tmp_path / "out"
    ingest.run(["--input", str(raw), "--output", str(out), "--num-shards", "4"])
    first = {p.name: p.read_bytes() for p in (out / "tfrecords").iterdir()}
    assert len(first) == 12  # train, val, test x 4 shards (some may be empty, all exist)
    ingest.run(["--input", str(raw), "--output", str(out), "--num-shards", "4"])
    assert {p.name: p.read_bytes() for p in (out / "tfrecords").iterdir()} == first
    ingest.run(["--input", str(raw), "--output", str(out), "--num-shards", "2"])
    names = sorted(p.name for p in (out / "tfrecords").iterdir())
    assert names and all(n.endswith("-of-00002.tfrecord") for n in names)
    assert len(list((out / "rejected").glob("*.parquet"))) == 1


def test_multiprocess_direct_runner_matches_in_process(tmp_path):
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=6, splits=("train", "test"))
    shutil.copy(raw / "train/happy/happy_0.png", raw / "test/happy/copy.png")
    (raw / "train" / "happy" / "bad.jpg").write_bytes(b"nope")
    single = ingest.run(["--input", str(raw), "--output", str(tmp_path / "single"), "--num-shards", "2",
                         "--files-per-batch", "10"])
    multi = ingest.run(["--input", str(raw), "--output", str(tmp_path / "multi"), "--num-shards", "2",
                        "--files-per-batch", "10", "--runner", "DirectRunner", "--direct_num_workers", "2",
                        "--direct_running_mode", "multi_processing"])
    for key in ("totals", "written", "rejected", "duplicates", "fingerprint"):
        assert single[key] == multi[key]
    for name in ("train-00000-of-00002.tfrecord", "test-00001-of-00002.tfrecord"):
        assert (tmp_path / "single/tfrecords" / name).read_bytes() == (tmp_path / "multi/tfrecords" / name).read_bytes()


def test_missing_or_empty_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no files"):
        ingest.run(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no files"):
        ingest.run(["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o")])


def test_an_ingest_whose_val_is_too_small_for_training_says_so_and_training_refuses_it(tmp_path, capsys):
    """The rule is one (schemas.eval_split_too_small): ingest warns where the fix is (--val-fraction),
    and emotion train refuses the same val with one line -- never a silent surprise at training."""
    import json

    from conftest import make_split_tree, synthetic_face, write_image

    from beam_pipelines import cli
    from beam_pipelines.ingest.stats import small_split_warnings

    assert small_split_warnings({"train": 40, "val": 1}) and not small_split_warnings({"train": 40, "val": 4})
    assert not small_split_warnings({"train": 40})  # no val at all: training runs without choosing epochs
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_split_tree(raw, per_class=6, splits=("train",), seed=3)
    write_image(raw / "val" / "happy" / "only.png", synthetic_face(999, label=3))  # one val image: too few,
    # and a fresh carve of 2% of train (none) would be too few as well, so it stays
    assert cli.main(["ingest", "--input", str(raw), "--output", str(out), "--quiet", "--val-fraction", "0.02"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["written_per_split"]["val"] == 1
    assert any(w.startswith("val holds 1 image(s)") and "--val-fraction" in w for w in stats["warnings"])
    capsys.readouterr()
    assert cli.main(["train", "--data", str(out), "--model-dir", str(tmp_path / "m"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val holds 1 image" in err[0], err
