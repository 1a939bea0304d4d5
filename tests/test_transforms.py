"""Transform-level tests of the Beam logic: pure functions called directly, DoFns and CombineFns on a
TestPipeline (DirectRunner: Beam's default runner would download Prism), checked with assert_that."""

from __future__ import annotations

import argparse
import os
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import synthetic_face, write_image

from beam_pipelines.base.listing import BROKEN_LINK, PROBLEMS, SYMLINK_LOOP, Entry, escape_glob, list_entries
from beam_pipelines.ingest.shards import CountKept, carved_split, plan_splits, resolve_copies
from beam_pipelines.ingest.shuffle import (
    DecodeBatch,
    Metrics,
    Record,
    Spilled,
    SpillRef,
    hash_unit,
    load_records,
    shard_of,
)
from beam_pipelines.predict.evaluation import MAX_CORRECT, MAX_MISTAKES, EvaluationFn, metrics_from
from model.metrics import calibration_bins, confusion, expected_calibration_error, summarize
from model.preprocess import image_metrics, preprocess
from schemas import LABELS


def direct_pipeline():
    return test_pipeline.TestPipeline(runner="DirectRunner")


def rec(digest, split, label, uri):
    return Record(digest, split, label, uri, Metrics(100.0, 20.0, 5.0), SpillRef("/spill/x.pixels", 0))


# --------------------------------------------------------------------------- resolve_copies


def test_duplicates_within_a_split_keep_the_first_uri():
    a, b, c = rec("d1", "train", "happy", "u/c"), rec("d1", "train", "happy", "u/a"), rec("d1", "train", "happy", "u/b")
    single = rec("d2", "train", "sad", "u/z")
    kept, dropped, counts = resolve_copies([[a, single], [b], [c]])  # copies arrive in separate batches
    assert kept == [b, single]
    assert dropped == [
        ("u/b", "duplicate", "pixel-identical to u/a (kept in train)"),
        ("u/c", "duplicate", "pixel-identical to u/a (kept in train)"),
    ]
    assert counts == {
        "rejected": {"duplicate": 2},
        "duplicates": {"groups": 1, "redundant_files": 2, "within_split": 2, "leakage": {}},
        "conflicts": {"groups": 0, "files": 0},
    }


def test_leakage_keeps_test_over_val_over_train():
    train_x, val_x = rec("x", "train", "fear", "a/x"), rec("x", "val", "fear", "b/x")
    test_x = rec("x", "test", "fear", "c/x")
    train_y, val_y = rec("y", "train", "angry", "a/y"), rec("y", "val", "angry", "b/y")
    kept, dropped, counts = resolve_copies([[train_x, train_y], [val_x, val_y, test_x]])
    assert sorted(kept) == sorted([test_x, val_y])
    assert sorted(dropped) == [
        ("a/x", "leakage", "pixel-identical to c/x (kept in test)"),
        ("a/y", "leakage", "pixel-identical to b/y (kept in val)"),
        ("b/x", "leakage", "pixel-identical to c/x (kept in test)"),
    ]
    assert counts == {
        "rejected": {"leakage": 3},
        "duplicates": {"groups": 2, "redundant_files": 3, "within_split": 0,
                       "leakage": {"val->test": 1, "train->test": 1, "train->val": 1}},
        "conflicts": {"groups": 0, "files": 0},
    }


def test_conflicting_labels_reject_every_copy():
    copies = [rec("z", "train", "happy", "t/z"), rec("z", "test", "sad", "s/z"), rec("z", "train", "happy", "t/z2")]
    kept, dropped, counts = resolve_copies([copies])
    assert kept == []
    assert sorted(dropped) == [
        (uri, "conflicting_labels", "3 pixel-identical copies labelled ['happy', 'sad']")
        for uri in ("s/z", "t/z", "t/z2")
    ]
    assert counts == {
        "rejected": {"conflicting_labels": 3},
        "duplicates": {"groups": 1, "redundant_files": 0, "within_split": 0, "leakage": {}},
        "conflicts": {"groups": 1, "files": 3},
    }


# --------------------------------------------------------------------------- plan_splits / carved_split


FOLDERS = {"input_splits": ["test", "train", "val"], "carve_val": False}


def split_args(val=0.1, test=0.1):
    return argparse.Namespace(val_fraction=val, test_fraction=test)


