"""Pipeline options and runner checks shared by the stages: the pass-through Beam arguments validated
up front (the runner named, Dataflow's project/region/temp location, no stray option), the one-line
argument errors, and the `emotion` logger."""

from __future__ import annotations

import argparse
import importlib
import logging

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)
from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator

from model.errors import UsageError

log = logging.getLogger("emotion")


class OneLineErrors(argparse.ArgumentParser):
    """argparse that reports a bad option as a UsageError: one line, exit 2, no usage dump."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def pipeline_options(beam_args: list[str], save_main_session: bool) -> PipelineOptions:
    """PipelineOptions from the pass-through Beam arguments, validated up front.

    The runner defaults to the DirectRunner (Beam's own default downloads Prism, which
    needs the network). Dataflow runs must name a project, region and gs:// temp location.
    """
    options = PipelineOptions(beam_args, save_main_session=save_main_session, pipeline_type_check=True)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = "DirectRunner"
    check_runner(options)
    if is_dataflow_runner(standard.runner):
        gcp = options.view_as(GoogleCloudOptions)
        missing = [
            flag
            for flag, value in (
                ("--project", gcp.project),
                ("--region", gcp.region),
                ("--temp_location", gcp.temp_location),
            )
            if not value
        ]
        if missing:
            raise UsageError(f"DataflowRunner needs {', '.join(missing)}")
        if not gcp.temp_location.startswith("gs://"):
            raise UsageError(f"--temp_location must be a gs:// path for Dataflow, got {gcp.temp_location}")
        # Beam's own check, now rather than at submission: given an invalid bucket name (or no
        # object path), Dataflow falls back to creating a default bucket over the network.
        validator = PipelineOptionsValidator(options, standard.runner)
        problems = [
            problem
            for name in ("temp_location", "staging_location")
            if getattr(gcp, name)
            for problem in validator.validate_gcs_path(gcp, name)
        ]
        if problems:
            raise UsageError("; ".join(problems))
    return options


WORKER_START_TIMEOUT_S = 60  # a worker pool's new SDK worker connecting back (a Python start-up)


def check_runner(options: PipelineOptions) -> None:
    """The runner exists and what a portable runner needs answers, before anything is built or
    written. Unchecked, an unknown --runner is a traceback at submission, an unreachable job
    service a wait of --job_server_timeout (300 s), and a worker pool whose workers cannot import
    Beam a silent hang: the embedded job service waits forever for them to connect."""
    from apache_beam.runners.portability.portable_runner import PortableRunner

    from beam_pipelines.base.portable import check_worker_pool, external_worker_pool, probe_endpoint

    runner = runner_class(options.view_as(StandardOptions).runner)
    if not issubclass(runner, PortableRunner):
        return
    portable = options.view_as(PortableOptions)
    # FlinkRunner and SparkRunner start a job server of their own; PortableRunner has none.
    if runner is PortableRunner and not portable.job_endpoint:
        raise UsageError("PortableRunner needs --job_endpoint: a job service's HOST:PORT, or embed to run here")
    if portable.job_endpoint and portable.job_endpoint != "embed":
        probe_endpoint(portable.job_endpoint, "the job service (--job_endpoint)")
    # Only an embedded job service asks the pool for workers from this machine. Submitted to a
    # cluster, the EXTERNAL address is the one its nodes see (a pool beside each task manager),
    # which this machine need not reach.
    if portable.job_endpoint == "embed" and portable.environment_type == "EXTERNAL":
        address = external_worker_pool(portable)
        probe_endpoint(address, "the worker pool (--environment_config)")
        check_worker_pool(address, WORKER_START_TIMEOUT_S)


def runner_class(name: str) -> type:
    """The class --runner names, found as Beam's create_runner finds it (a known name in any case,
    with or without "Runner", or a class's dotted path), importing only its module."""
    known = {path.rsplit(".", 1)[-1].lower(): path for path in StandardOptions.ALL_KNOWN_RUNNERS}
    path = known.get(name.lower()) or known.get(name.lower() + "runner") or name
    module, _, class_name = path.rpartition(".")
    if not module:
        raise UsageError(f"unknown --runner {name}: use one of {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)} "
                         "or a runner class's dotted path")
    try:
        return getattr(importlib.import_module(module), class_name)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load --runner {name}: {exc}") from None


