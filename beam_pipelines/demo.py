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

import csv
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

from beam_pipelines.common import UsageError, join, read_bytes, write_bytes
from schemas import SPLITS

SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample", "faces")
DEFAULT_OUTPUT = "emotion-demo"


def parse_args(argv):
    from model import SHIPPED_MODEL
    from beam_pipelines.report import OneLineErrors

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


def _check_model(path: str, what: str) -> dict:
    from model.export import ModelError, read_metadata

    try:
        return read_metadata(path)
    except (FileNotFoundError, ModelError) as exc:
        raise UsageError(f"{what}: {exc}") from None


def _check_input(path: str) -> None:
    from beam_pipelines.listing import exists_any

    if "://" not in path and not os.path.exists(path):
        raise UsageError(f"--input {path} does not exist")
    if "://" not in path and not os.path.isdir(path):
        raise UsageError(f"--input {path} is not a folder")
    try:
        found = exists_any(path)
    except Exception as exc:
        raise UsageError(f"cannot list --input {path}: {exc}") from None
    if not found:
        raise UsageError(f"--input {path} is empty")


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
    shown = 0
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
    _check_input(data_input)
    _check_output(output)
    from beam_pipelines.report import check_report_is_ours

    check_report_is_ours(output)
    if args.shipped_model is not None:
        shipped = _absolute(args.shipped_model)
        shipped_meta = _check_model(shipped, "--shipped-model")
    elif os.path.exists(os.path.join(args.default_shipped, "metadata.json")):
        shipped = args.default_shipped
        shipped_meta = _check_model(shipped, "the shipped model")
    else:
        shipped, shipped_meta = None, None

    from beam_pipelines import ingest, predict, report

    emotion_log = logging.getLogger("emotion")
    saved_level = emotion_log.level
    noise = _DropBeamNoise()
    root_handlers = logging.getLogger().handlers
    if not os.environ.get("EMOTION_VERBOSE"):
        emotion_log.setLevel(logging.WARNING)  # the demo prints its own progress
    for h in root_handlers:
        h.addFilter(noise)
    try:
        return _run(args, output, data_input, shipped, shipped_meta, ingest, predict, report)
    finally:
        emotion_log.setLevel(saved_level)
        for h in root_handlers:
            h.removeFilter(noise)