def test_val_left_too_small_is_carved_afresh_from_train():
    # 1000 train images need 50 in val (schemas.min_eval_images); leakage removal left 49.
    assert plan_splits({"train": 1000, "val": 49, "test": 60}, FOLDERS, split_args()) == {
        "val": {"fraction": 0.1, "found": 49, "needed": 50}
    }
    assert plan_splits({"train": 1000, "val": 50, "test": 60}, FOLDERS, split_args()) == {}
    # A val emptied entirely, and a test too: both carved.
    assert plan_splits({"train": 1000}, FOLDERS, split_args()) == {
        "test": {"fraction": 0.1, "found": 0, "needed": 50},
        "val": {"fraction": 0.1, "found": 0, "needed": 50},
    }
    # A val that ingest carves from train by hash (no val folder) counts as present.
    hashed_val = {"input_splits": ["test", "train"], "carve_val": True}
    assert plan_splits({"train": 1000, "val": 3, "test": 60}, hashed_val, split_args()) == {
        "val": {"fraction": 0.1, "found": 3, "needed": 50}
    }


def test_nothing_carved_for_content_hash_splits_absent_splits_or_too_small_carves():
    content_hash = {"input_splits": [], "carve_val": False}
    assert plan_splits({"train": 1000, "val": 0, "test": 0}, content_hash, split_args()) == {}
    # No val folder and no val asked for: nothing to carve.
    assert plan_splits({"train": 1000, "test": 60}, {"input_splits": ["test", "train"], "carve_val": False},
                       split_args()) == {}
    assert plan_splits({"train": 1000, "val": 0, "test": 60}, FOLDERS, split_args(val=0.0)) == {}
    # 5% of 200 train images is 10, under the 19 that 190 remaining train images would need.
    assert plan_splits({"train": 200, "val": 0, "test": 0}, FOLDERS, split_args(val=0.05, test=0.05)) == {}
    # 10% of 200 is 20, enough next to 180 (18 needed).
    assert set(plan_splits({"train": 200, "val": 0, "test": 0}, FOLDERS, split_args())) == {"test", "val"}


def test_carved_split_moves_only_train_records_by_salted_hash():
    digests = [f"{i:064x}" for i in range(2000)]
    everything = {"fraction": 1.0, "found": 0, "needed": 50}
    assert carved_split(rec("d", "val", "happy", "u"), {"test": everything}, 0) == "val"
    assert carved_split(rec("d", "test", "happy", "u"), {"val": everything}, 0) == "test"
    assert carved_split(rec("d", "train", "happy", "u"), {}, 0) == "train"
    assert carved_split(rec("d", "train", "happy", "u"), {"val": everything}, 0) == "val"
    assert carved_split(rec("d", "train", "happy", "u"), {"test": everything, "val": everything}, 0) == "test"

    def carved(carve, seed=0):
        return {d for d in digests if carved_split(rec(d, "train", "happy", "u"), carve, seed) != "train"}

    quarter = {"fraction": 0.25, "found": 0, "needed": 50}
    to_val, to_test = carved({"val": quarter}), carved({"test": quarter})
    assert 400 <= len(to_val) <= 600 and 400 <= len(to_test) <= 600
    assert carved({"val": quarter}) == to_val  # deterministic
    assert carved({"val": quarter}, seed=1) != to_val  # the seed salts it
    # Salted per split: the two carves are independent (about 1/16 overlap), not the same images.
    assert len(to_val & to_test) < 200


# --------------------------------------------------------------------------- CountKept


def spilled(staging, shard, batch_id, records) -> str:
    """A (batch, shard) group spilled as DecodeBatch spills it (--shuffle spill)."""
    records = [r._replace(metrics=Metrics(1.0, 2.0, 3.0), pixels=bytes(48 * 48)) for r in records]
    return Spilled.write(str(staging), shard, batch_id, records, 48)


def test_count_kept_counts_each_shard_after_deduplication(tmp_path):
    shard0 = (0, [spilled(tmp_path, 0, "b1", [rec("a", "train", "happy", "1"), rec("a", "val", "happy", "2")]),
                  spilled(tmp_path, 0, "b2", [rec("b", "train", "sad", "3"), rec("c", "test", "fear", "4")])])
    shard1 = (1, [spilled(tmp_path, 1, "b1", [rec("d", "train", "happy", "5"), rec("d", "train", "happy", "6"),
                                               rec("e", "train", "sad", "7"), rec("e", "test", "happy", "8")])])
    shard2 = (2, [spilled(tmp_path, 2, "b1", [])])
    # shard 0: leakage (val kept); shard 1: a duplicate and a conflict (both copies gone); shard 2: empty.
    with direct_pipeline() as p:
        counts = p | beam.Create([shard0, shard1, shard2]) | beam.ParDo(CountKept())
        assert_that(counts, equal_to([{"val": 1, "train": 1, "test": 1}, {"train": 1}, {}]))


