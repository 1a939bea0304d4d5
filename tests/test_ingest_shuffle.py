"""Ingest's two ways through the shuffle (--shuffle spill | records): the mode chosen from the runner,
what each hands the shuffle, and the same TFRecord bytes and stats.json from both, on real
DirectRunner runs."""

from __future__ import annotations

import shutil

import cv2
import pytest

from beam_pipelines.ingest import launcher as ingest
from beam_pipelines.ingest import options as ingest_options
from beam_pipelines.ingest.shuffle import Carried, DecodeBatch, Spilled, SpillRef, load_records, pixels_of, shuffle_mode
from conftest import SAMPLE, make_split_tree, write_image

STATS_KEYS = ("totals", "written", "written_per_split", "rejected", "skipped", "duplicates", "splits_carved_from_train",
              "num_shards", "fingerprint", "warnings")


@pytest.mark.parametrize("runner", ["DirectRunner", "direct", "SwitchingDirectRunner", "BundleBasedDirectRunner",
                                    "FnApiRunner", "PrismRunner", "apache_beam.runners.test.TestDirectRunner"])
def test_auto_spills_where_the_shuffle_is_held_in_this_machines_memory(runner):
    assert shuffle_mode("auto", runner) == "spill"


@pytest.mark.parametrize("runner", ["DataflowRunner", "dataflow", "TestDataflowRunner", "FlinkRunner", "SparkRunner"])
def test_auto_carries_records_through_a_distributed_shuffle(runner):
    assert shuffle_mode("auto", runner) == "records"


def test_portable_runner_spills_only_with_an_embedded_job_service():
    assert shuffle_mode("auto", "PortableRunner", "embed") == "spill"
    assert shuffle_mode("auto", "PortableRunner", "localhost:8099") == "records"


def test_an_explicit_mode_overrides_the_runner():
    assert shuffle_mode("records", "DirectRunner") == "records"
    assert shuffle_mode("spill", "DataflowRunner") == "spill"


def decode(tmp_path, root, shuffle):
    options = ingest_options.IngestOptions(input=str(root), output=str(tmp_path / "out"), staging=str(tmp_path / shuffle),
                                   image_size=48, face_crop=False, max_pixels=10_000_000, seed=0, val_fraction=0.1,
                                   test_fraction=0.1, num_shards=3, files_per_batch=64, shuffle=shuffle)
    batch = [(str(p), None) for p in sorted(root.rglob("*.png"))]
    outputs = list(DecodeBatch(options).process(batch, {"carve_val": False, "num_shards": 3}))
    return [o for o in outputs if isinstance(o, tuple)]


def test_records_carry_their_pixels_and_spills_hold_the_same_records(tmp_path):
    root = tmp_path / "raw"
    make_split_tree(root, per_class=2, splits=("train", "test"))
    carried, spilled = decode(tmp_path, root, "records"), decode(tmp_path, root, "spill")

    assert all(isinstance(part, Carried) for _, part in carried)
    assert not (tmp_path / "records").exists()  # records mode writes nothing to storage
    assert all(isinstance(part, Spilled) for _, part in spilled)
    assert len(list((tmp_path / "spill" / ".spill").glob("*.pixels"))) == len(spilled)  # one per (batch, shard)
    assert sorted(shard for shard, _ in carried) == sorted(shard for shard, _ in spilled)

    for (shard, c), (_, s) in zip(sorted(carried), sorted(spilled, key=lambda kv: kv[0])):
        (from_carried,), (from_spill,) = load_records([c]), load_records([s])
        assert all(isinstance(r.pixels, bytes) and len(r.pixels) == 48 * 48 for r in from_carried)
        assert all(isinstance(r.pixels, SpillRef) for r in from_spill)
        # Same metadata (metrics through JSON exactly), same pixels once read back from the spill.
        assert [r._replace(pixels=None) for r in from_carried] == [r._replace(pixels=None) for r in from_spill]
        assert pixels_of(from_spill, 48) == pixels_of(from_carried, 48) == [r.pixels for r in from_carried]
        for record in from_carried:  # the pixels are the image's
            assert record.pixels == cv2.imread(record.uri, cv2.IMREAD_GRAYSCALE).tobytes()


def run_both(tmp_path, source, *options, records_extra=()):
    """Ingest of `source` with --shuffle spill and --shuffle records: (stats, {shard name: bytes}) of each."""
    runs = []
    for mode, extra in (("spill", ()), ("records", records_extra)):
        out = tmp_path / mode
        stats = ingest.run(["--input", str(source), "--output", str(out), "--quiet", "--shuffle", mode, *options, *extra])
        runs.append((stats, {p.name: p.read_bytes() for p in (out / "tfrecords").iterdir()}))
        assert not (out / "_staging").exists()  # the spill (if any) went with the staging folder
    return runs


def test_both_modes_write_the_same_shards_and_stats_on_the_sample(tmp_path):
    (spill_stats, spill_files), (records_stats, records_files) = run_both(tmp_path, SAMPLE)
    assert spill_files == records_files and sum(map(len, spill_files.values())) > 0
    for key in STATS_KEYS:
        assert spill_stats[key] == records_stats[key], key
    assert spill_stats["totals"]["written"] > 200


def test_both_modes_agree_on_duplicates_leakage_conflicts_and_carving(tmp_path):
    """Several batches per shard (parts from many batches meet in one group), every kind of copy,
    and a test split too small after leakage removal, carved afresh from train; the records run in
    two processes, so the carried records cross process boundaries as they do between workers."""
    raw = tmp_path / "raw"
    make_split_tree(raw, per_class=25, splits=("train",))
    make_split_tree(raw, per_class=1, splits=("test",), seed=3)  # 7 test images: too few next to ~140 train
    shutil.copy(raw / "train/happy/happy_0.png", raw / "train/happy/happy_0_copy.png")
    leaked = cv2.imread(str(raw / "test/sad/sad_0.png"), cv2.IMREAD_GRAYSCALE)
    write_image(raw / "train/sad/leak.bmp", leaked, ".bmp")
    shutil.copy(raw / "train/fear/fear_2.png", raw / "train/angry/conflict.png")
    (raw / "train/happy/broken.png").write_bytes(b"not a png")

    (spill_stats, spill_files), (records_stats, records_files) = run_both(
        tmp_path, raw, "--num-shards", "3", "--files-per-batch", "16", "--val-fraction", "0.2",
        "--test-fraction", "0.15",
        records_extra=("--direct_num_workers", "2", "--direct_running_mode", "multi_processing"))
    assert spill_files == records_files
    for key in STATS_KEYS:
        assert spill_stats[key] == records_stats[key], key
    d = spill_stats["duplicates"]
    assert d["dropped_within_split"] == 1 and d["leakage_dropped"] == {"train->test": 1}
    assert d["conflicting_label_files"] == 2
    assert "test" in spill_stats["splits_carved_from_train"]
    assert spill_stats["totals"]["balanced"] and spill_stats["rejected"]["not_an_image"] == 1
    assert len(spill_files) == 9  # train, val, test x 3 shards

