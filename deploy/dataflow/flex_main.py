"""Dataflow Flex Template entry point for `emotion ingest` and `emotion predict`.

Dataflow's template launcher runs

    python /template/flex_main.py --input=gs://... --image_size=48 ... \\
        --runner=DataflowRunner --project=... --region=... --temp_location=... \\
        --staging_location=... --template_location=... --sdk_container_image=... --job_name=...

with one `--name=value` per template parameter (names use underscores, every value is a string)
followed by the Dataflow options. This script maps the template parameters onto the pipeline's
own flags (--image_size=48 -> --image-size 48, --face_crop=true -> --face-crop) and hands
everything else to Beam unchanged.

The template parameters are not declared here: they are the options of each stage's
`build_parser()` (one parameter per argparse dest), read at import time, so the launcher
image must have the package installed (the worker image it is built from does). The flex
template specs, ingest.metadata.json and predict.metadata.json, are generated from the same
parsers and checked in; after changing a stage's options, regenerate them with

    make -f deploy/dataflow/Makefile specs      # = python deploy/dataflow/flex_main.py --write-specs

(tests/test_flex_specs.py fails until the checked-in specs match the parsers).

The pipeline comes from EMOTION_PIPELINE (set by Dockerfile.launcher), or --pipeline=ingest|predict:
the commands of beam_pipelines.cli.COMMANDS marked flex_template, run through the same
cli.run_command as `emotion` (one line and exit 2 for a user's mistake).
"""

# (No `from __future__ import annotations`: tests load this script without registering it in
# sys.modules, where dataclasses would look string annotations up.)
import argparse
import importlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from beam_pipelines.cli import COMMANDS, FLEX_TEMPLATES, run_command

TRUE = {"true", "1", "yes", "on"}
FALSE = {"false", "0", "no", "off"}
HERE = Path(__file__).resolve().parent
REGENERATE = "make -f deploy/dataflow/Makefile specs"

# What argparse cannot say about a parameter: Dataflow's Cloud Storage pickers and path checks
# (workers cannot see the launcher's disk), and a label where the one made from the name reads
# badly. Keys must be options of the stage's parser.
GCS = ["^gs:\\/\\/[^\\n\\r]+$"]
EXTRAS = {
    "ingest": {
        "input": {"paramType": "GCS_READ_FOLDER", "regexes": GCS},
        "output": {"paramType": "GCS_WRITE_FOLDER", "regexes": GCS},
    },
    "predict": {
        "input": {"regexes": GCS},  # a folder or a TFRecord glob: no picker
        "output": {"paramType": "GCS_WRITE_FOLDER", "regexes": GCS},
        "model": {"paramType": "GCS_READ_FOLDER", "regexes": GCS},
        "tta": {"label": "Test-time augmentation"},
    },
}


class TemplateError(ValueError):
    """A template parameter value the pipeline cannot take."""


# --------------------------------------------------------------------------- parameters from the parsers


@dataclass(frozen=True)
class Parameter:
    """One template parameter: one argparse dest of the stage.

    A value option (--image-size N) has `flag`; a switch (store_true / store_false, or a
    mutually exclusive pair such as --face-crop / --no-face-crop sharing one dest) has
    `switches`, the flag that sets True and the one that sets False. A switch takes true or
    false; empty or auto leaves the pipeline's default.
    """

    name: str
    help: str
    required: bool = False
    default: object = None
    flag: str | None = None
    switches: dict[bool, str] = field(default_factory=dict)
    value_type: type | None = None
    choices: tuple[str, ...] = ()

    @property
    def is_switch(self) -> bool:
        return self.flag is None

    def regexes(self) -> list[str]:
        if self.is_switch:
            return ["^(true|false|auto)$" if self.default is None else "^(true|false)$"]
        if self.choices:
            return ["^(" + "|".join(re.escape(str(c)) for c in self.choices) + ")$"]
        if self.value_type is int:
            return ["^[0-9]+$"]
        if self.value_type is float:
            return ["^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)$"]
        return []

    def to_flags(self, value: str | None) -> list[str]:
        """A template value -> the pipeline's flags (none when the pipeline default applies)."""
        if not self.is_switch:
            if value is None:
                raise TemplateError(f"{self.name} needs a value: --{self.name}=...")
            value = value.strip()
            return [self.flag, value] if value else []  # optional and left empty: the default
        v = "true" if value is None else value.strip().lower()  # a bare --face_crop means true
        if v in ("", "auto"):
            return []
        if v not in TRUE | FALSE:
            choices = "true, false or auto" if self.default is None else "true or false"
            raise TemplateError(f"{self.name} must be {choices}, got {value!r}")
        wanted = v in TRUE
        if wanted == self.default:
            return []
        if wanted not in self.switches:
            raise TemplateError(f"{self.name} cannot be {v}: the pipeline has no flag for it")
        return [self.switches[wanted]]