# --------------------------------------------------------------------------- DecodeBatch


def test_decode_batch_routes_images_rejects_and_stats(tmp_path):
    root = tmp_path / "raw"
    good = write_image(root / "train" / "Happy" / "good.png", synthetic_face(7))
    second = write_image(root / "test" / "sad" / "second.png", synthetic_face(8))
    unknown = write_image(root / "train" / "contempt" / "c.png", synthetic_face(9))
    loose = write_image(root / "loose.png", synthetic_face(10))
    blank = write_image(root / "train" / "fear" / "blank.png", np.full((48, 48), 128, np.uint8))
    (root / "train" / "sad").mkdir()
    (root / "train" / "sad" / "notes.txt").write_text("not an image")
    (root / "train" / "sad" / "fake.png").write_text("a text file named .png")
    gone = root / "train" / "sad" / "gone.png"
    batch = [(str(p), None) for p in (good, second, unknown, loose, blank, root / "train" / "sad" / "notes.txt",
                                      root / "train" / "sad" / "fake.png")]
    batch.append((str(gone), BROKEN_LINK))
    args = argparse.Namespace(input=str(root), image_size=48, face_crop=False, max_pixels=10_000_000, seed=0,
                              val_fraction=0.1, test_fraction=0.1, staging=str(tmp_path / "staging"), shuffle="spill")
    summary = {"carve_val": False, "num_shards": 3}

    expected_records = {}
    for path, split, label in ((good, "train", "happy"), (second, "test", "sad")):
        pixels, digest = preprocess(path.read_bytes(), 48)
        expected_records[str(path)] = Record(digest, split, label, str(path), Metrics(*image_metrics(pixels)),
                                             pixels.tobytes())

    with direct_pipeline() as p:
        side = beam.pvalue.AsSingleton(p | "Summary" >> beam.Create([summary]))
        out = (p | "Batch" >> beam.Create([batch])
               | beam.ParDo(DecodeBatch(args), side).with_outputs("rejected", "stats", main="shards"))
        # The shuffle carries (shard, spill base) only; the records and pixels are read back from the spill.
        records = out.shards | beam.FlatMap(lambda kv: [(kv[0], r) for r in load_records([kv[1]])[0]])
        assert_that(records | "Meta" >> beam.Map(lambda kr: (kr[0], kr[1]._replace(pixels=None))),
                    equal_to([(shard_of(e.digest, 3), e._replace(pixels=None)) for e in expected_records.values()]),
                    label="Shards")
        assert_that(records | "Pixels" >> beam.Map(lambda kr: (kr[1].uri, FileSystems.open(kr[1].pixels.path).read()[
                    kr[1].pixels.offset:kr[1].pixels.offset + 48 * 48])),
                    equal_to([(uri, e.pixels) for uri, e in expected_records.items()]), label="SpilledPixels")
        assert_that(out.rejected | beam.Map(lambda r: (r["uri"], r["reason"], r["stage"])), equal_to([
            (str(unknown), "unknown_class", "ingest"),
            (str(loose), "no_class_folder", "ingest"),
            (str(blank), "blank_image", "ingest"),
            (str(root / "train" / "sad" / "notes.txt"), "unsupported_extension", "ingest"),
            (str(root / "train" / "sad" / "fake.png"), "not_an_image", "ingest"),
            (str(gone), BROKEN_LINK, "ingest"),
        ]), label="Rejected")
        assert_that(out.rejected | beam.Filter(lambda r: r["reason"] == BROKEN_LINK) | beam.Map(lambda r: r["detail"]),
                    equal_to([PROBLEMS[BROKEN_LINK]]), label="ListingDetail")
        assert_that(out.stats, equal_to([{"rejected": {"unknown_class": 1, "no_class_folder": 1, "blank_image": 1,
                                                       "unsupported_extension": 1, "not_an_image": 1,
                                                       BROKEN_LINK: 1}}]), label="Stats")

    # One spill (pixels + metadata) per shard that got an image.
    spills = sorted(p.name for p in (tmp_path / "staging" / ".spill").glob("*.pixels"))
    assert len(list((tmp_path / "staging" / ".spill").glob("*.json"))) == len(spills)
    shards = {f"{shard_of(e.digest, 3):05d}" for e in expected_records.values()}
    assert [name[:5] for name in spills] == sorted(shards)


