"""The `emotion` command: a thin layer over each stage's run(argv).

    emotion ingest  --input RAW --output OUT [Beam options...]
    emotion train   --data INGEST_OUT --model-dir DIR [...]
    emotion predict --input IMAGES_OR_TFRECORDS --output OUT [--model DIR] [Beam options...]
    emotion compare --a PREDS_A --b PREDS_B --output DIR   (or --table ROOT --a RUN_ID --b RUN_ID)
    emotion report  --output DIR
    emotion evaluate --model DIR --data INGEST_OUT [--final]
    emotion demo    [--output DIR]
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

from model.errors import UsageError
from model.gate import REFUSED_ERRNOS
from model.quiet import import_tensorflow_quietly


@dataclass(frozen=True)
class Command:
    """One `emotion` command: the module whose run(argv) it is."""

    module: str
    help: str
    extra: str  # the install extra that brings its frameworks (pyproject.toml): `pip install "emotion-pipeline[X]"`
    tensorflow: bool = False  # imports TensorFlow (its start-up lines are silenced first)
    flex_template: bool = False  # also a Dataflow Flex Template (deploy/dataflow/flex_main.py, its specs)


# The one list of commands: `emotion`'s and the Dataflow launcher's.
COMMANDS = {
    "ingest": Command("beam_pipelines.ingest.launcher", "raw image folders -> validated, sharded TFRecords", "pipelines",
                      flex_template=True),
    "train": Command("model.train", "tf.distribute training -> checkpoints, TensorBoard, exported model", "training",
                     tensorflow=True),
    "evaluate": Command("model.evaluate", "compare on val; --final scores test once and records it", "training",
                        tensorflow=True),
    "predict": Command("beam_pipelines.predict.launcher", "Beam batch inference -> Parquet predictions + evaluation", "all",
                       tensorflow=True, flex_template=True),
    "compare": Command("beam_pipelines.compare", "two prediction runs over the same images, model against model",
                       "pipelines"),
    "report": Command("beam_pipelines.report.launcher", "static HTML report of an ingest/train/predict output", "pipelines"),
    "demo": Command("beam_pipelines.demo", "ingest -> train -> predict -> report on the embedded sample", "all",
                    tensorflow=True),
}
FLEX_TEMPLATES = [name for name, command in COMMANDS.items() if command.flex_template]


def _usage() -> str:
    lines = ["usage: emotion COMMAND [options]   (emotion COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<8} {command.help}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def _quiet_logs(command: str, asks_for_help: bool) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # ingest never imports TensorFlow (its workers do not need it); --help needs none of it (5 s saved).
    if COMMANDS[command].tensorflow and not asks_for_help:
        import_tensorflow_quietly()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("apache_beam", "absl", "tensorflow", "matplotlib", "google", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # The DirectRunner logs a failing step's traceback and then raises the same exception: main() reports
    # it (one line for the user's mistakes, the traceback for anything else), so Beam's copy is noise.
    logging.getLogger("apache_beam.runners").setLevel(logging.CRITICAL)
    # RunInference logs this to the root logger on every run (an optional Beam import).
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: "Resource module is not available" not in record.getMessage())


class _Interrupted:
    """Ctrl-C: the first SIGINT silences the runner's threads (which log and print the interruption as
    errors of their own) and raises KeyboardInterrupt in the main thread, where Beam may wrap it in
    another exception; main() reports any exception after it as one "interrupted" line, exit 130."""

    seen = False

    @classmethod
    def handler(cls, signum, frame):
        if not cls.seen:
            cls.seen = True
            logging.disable(logging.CRITICAL)
            threading.excepthook = lambda args: None
        raise KeyboardInterrupt

    @staticmethod
    def unraisable_hook(previous):
        """sys.unraisablehook while a command runs: a Ctrl-C that lands in a finalizer (a __del__, a
        weakref callback: TensorFlow's run at any moment) cannot be raised there, and Python would print
        it as an "Exception ignored" traceback; it is dropped instead (the run goes on: it had finished, or
        the next Ctrl-C interrupts it). Any other unraisable exception is reported as before."""

        def hook(args):
            if args.exc_type is not None and issubclass(args.exc_type, KeyboardInterrupt):
                return
            previous(args)

        return hook


# The file system said no: a read-only or immutable file or folder, a file where a folder must go, a
# full disk. The user's to fix, not a bug: one line, exit 2 (Beam wraps the worker's OSError in its own).
STORAGE_REFUSALS = REFUSED_ERRNOS

# The frameworks an install extra brings: a command run without its extra says which one to install.
FRAMEWORKS = {"tensorflow", "keras", "apache_beam", "matplotlib", "ai_edge_litert", "mtcnn", "google", "tensorboard"}


# What each install extra must make importable for its commands to start (checked before the command's
# module is imported, so that even its --help names the extra to install rather than half-working).
EXTRA_FRAMEWORKS = {"pipelines": ("apache_beam",), "training": ("tensorflow",), "all": ("apache_beam", "tensorflow")}


def _absent_framework(extra: str) -> str | None:
    """The first framework `extra` brings that this install cannot import (found without importing it)."""
    return next((name for name in EXTRA_FRAMEWORKS.get(extra, ()) if importlib.util.find_spec(name) is None), None)


def _missing_framework(exc: BaseException) -> str | None:
    """The top-level name of a framework the install lacks, when that is why exc was raised."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] in FRAMEWORKS:
            return exc.name.split(".")[0]
        exc = exc.__cause__ or exc.__context__
    return None


def _storage_refusal(exc: BaseException) -> str | None:
    """The first line of the OSError behind exc (its cause or context chain) when it is a refusal by
    the file system; None otherwise."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_REFUSALS:
            paths = [name for name in (exc.filename, exc.filename2) if isinstance(name, str)]
            if exc.strerror and paths and all(path.isprintable() for path in paths):
                return f"{exc.strerror}: {' -> '.join(paths)}"[:300]  # the paths as they are, no repr() quotes
            return str(exc).splitlines()[0][:300]  # (repr() escapes a path's control characters)
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    from_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"emotion: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _Interrupted.handler) if main_thread else None
    hook, _Interrupted.seen = threading.excepthook, False
    unraisable = sys.unraisablehook
    if main_thread:
        sys.unraisablehook = _Interrupted.unraisable_hook(unraisable)
    try:
        code = run_command(command, rest)
    finally:
        if main_thread:
            # As a process's entry point (no argv given) the run's outcome is decided: a Ctrl-C during the
            # second the interpreter takes to exit (Beam's atexit hooks) must not turn it into a traceback.
            signal.signal(signal.SIGINT, signal.SIG_IGN if from_process else previous)
            sys.unraisablehook = unraisable
        if _Interrupted.seen:
            logging.disable(logging.NOTSET)
            threading.excepthook = hook
    if from_process and _Interrupted.seen:
        _end_process_within(INTERRUPTED_EXIT_S, code)
    return code


# After Ctrl-C, how long the interpreter's own exit may wait for the runner's threads.
INTERRUPTED_EXIT_S = 3.0


def _end_process_within(seconds: float, code: int) -> None:
    """Ctrl-C in a process of its own: by now the stage has put its outputs back (its claims' __exit__
    ran while the KeyboardInterrupt unwound, before run_command printed "interrupted"), so nothing is
    left to protect. But the runner's worker threads may still be inside a bundle, and the interpreter's
    exit joins them (concurrent.futures' exit hook waits for every pool worker): the process could hang
    there for good. Give the normal exit `seconds`, then end the process with `code` without waiting."""
    sys.stdout.flush()
    sys.stderr.flush()

    def end() -> None:
        time.sleep(seconds)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    threading.Thread(target=end, name="emotion-exit", daemon=True).start()


def run_command(command: str, argv: list[str], quiet_logs: bool = True) -> int:
    """Runs one command's run(argv) and turns how it ended into an exit code: the one error-handling path
    of `emotion` and of the Dataflow launcher (flex_main.py). A user's mistake (UsageError) or a refusal
    by the file system is one line and 2; after a Ctrl-C, "interrupted" and 130; anything else is a bug,
    raised with its traceback. quiet_logs=False keeps the caller's logging as it is (the launcher's)."""
    extra = COMMANDS[command].extra
    missing = _absent_framework(extra)
    try:
        if missing is None:
            if quiet_logs:
                _quiet_logs(command, asks_for_help=bool({"-h", "--help"} & set(argv)))
            importlib.import_module(COMMANDS[command].module).run(argv)
    except ModuleNotFoundError as exc:
        missing = _missing_framework(exc)
        if missing is None:
            raise
    except UsageError as exc:
        print(f"emotion {command}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse: it already printed one line
        if _Interrupted.seen:
            print(f"emotion {command}: interrupted", file=sys.stderr)
            return 130
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        if _Interrupted.seen:
            print(f"emotion {command}: interrupted", file=sys.stderr)
            return 130
        refused = _storage_refusal(exc)
        if refused is None:
            raise
        # The stage's claim has already put everything back (a failed run leaves every output as it was).
        print(f"emotion {command}: error: cannot write: {refused}; nothing was changed", file=sys.stderr)
        return 2
    if missing is not None:
        print(f"emotion {command}: error: needs {missing}, which this install lacks: "
              f'pip install "emotion-pipeline[{extra}]"', file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
