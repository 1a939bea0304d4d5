"""Dataflow Flex Template entry point for `emotion ingest` and `emotion predict`.

Dataflow's template launcher runs

    python /template/flex_main.py --input=gs://... --image_size=48 ... \\
        --runner=DataflowRunner --project=... --region=... --temp_location=... \\
        --staging_location=... --template_location=... --sdk_container_image=... --job_name=...

with one `--name=value` per template parameter (metadata.json; names use underscores, every
value is a string) followed by the Dataflow options. This script maps the template parameters
onto the pipeline's own flags (--image_size=48 -> --image-size 48, --face_crop=true ->
--face-crop) and hands everything else to Beam unchanged.

The pipeline comes from EMOTION_PIPELINE (set by Dockerfile.launcher), or --pipeline=ingest|predict.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}

# template parameter -> pipeline flag; None marks the face_crop switch (handled below)
PARAMETERS = {
    "ingest": {
        "input": "--input",
        "output": "--output",
        "image_size": "--image-size",
        "face_crop": None,
        "val_fraction": "--val-fraction",
        "test_fraction": "--test-fraction",
        "seed": "--seed",
        "num_shards": "--num-shards",
        "max_pixels": "--max-pixels",
        "files_per_batch": "--files-per-batch",
    },
    "predict": {
        "input": "--input",
        "output": "--output",
        "model": "--model",
        "face_crop": None,
        "face_detector": "--face-detector",
        "batch_size": "--batch-size",
        "files_per_batch": "--files-per-batch",
        "max_pixels": "--max-pixels",
    },
}
MODULES = {"ingest": "beam_pipelines.ingest", "predict": "beam_pipelines.predict"}


class TemplateError(ValueError):
    """A template parameter value the pipeline cannot take."""


def _split(argv: list[str]) -> list[tuple[str, str | None, str]]:
    """[(name, value or None, original token(s))] for every --option; positional tokens pass through."""
    out, i = [], 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--") and "=" in token:
            name, value = token[2:].split("=", 1)
            out.append((name, value, token))
        elif token.startswith("--"):
            name = token[2:]
            # "--name value" form, only for our own parameters (Beam flags keep their own syntax)
            if i + 1 < len(argv) and not argv[i + 1].startswith("--") and _known(name):
                out.append((name, argv[i + 1], token))
                i += 1
            else:
                out.append((name, None, token))
        else:
            out.append(("", None, token))
        i += 1
    return out


def _known(name: str) -> bool:
    return any(name.replace("-", "_") in params for params in PARAMETERS.values()) or name == "pipeline"


def translate(pipeline: str, argv: list[str]) -> list[str]:
    """Template-style arguments -> the argv of beam_pipelines.<pipeline>.run()."""
    if pipeline not in PARAMETERS:
        raise TemplateError(f"unknown pipeline {pipeline!r}: expected one of {sorted(PARAMETERS)}")
    params = PARAMETERS[pipeline]
    ours, beam = [], []
    for name, value, token in _split(argv):
        key = name.replace("-", "_")
        if key == "pipeline":
            continue
        if key not in params:
            beam.append(token if value is None or "=" in token else f"--{name}={value}")
            continue
        if value is None:  # a bare switch: --face_crop
            value = "true"
        value = value.strip()
        if key == "face_crop":
            v = value.lower()
            if v in ("", "auto"):
                continue  # predict: as the model was trained; ingest: off
            if v in TRUE:
                ours.append("--face-crop")
            elif v in FALSE:
                if pipeline == "predict":
                    ours.append("--no-face-crop")
            else:
                raise TemplateError(f"face_crop must be true, false or auto, got {value!r}")
            continue
        if value == "":
            continue  # an optional parameter left empty: the pipeline default applies
        ours += [params[key], value]
    return ours + beam


def pipeline_from(argv: list[str]) -> str:
    for name, value, _ in _split(argv):
        if name == "pipeline" and value:
            return value
    return os.environ.get("EMOTION_PIPELINE", "")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pipeline = pipeline_from(argv)
    try:
        args = translate(pipeline, argv)
    except TemplateError as exc:
        print(f"flex_main: error: {exc}", file=sys.stderr)
        return 2
    from beam_pipelines.common import UsageError

    logging.getLogger("emotion").info("flex template: emotion %s %s", pipeline, " ".join(args))
    try:
        importlib.import_module(MODULES[pipeline]).run(args)
    except UsageError as exc:
        print(f"emotion {pipeline}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