def test_decode_batch_assigns_splits_from_the_content_hash_without_split_folders(tmp_path):
    root = tmp_path / "raw"
    paths = [write_image(root / "happy" / f"{i}.png", synthetic_face(100 + i)) for i in range(40)]
    args = argparse.Namespace(input=str(root), image_size=48, face_crop=False, max_pixels=10_000_000, seed=3,
                              val_fraction=0.3, test_fraction=0.3, staging=str(tmp_path / "staging"), shuffle="spill")
    dofn = DecodeBatch(args)
    outputs = list(dofn.process([(str(p), None) for p in paths], {"carve_val": False, "num_shards": 1}))
    (shard, part), stats = outputs[0], outputs[-1]
    assert shard == 0 and len(outputs) == 2 and stats.value == {"rejected": {}}
    (records,) = load_records([part])

    def expected(digest):
        u = hash_unit(3, digest)
        return "test" if u < 0.3 else "val" if u < 0.6 else "train"

    assert [r.split for r in records] == [expected(r.digest) for r in records]
    assert {r.split for r in records} == {"train", "val", "test"}


# --------------------------------------------------------------------------- EvaluationFn


def prediction_batches(rows, size=37):
    """The rows as predict.Classify yields them: (a pyarrow Table of a batch's rows, its thumbnails)."""
    import pyarrow as pa

    batches = []
    for i in range(0, len(rows), size):
        part = rows[i : i + size]
        table = pa.Table.from_pylist([r for r, _ in part])
        thumbnails = np.stack([np.frombuffer(t, np.uint8) for _, t in part])
        batches.append((table, thumbnails))
    return batches


def prediction_rows(n, seed=0, unlabelled=0):
    """(row, thumbnail) pairs with the columns the evaluation reads, distinct confidences and hashes."""
    rng = random.Random(seed)
    rows = []
    for i in range(n + unlabelled):
        true = LABELS[rng.randrange(7)] if i < n else None
        predicted = rng.randrange(7) if rng.random() < 0.5 else (LABELS.index(true) if true else 0)
        confidence = 0.15 + 0.8 * rng.random()
        rows.append(({"uri": f"img/{i:04d}.png", "content_sha256": f"{rng.getrandbits(64):016x}" + "0" * 48,
                      "true_label": true, "predicted_label": LABELS[predicted], "predicted_index": predicted,
                      "confidence": confidence, "correct": None if true is None else true == LABELS[predicted]},
                     bytes([i % 256]) * 4))
    return rows


def metrics_summary(acc):
    """What the evaluation writes, in comparable form (floats as pytest.approx sees them)."""
    m = metrics_from(acc)
    return {"predicted": acc["predicted"], "labelled": acc["labelled"], "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"], "ece": m["expected_calibration_error"], "confusion": m["confusion"],
            "per_class": m["per_class"]}


def test_evaluation_combine_matches_model_metrics():
    rows = prediction_rows(300, unlabelled=5)
    labelled = [r for r, _ in rows if r["true_label"] is not None]
    y_true = [LABELS.index(r["true_label"]) for r in labelled]
    y_pred = [r["predicted_index"] for r in labelled]
    direct = summarize(confusion(y_true, y_pred))
    ece = expected_calibration_error(*calibration_bins([r["confidence"] for r in labelled],
                                                       [t == p for t, p in zip(y_true, y_pred)]))
    assert 0.3 < direct["accuracy"] < 0.8  # the rows are neither all right nor all wrong

    def check(actual):
        assert len(actual) == 1
        got = metrics_summary(actual[0])
        assert (got["predicted"], got["labelled"]) == (305, 300)
        assert got["confusion"] == direct["confusion"]
        assert got["accuracy"] == pytest.approx(direct["accuracy"])
        assert got["macro_f1"] == pytest.approx(direct["macro_f1"])
        assert got["per_class"] == direct["per_class"]
        assert got["ece"] == pytest.approx(ece)

    with direct_pipeline() as p:
        assert_that(p | beam.Create(prediction_batches(rows)) | beam.CombineGlobally(EvaluationFn()), check)


