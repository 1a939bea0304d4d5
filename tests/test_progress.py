"""Progress lines and counters (beam_pipelines/base/progress.py): the line's arithmetic as a unit, then real
`emotion predict` and `emotion compare` runs on the embedded sample with the interval lowered."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re

from conftest import SAMPLE, SHIPPED_MODEL

from beam_pipelines import cli
from beam_pipelines.ingest import launcher as ingest
from beam_pipelines.base import progress
from beam_pipelines.base.progress import Figures, format_duration, format_line
from beam_pipelines.base.reading import listing_total

LINE = re.compile(r"^\d\d:\d\d:\d\d predict: ([\d,]+)(?: / ([\d,]+))? images", re.M)


def test_a_line_says_done_of_total_the_rate_and_the_eta():
    assert format_line("predict", Figures(41_200, 71_780, "images"), 1130.4) == \
        "predict: 41,200 / 71,780 images (57%), 1,130/s, ETA 27 s"
    assert format_line("predict", Figures(0, 200, "images"), None) == "predict: 0 / 200 images (0%)"
    assert format_line("ingest", Figures(5, 10, "images read", "3 written"), 2.5) == \
        "ingest: 5 / 10 images read (50%), 2.5/s, ETA 2 s; 3 written"
    # A stall has no ETA; a finished count is finishing, as is one a retried bundle pushed past its total.
    assert format_line("predict", Figures(5, 10, "images"), 0.0) == "predict: 5 / 10 images (50%), 0.0/s"
    assert format_line("predict", Figures(10, 10, "images"), 3.0) == "predict: 10 / 10 images (100%), finishing"
    assert format_line("predict", Figures(12, 10, "images"), 3.0) == "predict: 10 / 10 images (100%), finishing"
    assert format_line("predict", Figures(199, 200, "images"), 50.0).startswith("predict: 199 / 200 images (99%)")


def test_without_a_total_a_line_has_no_percentage_and_no_eta():
    assert format_line("predict", Figures(1_200, None, "images"), 300.0) == "predict: 1,200 images, 300/s"
    assert format_line("predict", Figures(3, None, "images"), None) == "predict: 3 images"


def test_durations():
    assert [format_duration(s) for s in (0.2, 27.06, 185, 3725)] == ["1 s", "27 s", "3 min 05 s", "1 h 02 min"]


def test_the_rate_is_measured_over_the_last_intervals_of_one_phase():
    reporter = progress._Reporter("ingest", ingest.progress_figures, 10, io.StringIO())
    start = reporter.samples[0][0]
    assert reporter.line({}, start + 10) is None  # nothing counted in this process: no line
    listing = {"listing_units": 2, "listing_units_done": 1, "files_listed": 60}
    assert reporter.line(listing, start + 10) == "ingest: 0 images read, 0.0/s"  # the listing is not complete
    listed = {"listing_units": 2, "listing_units_done": 2, "files_listed": 104, "files_skipped_non_data": 4}
    assert listing_total(listed) == 100
    assert reporter.line({**listed, "images_decoded": 40}, start + 20) == \
        "ingest: 40 / 100 images read (40%), 2.0/s, ETA 30 s"
    assert reporter.line({**listed, "images_decoded": 70, "images_rejected": 10}, start + 30) == \
        "ingest: 80 / 100 images read (80%), 2.7/s, ETA 8 s"
    # All read: the next phase counts from its own start.
    read = {**listed, "images_decoded": 90, "images_rejected": 10}
    assert reporter.line({**read, "images_written": 30, "images_dropped": 6}, start + 40) == \
        "ingest: 36 / 90 images de-duplicated (40%); 30 written"
    assert reporter.line({**read, "images_written": 48, "images_dropped": 6}, start + 50) == \
        "ingest: 54 / 90 images de-duplicated (60%), 1.8/s, ETA 20 s; 48 written"


def run_command(*args) -> tuple[str, str]:
    """(stderr, the "emotion" log) of one emotion command run in this process."""
    err, log = io.StringIO(), io.StringIO()
    logger, handler = logging.getLogger("emotion"), logging.StreamHandler(log)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stderr(err):
            assert cli.main([str(a) for a in args]) == 0, err.getvalue()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return err.getvalue(), log.getvalue()


def counters_in(log: str, stage: str) -> dict[str, int]:
    """The counters of a stage's final summary line."""
    summary = [line for line in log.splitlines() if line.startswith(f"{stage}: ") and "counters: " in line]
    assert len(summary) == 1, log
    return {name: int(value) for name, value in re.findall(r"(\w+)=(\d+)", summary[0].split("counters: ")[1])}


def test_predict_prints_progress_lines_and_its_counters(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOTION_PROGRESS_SECONDS", "0.2")
    out = tmp_path / "preds"
    err, log = run_command("predict", "--input", SAMPLE, "--output", out, "--model", SHIPPED_MODEL)
    totals = json.loads((out / "summary.json").read_text())["totals"]
    images = totals["matched"] - totals["skipped_non_data"]
    lines = [(int(done.replace(",", "")), total and int(total.replace(",", ""))) for done, total in LINE.findall(err)]
    assert any(total for _, total in lines), err
    assert all(done <= total == images for done, total in lines if total), err
    counters = counters_in(log, "predict")
    assert counters["files_listed"] == totals["matched"]
    assert counters["images_predicted"] == totals["predicted"]
    assert counters["images_rejected"] == totals["rejected"] == sum(
        value for name, value in counters.items() if name.startswith("rejected_"))
    assert counters["listing_units_done"] == counters["listing_units"] > 0

    # compare runs no Beam pipeline: its counters come from the registry, the same way.
    _, log = run_command("compare", "--a", out, "--b", out, "--output", tmp_path / "compare")
    counters = counters_in(log, "compare")
    assert counters["prediction_files_read"] == counters["prediction_files"] > 0
    assert counters["prediction_rows_read"] == 2 * totals["predicted"]


def test_quiet_prints_no_progress_line_but_the_counters(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOTION_PROGRESS_SECONDS", "0.2")
    err, log = run_command("predict", "--input", SAMPLE, "--output", tmp_path / "preds", "--model", SHIPPED_MODEL,
                           "--quiet")
    assert not LINE.search(err), err
    assert counters_in(log, "predict")["images_predicted"] > 0