def is_dataflow_runner(runner) -> bool:
    """Beam resolves runner names case-insensitively, with or without "Runner" (Dataflow,
    dataflow, DataflowRunner, TestDataflowRunner, the class path): all of them submit to Dataflow."""
    name = runner if isinstance(runner, str) else type(runner).__name__
    return "dataflow" in (name or "").lower()


def is_remote_runner(options: PipelineOptions) -> bool:
    return is_dataflow_runner(options.view_as(StandardOptions).runner)


def is_dry_run(options: PipelineOptions) -> bool:
    """--dry_run builds a Dataflow job without submitting it, and touches no storage."""
    from apache_beam.options.pipeline_options import TestOptions

    dry_run = bool(options.view_as(TestOptions).dry_run)
    if dry_run and not is_remote_runner(options):
        raise UsageError("--dry_run builds a Dataflow job: use it with --runner DataflowRunner")
    return dry_run


def check_remote_paths(options: PipelineOptions, **paths: str) -> None:
    """On Dataflow every path is read or written by workers: it must be gs:// (dry runs excepted)."""
    if not is_remote_runner(options) or is_dry_run(options):
        return
    for flag, path in paths.items():
        if not str(path).startswith("gs://"):
            raise UsageError(f"--{flag} must be a gs:// path on Dataflow (workers cannot see {path})")


def add_run_flags(parser: argparse.ArgumentParser, files_per_batch_help: str) -> None:
    """The flags every Beam stage takes after its own: how many files a work item decodes, the
    decoder's pixel limit, --overwrite and --quiet. parse_run_args checks them."""
    from model.preprocess import DEFAULT_MAX_PIXELS

    parser.add_argument("--files-per-batch", type=int, default=256, help=files_per_batch_help)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="larger images are rejected as too_large, from their header, before decoding")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files under --output that no earlier run of this pipeline wrote")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress lines on stderr while a local run runs (the final summary still prints)")


def parse_run_args(parser: argparse.ArgumentParser, argv) -> tuple[argparse.Namespace, list[str]]:
    """A stage's arguments and the Beam arguments left over, with what add_run_flags added checked,
    no stray option left for Beam to drop, and --input/--output without a trailing slash."""
    from beam_pipelines.base.files import check_max_pixels

    args, beam_args = parser.parse_known_args(argv)
    check_unknown_args(beam_args, parser.prog)
    check_max_pixels(args.max_pixels)
    if args.files_per_batch < 1:
        raise UsageError("--files-per-batch must be at least 1")
    args.input = args.input.rstrip("/")
    args.output = args.output.rstrip("/")
    return args, beam_args


def check_unknown_args(beam_args: list[str], prog: str) -> None:
    """What a stage's parser did not know goes to Beam, which silently drops what it does not know
    either: a mistyped option (--face-crp) would run something else than asked. Every leftover
    option must be one of Beam's pipeline options (any PipelineOptions subclass), or a UsageError
    names it. Beam's own parser (handed over by get_all_options) decides, abbreviations excluded."""
    parsers = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    parser = parsers[0]

    def error(message):
        raise UsageError(f"{message} (a Beam pipeline option of {prog})")

    parser.error = error  # one line instead of argparse's usage dump
    _, unknown = parser.parse_known_args(list(beam_args))
    flags = [arg for arg in unknown if arg.startswith("-")]
    stray = [arg for arg in unknown if not arg.startswith("-")]
    if flags or stray:
        shown = " ".join((flags or stray)[:3])
        raise UsageError(f"unrecognized argument{'s' if len(flags or stray) > 1 else ''}: {shown} "
                         f"(neither an option of {prog} nor a Beam pipeline option; see {prog} --help)")