def test_evaluation_merged_accumulators_equal_one_accumulator():
    fn = EvaluationFn()
    rows = prediction_rows(400, seed=1, unlabelled=3)

    def accumulate(part):
        acc = fn.create_accumulator()
        for batch in prediction_batches(part):
            acc = fn.add_input(acc, batch)
        return acc

    whole = accumulate(rows)
    merged = fn.merge_accumulators([accumulate(rows[i::3]) for i in range(3)] + [fn.create_accumulator()])
    assert len(whole["mistakes"]) == MAX_MISTAKES and len(whole["correct"]) == MAX_CORRECT  # bounded: merge must choose
    assert (merged["predicted"], merged["labelled"]) == (whole["predicted"], whole["labelled"]) == (403, 400)
    np.testing.assert_array_equal(merged["confusion"], whole["confusion"])
    for a, b in zip(merged["bins"], whole["bins"]):
        np.testing.assert_allclose(a, b)
    assert sorted(merged["mistakes"]) == sorted(whole["mistakes"])
    assert sorted(merged["correct"]) == sorted(whole["correct"])
    # The mistakes kept are the most confident ones.
    wrong = sorted((r["confidence"] for r, _ in rows if r["true_label"] and r["correct"] is False), reverse=True)
    assert sorted((m[0] for m in merged["mistakes"]), reverse=True) == wrong[:MAX_MISTAKES]


# --------------------------------------------------------------------------- listing


@pytest.fixture
def awkward_tree(tmp_path):
    """Folders named with glob characters next to the names a glob would match instead, a symlinked
    folder outside the root, a dangling link and a link back to the root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    files = {"a[1]/x.png": b"1", "a1/x.png": b"22", "b?/y.png": b"333", "bX/y.png": b"4444",
             "c*/z.png": b"55555", "top.png": b"666666"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    outside.mkdir()
    (outside / "e.png").write_bytes(b"7777777")
    os.symlink(outside, root / "linked")
    os.symlink(tmp_path / "nowhere", root / "dangling")
    os.symlink(root, root / "loop")
    return root


def test_list_entries_is_literal_complete_and_ordered(awkward_tree):
    r = str(awkward_tree)
    assert list(list_entries(r)) == [
        Entry(f"{r}/dangling", 0, BROKEN_LINK),
        Entry(f"{r}/loop", 0, SYMLINK_LOOP),
        Entry(f"{r}/top.png", 6),
        Entry(f"{r}/a1/x.png", 2),
        Entry(f"{r}/a[1]/x.png", 1),
        Entry(f"{r}/b?/y.png", 3),
        Entry(f"{r}/bX/y.png", 4),
        Entry(f"{r}/c*/z.png", 5),
        Entry(f"{r}/linked/e.png", 7),  # behind a symlinked folder
    ]
    assert list(list_entries(f"{r}/a[1]")) == [Entry(f"{r}/a[1]/x.png", 1)]
    assert list(list_entries(f"{r}/missing")) == []


@pytest.mark.parametrize("rel", ["a[1]/x.png", "b?/y.png", "c*/z.png", "top.png"])
def test_escape_glob_matches_exactly_the_literal_path(awkward_tree, rel):
    path = f"{awkward_tree}/{rel}"
    assert [m.path for m in FileSystems.match([escape_glob(path)])[0].metadata_list] == [path]
    folder = path.rsplit("/", 1)[0]
    # As predict uses it: a literal folder, then a wildcard inside it.
    matched = sorted(m.path for m in FileSystems.match([escape_glob(folder) + "/*.png"])[0].metadata_list)
    assert matched == sorted(f"{folder}/{name}" for name in os.listdir(folder) if name.endswith(".png")
                             and os.path.isfile(f"{folder}/{name}"))


def test_unescaped_glob_characters_would_match_other_files(awkward_tree):
    # Why escape_glob exists: the raw names read as patterns match the decoys.
    assert [m.path for m in FileSystems.match([f"{awkward_tree}/a[1]/x.png"])[0].metadata_list] == [
        f"{awkward_tree}/a1/x.png"]
    matched = [m.path for m in FileSystems.match([f"{awkward_tree}/b?/y.png"])[0].metadata_list]
    assert f"{awkward_tree}/bX/y.png" in matched


# --------------------------------------------------------------------------- fan-out listing


def test_fan_out_units_list_every_file_once(tmp_path):
    """The units of a plan, listed separately (as workers do), give exactly the single listing's
    entries: a linked class folder once, a link into another unit's folder and a loop as problems."""
    from beam_pipelines.base.listing import list_entries, list_unit, plan_units, planned_identities

    root = tmp_path / "in"
    for split in ("train", "test"):
        for label in ("happy", "sad"):
            for i in range(3):
                (root / split / label).mkdir(parents=True, exist_ok=True)
                (root / split / label / f"{i}.png").write_bytes(b"x" * (i + 1))
    (root / "loose.png").write_bytes(b"at the root")
    (root / "train" / "loose.png").write_bytes(b"in a split folder")
    outside = tmp_path / "outside" / "fear"
    outside.mkdir(parents=True)
    (outside / "f.png").write_bytes(b"linked in")
    (root / "train" / "fear").symlink_to(outside, target_is_directory=True)  # a linked class folder
    (root / "test" / "joy").symlink_to(root / "train" / "happy", target_is_directory=True)  # another unit's folder
    (root / "train" / "sad" / "up").symlink_to(root, target_is_directory=True)  # a loop inside a unit
    (root / "test" / "gone.png").symlink_to(tmp_path / "missing.png")

    units, problems = plan_units(str(root))
    assert [u.path[len(str(root)):] for u in units if u.recursive] == [
        "/test/happy", "/test/sad", "/train/fear", "/train/happy", "/train/sad"]
    planned = planned_identities(units)
    fanned = [entry for unit in units for entry in list_unit(unit, str(root), planned)] + problems
    assert sorted(fanned) == sorted(list_entries(str(root)))
    reasons = {e.path[len(str(root)) + 1:]: e.problem for e in fanned if e.problem}
    assert reasons == {"test/joy": "symlink_loop", "train/sad/up": "symlink_loop", "test/gone.png": "broken_link"}
    assert len(fanned) == 12 + 2 + 1 + 3  # files, loose files, the linked one, the three problems


