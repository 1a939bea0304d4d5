"""The Dataflow flex templates take exactly the options of the stages' parsers.

Each stage's `build_parser()` is the one source of its options. deploy/dataflow/flex_main.py
derives its parameter table from it, and the checked-in flex template specs
(deploy/dataflow/{ingest,predict}.metadata.json) are generated from it; these tests regenerate
the specs in memory and fail on any drift, naming the command that fixes it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json

import pytest

from beam_pipelines.ingest import launcher as ingest
from beam_pipelines.predict import launcher as predict
from conftest import REPO

DATAFLOW = REPO / "deploy" / "dataflow"
STAGES = {"ingest": ingest, "predict": predict}
FIX = "regenerate them with `make -f deploy/dataflow/Makefile specs` and commit the JSON"


def load_script(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flex_main = load_script(DATAFLOW / "flex_main.py")


def options(parser: argparse.ArgumentParser) -> dict[str, list[argparse.Action]]:
    """dest -> its argparse actions (a switch pair shares one dest), --help left out."""
    out = {}
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            out.setdefault(action.dest, []).append(action)
    return out


def is_switch(actions) -> bool:
    return all(a.nargs == 0 for a in actions)


def checked_in(stage) -> dict:
    return json.loads(flex_main.spec_path(stage).read_text())


@pytest.mark.parametrize("stage", STAGES)
def test_checked_in_spec_is_the_one_generated_from_the_parser(stage):
    want, have = flex_main.template_spec(stage), checked_in(stage)
    problems = [f"{key}: {have.get(key)!r} != {want[key]!r}" for key in ("name", "description")
                if have.get(key) != want[key]]
    want_params = {p["name"]: p for p in want["parameters"]}
    have_params = {p["name"]: p for p in have.get("parameters", [])}
    problems += [f"missing parameter {name}" for name in want_params.keys() - have_params.keys()]
    problems += [f"parameter {name} is no option of the parser" for name in have_params.keys() - want_params.keys()]
    for name in want_params.keys() & have_params.keys():
        w, h = want_params[name], have_params[name]
        problems += [f"{name}.{key}: {h.get(key)!r} != {w.get(key)!r}" for key in w.keys() | h.keys()
                     if w.get(key) != h.get(key)]
    if not problems and [p["name"] for p in want["parameters"]] != [p["name"] for p in have["parameters"]]:
        problems.append("parameters are not in the parser's order")
    assert not problems, f"{stage}.metadata.json has drifted from {stage}.build_parser(); {FIX}:\n  " + \
        "\n  ".join(sorted(problems))
    # Byte for byte too, so that regenerating never shows a diff.
    assert flex_main.spec_path(stage).read_text() == flex_main.spec_text(want), f"{stage}.metadata.json: {FIX}"


@pytest.mark.parametrize("stage", STAGES)
def test_every_option_is_a_template_parameter_and_vice_versa(stage):
    parser = STAGES[stage].build_parser()
    opts = options(parser)
    spec = {p["name"]: p for p in checked_in(stage)["parameters"]}
    table = flex_main.PARAMETERS[stage]
    assert set(opts) == set(spec) == set(table), FIX
    for dest, actions in opts.items():
        param, p = spec[dest], table[dest]
        assert param["isOptional"] == (not any(a.required for a in actions)), dest
        assert param["label"] and param["helpText"], dest
        # every flag of the option is reachable from the template parameter
        assert p.is_switch == is_switch(actions), dest
        flags = set(p.switches.values()) if p.is_switch else {p.flag}
        assert flags == {next(s for s in a.option_strings if s.startswith("--")) for a in actions}, dest
        if is_switch(actions):
            default = actions[0].default
            assert param["regexes"] == ["^(true|false|auto)$" if default is None else "^(true|false)$"], dest
        else:
            assert not any(r in ("^(true|false)$", "^(true|false|auto)$") for r in param.get("regexes", [])), dest
    assert set(flex_main.EXTRAS[stage]) <= set(opts), "EXTRAS names options the parser no longer has"


def sample(action: argparse.Action) -> tuple[str, object]:
    """A template value for a value option and what the parser makes of it."""
    if action.choices:
        choice = list(action.choices)[-1]
        return str(choice), choice
    if action.type is int:
        return "7", 7
    if action.type is float:
        return ".25", 0.25
    return "gs://b/x", "gs://b/x"


@pytest.mark.parametrize("stage", STAGES)
def test_every_parameter_reaches_the_pipeline_through_the_launcher(stage):
    parser = STAGES[stage].build_parser()
    required = ["--input=gs://b/in", "--output=gs://b/out"]
    for dest, actions in options(parser).items():
        if dest in ("input", "output"):
            continue
        if is_switch(actions):
            cases = [("true", True), ("false", False), ("", actions[0].default)]
            if actions[0].default is None:
                cases.append(("auto", None))
        else:
            cases = [sample(actions[0]), ("", actions[0].default)]
        for value, expected in cases:
            argv = flex_main.translate(stage, [*required, f"--{dest}={value}", "--runner=DataflowRunner"])
            args, beam_args = parser.parse_known_args(argv)
            assert getattr(args, dest) == expected, (dest, value, argv)
            assert beam_args == ["--runner=DataflowRunner"], (dest, value)
            assert (args.input, args.output) == ("gs://b/in", "gs://b/out")


def test_a_new_option_is_picked_up_and_its_absence_from_the_spec_is_drift():
    parser = predict.build_parser()
    parser.add_argument("--tile-root", metavar="ROOT", help="also write tiles under --tile-root")
    parser.add_argument("--dry", dest="dry", action="store_true")
    parser.add_argument("--wet", dest="dry", action="store_false")
    params = flex_main.parameters(parser)
    assert params["tile_root"].flag == "--tile-root"
    assert params["dry"].switches == {True: "--dry", False: "--wet"}
    spec = {p["name"]: p for p in flex_main.template_spec("predict", parser)["parameters"]}
    assert spec["tile_root"]["helpText"] == "Also write tiles under tile_root."
    assert spec["tile_root"]["isOptional"] and "regexes" not in spec["tile_root"]
    assert spec["dry"]["regexes"] == ["^(true|false)$"] and spec["dry"]["helpText"].endswith("Default: false.")
    assert {"tile_root", "dry"}.isdisjoint(p["name"] for p in checked_in("predict")["parameters"])


def test_an_option_that_is_no_single_parameter_is_refused_by_the_generator():
    parser = argparse.ArgumentParser(prog="emotion x")
    parser.add_argument("--inputs", nargs="+")
    with pytest.raises(TypeError, match="inputs"):
        flex_main.parameters(parser)


def test_write_specs_writes_the_checked_in_files(tmp_path):
    written = flex_main.write_specs(tmp_path)
    assert [p.name for p in written] == ["ingest.metadata.json", "predict.metadata.json"]
    for path in written:
        assert path.read_text() == (DATAFLOW / path.name).read_text(), f"{path.name}: {FIX}"


def test_the_templates_are_the_flex_template_commands_of_the_cli():
    """One registry: the launcher's stages are cli.COMMANDS marked flex_template, run from the same module."""
    from beam_pipelines import cli

    assert cli.FLEX_TEMPLATES == list(flex_main.PARAMETERS) == list(STAGES)
    assert all(cli.COMMANDS[stage].module == module.__name__ for stage, module in STAGES.items())


def test_a_users_mistake_in_a_launch_is_one_line_from_the_cli_error_path(tmp_path, capsys):
    """flex_main runs the stage through cli.run_command: a UsageError is `emotion STAGE: error: ...`, exit 2;
    a template value the pipeline cannot take is flex_main's own line, exit 2."""
    missing = tmp_path / "missing"
    code = flex_main.main(["--pipeline=ingest", f"--input={missing}", f"--output={tmp_path / 'out'}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines == [f"emotion ingest: error: no files under --input {missing}: it does not exist"]
    assert not (tmp_path / "out").exists()
    code = flex_main.main(["--pipeline=ingest", "--input=/x", "--output=/y", "--face_crop=maybe"])
    assert code == 2 and "flex_main: error: face_crop must be true or false" in capsys.readouterr().err
