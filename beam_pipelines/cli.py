"""The `emotion` command: a thin layer over each stage's run(argv).

    emotion ingest  --input RAW --output OUT [Beam options...]
    emotion train   --data INGEST_OUT --model-dir DIR [...]
    emotion predict --input IMAGES_OR_TFRECORDS --output OUT [--model DIR] [Beam options...]
    emotion compare --a PREDS_A --b PREDS_B --output DIR   (or --table ROOT --a RUN_ID --b RUN_ID)
    emotion report  --output DIR
    emotion demo    [--output DIR]
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

COMMANDS = {
    "ingest": ("beam_pipelines.ingest", "raw image folders -> validated, sharded TFRecords"),
    "train": ("model.train", "tf.distribute training -> checkpoints, TensorBoard, exported model"),
    "predict": ("beam_pipelines.predict", "Beam batch inference -> Parquet predictions + evaluation"),
    "compare": ("beam_pipelines.compare", "two prediction runs over the same images, model against model"),
    "report": ("beam_pipelines.report", "static HTML report of an ingest/train/predict output"),
    "demo": ("beam_pipelines.demo", "ingest -> train -> predict -> report on the embedded sample"),
}

TENSORFLOW_COMMANDS = {"train", "predict", "demo"}


def _usage() -> str:
    lines = ["usage: emotion COMMAND [options]   (emotion COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def _import_tensorflow_quietly() -> None:
    """TensorFlow's C++ runtime prints start-up lines (CUDA probing, oneDNN notices) straight to
    stderr whatever TF_CPP_MIN_LOG_LEVEL says; hide them unless EMOTION_VERBOSE is set."""
    if os.environ.get("EMOTION_VERBOSE"):
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def _quiet_logs(command: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if command in TENSORFLOW_COMMANDS:  # ingest never imports TensorFlow (its workers do not need it)
        _import_tensorflow_quietly()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("apache_beam", "absl", "tensorflow", "matplotlib", "google", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # RunInference logs this to the root logger on every run (an optional Beam import).
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: "Resource module is not available" not in record.getMessage())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"emotion: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    _quiet_logs(command)
    from beam_pipelines.errors import UsageError

    module = importlib.import_module(COMMANDS[command][0])
    try:
        module.run(rest)
    except UsageError as exc:
        print(f"emotion {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"emotion {command}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # argparse: it already printed one line
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