def test_evaluation_overview_coverage_and_slices_merge_as_one_accumulator():
    """The parts added for archives (class mix, confidence histogram, abstention counts, least confident
    and per-class samples, per-slice confusions) combine the same whichever way the rows are split."""
    import pyarrow as pa

    from beam_pipelines.predict.evaluation import MAX_LOW_CONFIDENCE, Scored, abstention, coverage_curve

    rows = prediction_rows(300, seed=2, unlabelled=20)
    for i, (row, _) in enumerate(rows):
        row["abstained"] = row["confidence"] < 0.5
        row["face_index"] = i % 2 if i >= 100 else None
    sites = ["north", "south", None]
    fn = EvaluationFn(("site",))

    def accumulate(part):
        acc = fn.create_accumulator()
        for table, thumbnails in prediction_batches(part):
            values = [(sites[int(uri[4:8]) % 3],) for uri in table["uri"].to_pylist()]
            acc = fn.add_input(acc, Scored(pa.Table.from_pylist(table.to_pylist()), thumbnails, values))
        return acc

    whole = accumulate(rows)
    merged = fn.merge_accumulators([accumulate(rows[i::4]) for i in range(4)] + [fn.create_accumulator()])
    for key in ("predicted", "images", "labelled", "answered", "answered_labelled", "answered_correct"):
        assert merged[key] == whole[key], key
    assert whole["images"] == 100 + 110  # rows without a face index, and every face 0
    for key in ("predicted_mix", "confidence_hist", "confusion"):
        np.testing.assert_array_equal(merged[key], whole[key])
    assert sorted(merged["low_confidence"]) == sorted(whole["low_confidence"])
    assert len(whole["low_confidence"]) == MAX_LOW_CONFIDENCE
    lowest = sorted(r["confidence"] for r, _ in rows)[:MAX_LOW_CONFIDENCE]
    assert sorted(e.sample.confidence for e in whole["low_confidence"]) == lowest
    assert [sorted(h) for h in merged["per_class"]] == [sorted(h) for h in whole["per_class"]]
    for value, g in whole["slices"]["site"].items():
        np.testing.assert_array_equal(merged["slices"]["site"][value]["confusion"], g["confusion"])
        assert merged["slices"]["site"][value]["rows"] == g["rows"]
    assert sum(g["rows"] for g in whole["slices"]["site"].values()) == 320

    labelled = [r for r, _ in rows if r["true_label"] is not None]
    a = abstention(whole, 0.5, None)
    answered = [r for r in labelled if not r["abstained"]]
    assert a["labelled_answered"] == len(answered)
    assert a["accuracy_answered"] == pytest.approx(sum(r["correct"] for r in answered) / len(answered))
    assert a["answered"] == sum(not r["abstained"] for r, _ in rows)
    curve = coverage_curve(whole)
    point = curve[50]
    assert point["answered"] == sum(r["confidence"] >= 0.5 for r in labelled)
    assert point["correct"] == sum(r["confidence"] >= 0.5 and r["correct"] for r in labelled)
