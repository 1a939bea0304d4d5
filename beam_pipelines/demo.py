"""Demo: ingest -> train -> predict -> report on the embedded sample, in about a minute on a laptop.

    emotion demo                               # writes ./emotion-demo/
    emotion demo --output /tmp/demo --shipped-model /path/to/exported/model

Stages, each in its own subfolder of --output:
  ingest/                the embedded sample (30 FER2013 test images per class, plus a few bad
                         files) -> TFRecords, split by content hash (train / val 15% / test 25%)
  train/                 `emotion train --config demo`: the shipped model fine-tuned for a few
                         epochs on the train split (a subprocess: training sets up TensorFlow's
                         devices, which can only happen once per process)
  predict-trained/       the test split's TFRecords through the freshly trained model
  predict-shipped/       the same TFRecords through the shipped model
  predict-raw-shipped/   the raw sample folder through the shipped model: the bad files
                         land in the dead-letter table (rejected/*.parquet)
  compare-trained-vs-shipped/   `emotion compare` of the two test-split runs, image by image
  report.html            everything above on one self-contained page

A net trained from zero on ~120 images stays at chance, so the demo's recipe (model/recipes/demo.toml)
starts from the shipped weights: a first-time user sees a real model adapt to new data in seconds.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from beam_pipelines.base.files import check_input, join, read_bytes
from beam_pipelines.base.runner import OneLineErrors
from beam_pipelines.base.storage import pipeline_gate
from beam_pipelines.demo_text import print_summary, report_sections
from beam_pipelines.predict.model_check import check_model
from model.errors import UsageError
from schemas import SPLITS

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample", "faces")
DEFAULT_OUTPUT = "emotion-demo"


def parse_args(argv):
    from model import SHIPPED_MODEL

    p = OneLineErrors(prog="emotion demo", description=__doc__.split("\n")[0])
    p.add_argument("--output", default=DEFAULT_OUTPUT, help=f"demo folder (default: ./{DEFAULT_OUTPUT})")
    p.add_argument("--input", default=SAMPLE, help="image root with <class>/ folders (default: the embedded sample)")
    p.add_argument(
        "--shipped-model",
        default=None,
        help=f"exported model to compare with (default: the shipped model, {SHIPPED_MODEL})",
    )
    p.add_argument("--config", default="demo",
                   help="training recipe (default: demo, a short fine-tune of the shipped model; model/recipes/)")
    p.add_argument("--arch", default=None, help="override the recipe's architecture")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    args = p.parse_args(argv)  # an unknown option: UsageError, one line
    if (args.epochs is not None and args.epochs < 1) or (args.batch_size is not None and args.batch_size < 1):
        raise UsageError("--epochs and --batch-size must be positive")
    from model import recipe

    try:
        args.recipe = recipe.load(args.config)
    except recipe.RecipeError as exc:
        raise UsageError(str(exc)) from None
    args.arch = args.arch or args.recipe.get("arch")
    args.epochs = args.epochs or args.recipe.get("epochs")
    args.batch_size = args.batch_size or args.recipe.get("batch_size")
    args.default_shipped = SHIPPED_MODEL
    return args


def _absolute(path: str) -> str:
    path = path.rstrip("/") or "/"
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


class _Progress:
    """Progress lines on stdout, each with the time since the demo started."""

    def __init__(self):
        self.start = time.time()
        self.rows: list[dict] = []

    def elapsed(self) -> float:
        return time.time() - self.start

    def say(self, text: str, indent: int = 0) -> None:
        print(f"[{self.elapsed():6.1f}s] {' ' * indent}{text}", flush=True)

    def stage(self, number: int, total: int, name: str, text: str) -> float:
        self.say(f"{number}/{total} {name}: {text}")
        return time.time()

    def done(self, name: str, result: str, since: float) -> None:
        seconds = time.time() - since
        self.say(f"{result}  ({seconds:.1f}s)", indent=4)
        self.rows.append({"stage": name, "result": result, "seconds": round(seconds, 1)})


class _DropBeamNoise(logging.Filter):
    """RunInference warns on every batch when its optional memory probe cannot be imported."""

    def filter(self, record):
        return "memory usage cannot be fetched" not in record.getMessage()


def _check_output(path: str) -> None:
    if "://" in path:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--output {path} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create --output {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"--output {path} is not writable")


def _train(args, data: str, model_dir: str, progress: _Progress) -> None:
    """`emotion train --config demo` in a subprocess (training sets up TensorFlow's devices, which
    happens once per process); each epoch's row of its history.csv becomes a progress line."""
    cmd = [sys.executable, "-m", "beam_pipelines.cli", "train", "--config", args.config, "--data", data,
           "--model-dir", model_dir, "--strategy", "one-device", "--fresh"]
    for flag, value in (("--arch", args.arch), ("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value is not None:
            cmd += [flag, str(value)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    history = os.path.join(model_dir, "history.csv")
    shown, exporting = 0, False
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            while True:
                code = proc.poll()
                rows = _read_history(history)
                for row in rows[shown:]:
                    val = (f"  val acc {float(row['val_accuracy']):.3f}  val macro-F1 {float(row['val_macro_f1']):.3f}"
                           if row.get("val_macro_f1") else "")
                    progress.say(f"epoch {row['epoch']}/{args.epochs}  loss {float(row['loss']):.4f}  "
                                 f"train acc {float(row['accuracy']):.3f}{val}", indent=4)
                shown = max(shown, len(rows))
                if code is not None:
                    break
                if rows and int(rows[-1]["epoch"]) >= args.epochs and not exporting:
                    exporting = True  # the export takes half a minute on 2 cores: say what happens meanwhile
                    progress.say("export: best weights -> SavedModel and model.keras, the int8 file checked "
                                 "against the float model, val scored in 3 TTA modes, temperature fitted", indent=4)
                time.sleep(0.3)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
        if code != 0:
            log.seek(0)
            lines = log.read().splitlines()
            print("--- emotion train output (last lines) ---\n" + "\n".join(lines[-25:]) + "\n---", file=sys.stderr)
            last = next((ln for ln in reversed(lines) if ln.strip()), "")
            raise UsageError(f"training failed (exit {code}): {last.strip()[:300]}")


def _read_history(path: str) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def run(argv=None) -> dict:
    args = parse_args(argv)
    output = _absolute(args.output)
    data_input = _absolute(args.input)
    check_input(data_input)
    _check_output(output)
    from beam_pipelines.report.launcher import check_report_is_ours

    check_report_is_ours(output)
    if args.shipped_model is not None:
        shipped = _absolute(args.shipped_model)
        shipped_meta, _ = check_model(shipped, what="--shipped-model")
    elif os.path.exists(os.path.join(args.default_shipped, "metadata.json")):
        shipped = args.default_shipped
        shipped_meta, _ = check_model(shipped, what="the shipped model")
    else:
        shipped, shipped_meta = None, None

    emotion_log = logging.getLogger("emotion")
    saved_level = emotion_log.level
    noise = _DropBeamNoise()
    root_handlers = logging.getLogger().handlers
    if not os.environ.get("EMOTION_VERBOSE"):
        emotion_log.setLevel(logging.WARNING)  # the demo prints its own progress
    for h in root_handlers:
        h.addFilter(noise)
    try:
        return _run(_Demo(args, output, data_input, shipped, shipped_meta))
    finally:
        emotion_log.setLevel(saved_level)
        for h in root_handlers:
            h.removeFilter(noise)


@dataclass
class _Demo:
    """One demo run: its arguments, its folders, the shipped model (None: not there) and its progress lines."""

    args: argparse.Namespace
    output: str
    data_input: str
    shipped: str | None
    shipped_meta: dict | None
    progress: _Progress = field(default_factory=_Progress)

    @property
    def stages(self) -> int:
        return 6 if self.shipped else 5

    def folder(self, name: str) -> str:
        return join(self.output, name)


class _PredictRun(NamedTuple):
    name: str  # its subfolder of --output
    model_dir: str
    what: str  # the model, as the progress lines name it


def _run(demo: _Demo) -> dict:
    """The stages in order, each printing its progress lines; the demo's outputs, read back."""
    print(f"emotion demo: {demo.data_input}\n           -> {demo.output}", flush=True)
    if not demo.shipped:
        demo.progress.say(
            f"no shipped model at {demo.args.default_shipped}; the shipped-model stages are left out "
            "(pass --shipped-model DIR to compare with an exported model)"
        )
    stats = _ingest_stage(demo)
    per_split = stats["written_per_split"]
    meta = _train_stage(demo, per_split)
    runs = [_PredictRun("predict-trained", demo.folder("train"), "freshly trained model")]
    if demo.shipped:
        runs.append(_PredictRun("predict-shipped", demo.shipped, "shipped model"))
    demo.progress.stage(3, demo.stages, "predict", f"test split ({per_split['test']} images, TFRecords) with the "
                        + " and the ".join(run.what for run in runs))
    results = {run.name: _predict_test_split(demo, run) for run in runs}
    raw = (_PredictRun("predict-raw-shipped", demo.shipped, "shipped model") if demo.shipped
           else _PredictRun("predict-raw-trained", demo.folder("train"), "freshly trained model"))
    results[raw.name] = _predict_raw_folder(demo, raw)
    if demo.shipped:
        _compare_stage(demo)
    path = _report_stage(demo, per_split, raw)
    print_summary(demo.progress, stats, meta, results, runs, raw.name, path)
    return {"output": demo.output, "report": path, "ingest": stats, "train": meta, "predict": results}


def _ingest_stage(demo: _Demo) -> dict:
    """1. The sample -> TFRecords; its stats.json, after checking there is enough to train and test on."""
    from beam_pipelines.ingest import launcher as ingest

    p, args = demo.progress, demo.args
    t = p.stage(1, demo.stages, "ingest",
                "embedded sample -> validated TFRecords (splits by content hash: val 15%, test 25%)")
    stats = ingest.run(["--input", demo.data_input, "--output", demo.folder("ingest"), "--val-fraction", "0.15",
                        "--test-fraction", "0.25", "--quiet"])
    tot = stats["totals"]
    per_split = stats["written_per_split"]
    splits = " / ".join(f"{s} {per_split.get(s, 0)}" for s in SPLITS if s in per_split)
    rejected = ", ".join(f"{k} {v}" for k, v in stats["rejected"].items())
    p.done(
        "ingest",
        f"{tot['matched']} files matched: {tot['written']} written ({splits}), "
        f"{tot['rejected']} rejected{f' ({rejected})' if rejected else ''}, "
        f"{tot['skipped_non_data']} skipped",
        t,
    )
    for warning in stats.get("warnings", []):
        p.say(f"warning: {warning}", indent=4)
    if per_split.get("train", 0) < args.batch_size:
        raise UsageError(
            f"ingest of {demo.data_input} wrote {per_split.get('train', 0)} training images; the demo needs "
            f"at least --batch-size ({args.batch_size}); is the input laid out as <class>/<image>?"
        )
    if not per_split.get("test"):
        raise UsageError(f"ingest of {demo.data_input} put no image in the test split; the demo needs a few dozen "
                         "images")
    return stats


def _train_stage(demo: _Demo, per_split: dict) -> dict:
    """2. `emotion train` on the train split (a subprocess); the export's metadata.json."""
    args, train_dir = demo.args, demo.folder("train")
    epochs = f"{args.epochs} epoch{'' if args.epochs == 1 else 's'}"
    t = demo.progress.stage(2, demo.stages, "train", f"{args.arch}, {epochs}, batch {args.batch_size}, "
                            f"on {per_split['train']} images (subprocess: emotion train)")
    _train(args, demo.folder("ingest"), train_dir, demo.progress)
    meta = json.loads(read_bytes(join(train_dir, "metadata.json")))
    m = meta.get("metrics", {})
    val_f1 = m.get("val", {}).get("macro_f1")
    best = meta.get("training", {}).get("best_epoch")
    if val_f1 is not None:
        tta_f1 = m.get("val_flip_tta", {}).get("macro_f1", float("nan"))
        result = f"{meta['model_version']}: val macro-F1 {val_f1:.3f} (best epoch {best}), with flip TTA {tta_f1:.3f}"
    else:
        result = f"{meta['model_version']} exported (no val split)"
    demo.progress.done("train", result, t)
    return meta


def _predict_test_split(demo: _Demo, run: _PredictRun) -> dict:
    """3. The test split's TFRecords through one model; predict's summary."""
    from beam_pipelines.predict import launcher as predict

    t = time.time()
    summary = predict.run(["--input", join(demo.folder("ingest"), "tfrecords", "test-*.tfrecord"),
                           "--output", demo.folder(run.name), "--model", run.model_dir, "--quiet"])
    demo.progress.done(
        f"predict test: {run.what}",
        f"{run.what}: {summary['totals']['predicted']} predicted: accuracy {summary['accuracy']:.3f}, "
        f"macro-F1 {summary['macro_f1']:.3f}  [{summary['model_version']}, TTA {summary.get('tta') or 'none'}]",
        t,
    )
    return summary


def _predict_raw_folder(demo: _Demo, raw: _PredictRun) -> dict:
    """4. The raw sample folder, bad files included, through one model (they land in the dead letters)."""
    from beam_pipelines.predict import launcher as predict

    t = demo.progress.stage(4, demo.stages, "predict", f"the raw sample folder, bad files included, with the "
                            f"{raw.what}")
    summary = predict.run(["--input", demo.data_input, "--output", demo.folder(raw.name), "--model", raw.model_dir,
                           "--quiet"])
    st = summary["totals"]
    rejected = ", ".join(f"{k} {v}" for k, v in summary["rejected"].items())
    demo.progress.done(
        f"predict raw folder: {raw.what}",
        f"{st['matched']} files matched: {st['predicted']} predicted, {st['rejected']} rejected"
        f"{f' ({rejected})' if rejected else ''}, {st['skipped_non_data']} skipped; accuracy "
        f"{summary['accuracy']:.3f} on {summary['labelled']} labelled",
        t,
    )
    return summary


def _compare_stage(demo: _Demo) -> None:
    """5. The trained and the shipped model on the same test images, image by image."""
    from beam_pipelines import compare

    t = demo.progress.stage(5, demo.stages, "compare", "the trained and the shipped model on the same test images")
    c = compare.run(["--a", demo.folder("predict-trained"), "--b", demo.folder("predict-shipped"),
                     "--output", demo.folder("compare-trained-vs-shipped"), "--quiet"])
    demo.progress.done("compare: trained vs shipped", f"agreement {c['agreement']:.3f} on {c['images_in_both']} "
                       f"images; only one right: {c.get('only_a_correct', 0)} trained, "
                       f"{c.get('only_b_correct', 0)} shipped", t)


def _report_stage(demo: _Demo, per_split: dict, raw: _PredictRun) -> str:
    """The last stage: demo.json (the sections' titles and notes, the stages' times), then the page."""
    from beam_pipelines.report import launcher as report

    t = demo.progress.stage(demo.stages, demo.stages, "report", "static HTML page of every stage")
    manifest = {"title": "Emotion pipeline demo", "sections": report_sections(demo, per_split, raw),
                "stages": demo.progress.rows}
    # Through the gate, as report.html next to it: whole or not at all, a link there replaced, not followed.
    pipeline_gate([demo.output]).write_bytes(demo.folder(report.MANIFEST),
                                             (json.dumps(manifest, indent=2) + "\n").encode())
    path = report.build(demo.output)
    demo.progress.done("report", path, t)
    return path


