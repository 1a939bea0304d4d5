"""Progress of a local run: a line on stderr about every 10 s while a stage runs, e.g.

    predict: 41,200 / 71,780 images (57%), 1,130/s, ETA 27 s

The figures are the stage's Beam counters (namespace "emotion": files listed, images decoded,
rejected by reason, predicted, written), the ones Dataflow shows on its job page and each stage's
final summary line prints (`beam_counters`, read from the finished pipeline's result). Beam's
DirectRunner reports them only once the pipeline has finished, so the live lines read a second copy
of the same counts: every `Counter` also adds to a registry of this process, which a daemon thread
(`report`) reads. (Beam's own live paths do not reach a launcher: the FnApiRunner's progress
requests have no callback, and its process-wide metrics container cannot be reset between runs.)

That copy exists only where the DoFns run in this process: the DirectRunner's default in-memory and
multi_threading modes, a portable runner's LOOPBACK workers. Where the workers are other processes
(--direct_running_mode multi_processing, Dataflow, a portable runner's EXTERNAL or DOCKER workers)
nothing reaches this process and no line is printed; the final summary still prints the counters
the runner reports. A retried bundle counts twice here (never in Beam's committed counters), so a
line's count is capped at its total. The registry holds one run at a time: `report` empties it.

EMOTION_PROGRESS_SECONDS sets the interval (tests lower it); each stage's --quiet turns the lines off.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

NAMESPACE = "emotion"
DEFAULT_INTERVAL_S = 10.0
RATE_WINDOW = 3  # a line's rate: over the last three intervals

_lock = threading.Lock()
_counts: dict[str, int] = {}


class Counter:
    """A Beam counter of the "emotion" namespace that also counts in this process's registry
    (outside a pipeline, as in `emotion compare`, only there)."""

    def __init__(self, name: str):
        self.name = name
        self._beam = Metrics.counter(NAMESPACE, name)

    def inc(self, n: int = 1) -> None:
        self._beam.inc(n)
        with _lock:
            _counts[self.name] = _counts.get(self.name, 0) + n


def count_reject(reason: str) -> None:
    """One more rejected_<reason> (the reasons are model.preprocess's and listing's fixed names)."""
    Counter(f"rejected_{reason}").inc()


def snapshot() -> dict[str, int]:
    """This process's counts since the last reset."""
    with _lock:
        return dict(_counts)


def reset() -> None:
    with _lock:
        _counts.clear()


class Figures(NamedTuple):
    """What a line says: `done` of `total` (None while unknown) `unit`, and a note after them."""

    done: int
    total: int | None
    unit: str
    note: str = ""


def format_rate(per_second: float) -> str:
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.1f}"


def format_duration(seconds: float) -> str:
    seconds = max(1, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def format_line(stage: str, figures: Figures, rate: float | None) -> str:
    """`stage: done / total unit (pct%), rate/s, ETA t` (`, finishing` once all are done); without a total,
    `stage: done unit, rate/s`."""
    done, total = figures.done, figures.total
    if total is None:
        text = f"{stage}: {done:,} {figures.unit}"
    else:
        done = min(done, total)
        percent = 100 * done // total if total else 100  # floored: 100% only when all is done
        text = f"{stage}: {done:,} / {total:,} {figures.unit} ({percent}%)"
    if total is not None and done >= total:
        text += ", finishing"
    elif rate is not None:
        text += f", {format_rate(rate)}/s"
        if total is not None and rate > 0:
            text += f", ETA {format_duration((total - done) / rate)}"
    return text + (f"; {figures.note}" if figures.note else "")


def interval_s() -> float:
    try:
        value = float(os.environ.get("EMOTION_PROGRESS_SECONDS", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


class _Reporter(threading.Thread):
    """Every interval: the registry -> the stage's figures -> one line (none while nothing was counted
    in this process). The rate is measured over the last RATE_WINDOW intervals of the same unit."""

    def __init__(self, stage: str, figures: Callable[[dict], Figures], interval: float, stream):
        super().__init__(name=f"{stage}-progress", daemon=True)
        self.stage, self.figures, self.interval, self.stream = stage, figures, interval, stream
        self.samples = collections.deque([(time.monotonic(), None, 0)], maxlen=RATE_WINDOW + 1)
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(self.interval):
            line = self.line(snapshot(), time.monotonic())
            if line:
                print(f"{time.strftime('%H:%M:%S')} {line}", file=self.stream, flush=True)

    def line(self, counts: dict, now: float) -> str | None:
        if not counts:
            return None
        figures = self.figures(counts)
        if self.samples[-1][1] not in (None, figures.unit):  # a new phase: its own rate
            self.samples.clear()
        self.samples.append((now, figures.unit, figures.done))
        then, _, done_then = self.samples[0]
        rate = (figures.done - done_then) / (now - then) if now > then else None
        return format_line(self.stage, figures, rate)


@contextlib.contextmanager
def report(stage: str, figures: Callable[[dict], Figures], quiet: bool = False, stream=None):
    """Prints the stage's progress lines (to stderr) while the block runs; the registry starts empty."""
    reset()
    if quiet:
        yield
        return
    reporter = _Reporter(stage, figures, interval_s(), stream or sys.stderr)
    reporter.start()
    try:
        yield
    finally:
        reporter.done.set()
        reporter.join(timeout=5)


def run_here_or_submit(pipeline, stage: str, figures: Callable[[dict], Figures], quiet: bool,
                       remote: bool) -> dict[str, int] | None:
    """Runs a stage's pipeline here with progress lines and returns its Beam counters ({name: value});
    or, on a remote runner, submits it and returns None."""
    if remote:
        result = pipeline.run()
        logging.getLogger("emotion").info(
            "%s: submitted %s", stage, result.job_id() if getattr(result, "has_job", False) else "")
        return None
    with report(stage, figures, quiet=quiet):
        result = pipeline.run()
        result.wait_until_finish()
    return beam_counters(result)


def beam_counters(result) -> dict[str, int]:
    """The finished pipeline's "emotion" counters summed over its steps (committed where the runner
    has them, else attempted); {} where the runner reports none."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception:  # a runner without metrics must not fail a run that finished
        return {}
    counts: dict[str, int] = {}
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        counts[counter.key.metric.name] = counts.get(counter.key.metric.name, 0) + (value or 0)
    return dict(sorted(counts.items()))


def format_counters(counts: dict[str, int]) -> str:
    """`; counters: name=value, ...` for a summary line ("" without counters)."""
    return "; counters: " + ", ".join(f"{name}={value}" for name, value in counts.items()) if counts else ""