def parameters(parser: argparse.ArgumentParser) -> dict[str, Parameter]:
    """The parser's options as template parameters, in the parser's order (--help left out)."""
    groups: dict[str, list[argparse.Action]] = {}
    for action in parser._actions:  # argparse has no public list of its actions
        if not isinstance(action, argparse._HelpAction):
            groups.setdefault(action.dest, []).append(action)
    flags = {s: dest for dest, actions in groups.items() for a in actions for s in a.option_strings}
    return {dest: _parameter(dest, actions, parser, flags) for dest, actions in groups.items()}


def _parameter(dest, actions, parser, flags) -> Parameter:
    first = actions[0]  # argparse takes a shared dest's default from its first action
    common = dict(name=dest, help=_help(actions, parser, flags), required=any(a.required for a in actions),
                  default=first.default)
    if all(a.nargs == 0 and isinstance(a.const, bool) for a in actions):
        return Parameter(**common, switches={a.const: _long(a) for a in actions})
    if len(actions) > 1 or first.nargs not in (None, "?") or not first.option_strings:
        raise TypeError(f"{parser.prog}: cannot map {dest} ({[a.option_strings for a in actions]}) onto one "
                        "template parameter; give it one value flag or true/false switches")
    return Parameter(**common, flag=_long(first), value_type=first.type, choices=tuple(first.choices or ()))


def _long(action: argparse.Action) -> str:
    return next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])


def _help(actions, parser, flags) -> str:
    """The argparse help as one sentence or more, with flags spelled as template parameters."""
    text = next((a.help % {**vars(a), "prog": parser.prog} for a in actions if a.help), "")
    text = re.sub(r"--[a-z][a-z0-9-]*", lambda m: flags.get(m.group(), m.group()), text).strip()
    text = text or actions[0].dest.replace("_", " ")
    text = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
    return text


def template_spec(stage: str, parser: argparse.ArgumentParser | None = None) -> dict:
    """The flex template metadata (the *.metadata.json) of a stage, from its parser."""
    parser = parser or stage_parser(stage)
    params = parameters(parser)
    extras = EXTRAS.get(stage, {})
    if set(extras) - set(params):
        raise KeyError(f"EXTRAS[{stage!r}] names {sorted(set(extras) - set(params))}: not options of {parser.prog}")
    out = []
    for p in params.values():
        extra = extras.get(p.name, {})
        spec = {
            "name": p.name,
            "label": extra.get("label", p.name.replace("_", " ").capitalize()),
            "helpText": p.help + _kind_and_default(p),
            "paramType": extra.get("paramType", "TEXT"),
            "isOptional": not p.required,
        }
        regexes = extra.get("regexes", p.regexes())
        out.append({**spec, "regexes": regexes} if regexes else spec)
    return {"name": f"emotion-{stage}", "description": parser.description or "", "parameters": out}


def _kind_and_default(p: Parameter) -> str:
    if p.is_switch:
        kind = " Set to true, false or auto (auto: the pipeline's default)." if p.default is None else \
            " Set to true or false."
    else:
        kind = " One of: " + ", ".join(map(str, p.choices)) + "." if p.choices else ""
    shown = str(p.default).lower() if isinstance(p.default, bool) else p.default
    has_default = not p.required and p.default is not None and "default" not in p.help.lower()
    return kind + (f" Default: {shown}." if has_default else "")


def spec_path(stage: str, folder: Path = HERE) -> Path:
    return folder / f"{stage}.metadata.json"


def spec_text(spec: dict) -> str:
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def write_specs(folder: Path = HERE) -> list[Path]:
    paths = []
    for stage in FLEX_TEMPLATES:
        path = spec_path(stage, folder)
        path.write_text(spec_text(template_spec(stage)))
        paths.append(path)
    return paths


def stage_parser(stage: str) -> argparse.ArgumentParser:
    return importlib.import_module(COMMANDS[stage].module).build_parser()


PARAMETERS = {stage: parameters(stage_parser(stage)) for stage in FLEX_TEMPLATES}


# --------------------------------------------------------------------------- the launcher


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
        if key in params:
            ours += params[key].to_flags(value)
        else:
            beam.append(token if value is None or "=" in token else f"--{name}={value}")
    return ours + beam


def pipeline_from(argv: list[str]) -> str:
    for name, value, _ in _split(argv):
        if name == "pipeline" and value:
            return value
    return os.environ.get("EMOTION_PIPELINE", "")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--write-specs"]:
        for path in write_specs():
            print(f"wrote {path}")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pipeline = pipeline_from(argv)
    try:
        args = translate(pipeline, argv)
    except TemplateError as exc:
        print(f"flex_main: error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("emotion").info("flex template: emotion %s %s", pipeline, " ".join(args))
    return run_command(pipeline, args, quiet_logs=False)


if __name__ == "__main__":
    sys.exit(main())