def _run(args, output, data_input, shipped, shipped_meta, ingest, predict, report) -> dict:
    p = _Progress()
    total = 6 if shipped else 5
    ingest_dir, train_dir = join(output, "ingest"), join(output, "train")
    print(f"emotion demo: {data_input}\n           -> {output}", flush=True)
    if not shipped:
        p.say(
            f"no shipped model at {args.default_shipped}; the shipped-model stages are left out "
            "(pass --shipped-model DIR to compare with an exported model)"
        )

    # ------------------------------------------------------------------ 1. ingest
    t = p.stage(
        1, total, "ingest", "embedded sample -> validated TFRecords (splits by content hash: val 15%, test 25%)"
    )
    stats = ingest.run(
        ["--input", data_input, "--output", ingest_dir, "--val-fraction", "0.15", "--test-fraction", "0.25", "--quiet"]
    )
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
            f"ingest of {data_input} wrote {per_split.get('train', 0)} training images; the demo needs "
            f"at least --batch-size ({args.batch_size}); is the input laid out as <class>/<image>?"
        )
    if not per_split.get("test"):
        raise UsageError(f"ingest of {data_input} put no image in the test split; the demo needs a few dozen images")

    # ------------------------------------------------------------------ 2. train
    t = p.stage(
        2,
        total,
        "train",
        f"{args.arch}, {args.epochs} epochs, batch {args.batch_size}, on "
        f"{per_split['train']} images (subprocess: emotion train)",
    )
    _train(args, ingest_dir, train_dir, p)
    meta = json.loads(read_bytes(join(train_dir, "metadata.json")))
    m = meta.get("metrics", {})
    val_f1 = m.get("val", {}).get("macro_f1")
    best = meta.get("training", {}).get("best_epoch")
    if val_f1 is not None:
        tta_f1 = m.get("val_flip_tta", {}).get("macro_f1", float("nan"))
        result = f"{meta['model_version']}: val macro-F1 {val_f1:.3f} (best epoch {best}), with flip TTA {tta_f1:.3f}"
    else:
        result = f"{meta['model_version']} exported (no val split)"
    p.done("train", result, t)

    # ------------------------------------------------------------------ 3./4. predict the test split
    test_records = join(ingest_dir, "tfrecords", "test-*.tfrecord")
    results = {}
    runs = [("predict-trained", train_dir, "freshly trained model")]
    if shipped:
        runs.append(("predict-shipped", shipped, "shipped model"))
    for name, model_dir, what in runs:
        t = p.stage(3, total, "predict", f"test split ({per_split['test']} images, TFRecords) with the {what}")
        summary = predict.run(["--input", test_records, "--output", join(output, name), "--model", model_dir,
                               "--quiet"])
        results[name] = summary
        p.done(
            f"predict test: {what}",
            f"{summary['totals']['predicted']} predicted: accuracy {summary['accuracy']:.3f}, "
            f"macro-F1 {summary['macro_f1']:.3f}  [{summary['model_version']}, TTA {summary.get('tta') or 'none'}]",
            t,
        )

    # ------------------------------------------------------------------ 4. predict the raw folder (dead letters)
    raw_model, raw_name, raw_what = (
        (shipped, "predict-raw-shipped", "shipped model")
        if shipped
        else (train_dir, "predict-raw-trained", "freshly trained model")
    )
    t = p.stage(4, total, "predict", f"the raw sample folder, bad files included, with the {raw_what}")
    summary = predict.run(["--input", data_input, "--output", join(output, raw_name), "--model", raw_model, "--quiet"])
    results[raw_name] = summary
    st = summary["totals"]
    rejected = ", ".join(f"{k} {v}" for k, v in summary["rejected"].items())
    p.done(
        f"predict raw folder: {raw_what}",
        f"{st['matched']} files matched: {st['predicted']} predicted, {st['rejected']} rejected"
        f"{f' ({rejected})' if rejected else ''}, {st['skipped_non_data']} skipped; accuracy "
        f"{summary['accuracy']:.3f} on {summary['labelled']} labelled",
        t,
    )

    # ------------------------------------------------------------------ the two models, image by image
    if shipped:
        from beam_pipelines import compare

        t = p.stage(5, total, "compare", "the trained and the shipped model on the same test images")
        c = compare.run(["--a", join(output, "predict-trained"), "--b", join(output, "predict-shipped"),
                         "--output", join(output, "compare-trained-vs-shipped"), "--quiet"])
        p.done("compare: trained vs shipped", f"agreement {c['agreement']:.3f} on {c['images_in_both']} images; "
               f"only one right: {c.get('only_a_correct', 0)} trained, {c.get('only_b_correct', 0)} shipped", t)

    # ------------------------------------------------------------------ 5. report
    t = p.stage(total, total, "report", "static HTML page of every stage")
    sections = [
        {
            "path": "ingest",
            "title": "Data: the embedded sample, ingested",
            "note": "Bad files are part of the sample on purpose: an empty file, a truncated JPEG, a text file named "
            ".png, a folder naming no emotion (contempt/) and a .DS_Store.",
        },
        {
            "path": "train",
            "title": f"Training: recipe {args.config} ({args.arch}, {args.epochs} epochs on the sample)",
            "note": "The shipped model fine-tuned for seconds on the sample's train split (recipe "
            f"model/recipes/{args.config}.toml): the mechanics of adapting the model to your own data. "
            "On a few dozen test images the scores move by a few images either way.",
        },
        {"path": "predict-trained", "title": "Test split: freshly trained model"},
    ]
    if shipped:
        sections.append(
            {
                "path": "predict-shipped",
                "title": "Test split: shipped model",
                "note": f"The shipped model ({shipped_meta.get('model_version')}) on the same "
                f"{per_split['test']} test images.",
            }
        )
    sections.append(
        {
            "path": raw_name,
            "title": f"Raw sample folder: {raw_what}",
            "note": "The image folder itself, not the TFRecords: files that cannot be decoded go to the "
            "dead-letter table instead of failing the job.",
        }
    )
    if shipped:
        sections.append({
            "path": "compare-trained-vs-shipped",
            "title": "Trained (a) against shipped (b), image by image",
            "note": "emotion compare on the two test-split runs above: where the two models disagree, and "
                    "which of them is right there.",
        })
    manifest = {"title": "Emotion pipeline demo", "sections": sections, "stages": p.rows}
    write_bytes(join(output, report.MANIFEST), (json.dumps(manifest, indent=2) + "\n").encode(), "application/json")
    path = report.build(output)
    p.done("report", path, t)

    _print_summary(p, stats, meta, results, runs, raw_name, path)
    return {"output": output, "report": path, "ingest": stats, "train": meta, "predict": results}


def _print_summary(p, stats, meta, results, runs, raw_name, path) -> None:
    tot = stats["totals"]
    per_split = stats["written_per_split"]
    splits = ", ".join(f"{s} {per_split[s]}" for s in SPLITS if s in per_split)
    m = meta.get("metrics", {})

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    training = meta.get("training", {})
    rows = [
        (
            "ingest",
            f"{tot['written']} images written ({splits}), "
            f"{tot['rejected']} rejected, {tot['skipped_non_data']} skipped of {tot['matched']} files",
        ),
        (
            "train",
            f"val macro-F1 {f(m.get('val', {}).get('macro_f1'))} "
            f"(flip TTA {f(m.get('val_flip_tta', {}).get('macro_f1'))}), "
            f"{training.get('epochs_run')} epochs in {training.get('seconds_this_run')}s",
        ),
    ]
    for name, _, what in runs:
        s = results[name]
        rows.append(
            (
                f"test, {what.replace('freshly ', '')}",
                f"accuracy {f(s['accuracy'])}, macro-F1 {f(s['macro_f1'])} on {s['labelled']} images"
                + (" (flip TTA)" if s.get("tta") == "flip" else ""),
            )
        )
    s = results[raw_name]
    rows.append(
        (
            "raw folder",
            f"{s['totals']['predicted']} predicted, {s['totals']['rejected']} rejected "
            f"({', '.join(s['rejected'])}), {s['totals']['skipped_non_data']} skipped",
        )
    )
    rows.append(("report", path))
    width = max(len(r[0]) for r in rows)
    print(f"\nDemo finished in {p.elapsed():.1f}s\n", flush=True)
    print(f"  {'stage':<{width}}  result")
    print(f"  {'-' * width}  {'-' * 60}")
    for stage, result in rows:
        print(f"  {stage:<{width}}  {result}")
    print(f"\nOpen {path} in a browser.", flush=True)
