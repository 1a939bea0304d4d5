"""What users install is what these tests run: the wheel built from this checkout, installed
non-editable in fresh environments (one per install extra, tests/installed.py), run from a folder
outside the checkout with nothing of it on sys.path. The deploy images' smoke step
(deploy/smoke.py, which each Dockerfile runs after its install) runs here against the same wheel.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import zipfile

import pyarrow.parquet as pq
import pytest

import installed
from conftest import REPO

PACKAGES = ("schemas", "beam_pipelines", "model")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    dist = tmp_path_factory.mktemp("dist")
    installed.build_wheel(dist)
    return installed.wheel_file(dist)


@pytest.fixture(scope="module")
def envs(tmp_path_factory, wheel):
    """extras name -> the bin/ folder of a fresh venv holding the wheel with those extras (made once)."""
    made: dict[str, pathlib.Path] = {}

    def env(extras: str) -> pathlib.Path:
        if extras not in made:
            root = tmp_path_factory.mktemp(f"venv-{extras or 'core'}")
            made[extras] = installed.installed_env(root, wheel, {e for e in extras.split(",") if e})
        return made[extras]

    return env


@pytest.fixture()
def elsewhere(tmp_path) -> pathlib.Path:
    """A working folder that is not the checkout (a user's own)."""
    folder = tmp_path / "user"
    folder.mkdir()
    return folder


def _run(bin_dir: pathlib.Path, args: list[str], cwd: pathlib.Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=installed.clean_environ(),
                          capture_output=True, text=True, timeout=timeout)


def _tracked(prefix: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", prefix], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line]


def test_the_wheel_holds_every_package_and_the_packaged_files(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    packages = {str(p.parent.relative_to(REPO)) for top in PACKAGES for p in (REPO / top).rglob("__init__.py")}
    assert {str(pathlib.PurePosixPath(p) / "__init__.py") for p in packages} <= names
    modules = {line for top in PACKAGES for line in _tracked(top) if line.endswith(".py")}
    assert modules <= names, sorted(modules - names)[:10]
    # The models, the demo's sample (its .DS_Store is the "skipped" case), templates and recipes.
    data = [line for prefix in ("model/shipped", "model/fast", "model/templates", "model/recipes",
                                "beam_pipelines/sample", "beam_pipelines/report/templates") for line in _tracked(prefix)
            if not line.endswith("/.gitignore")]  # the checkout's, not the package's
    assert data and set(data) <= names, sorted(set(data) - names)[:10]
    assert any(name.endswith("/.DS_Store") for name in data)
    assert not any(name.startswith(("tests/", "bench/", "deploy/")) for name in names)


def test_the_build_gives_no_warning(tmp_path):
    # PYTHONDONTWRITEBYTECODE (set on some machines) makes setuptools say it skips byte-compiling.
    env = {k: v for k, v in installed.clean_environ().items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = installed.build_wheel(tmp_path, env=env, verbose=True)
    # The build backend's lines are the indented ones (pip's own notices about its index start at column 0).
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line[:1].isspace() and "warning" in line.lower()]
    assert not warnings, warnings[:10]


def test_every_module_imports_from_site_packages(envs, elsewhere):
    bin_dir = envs("all")
    script = (
        "import importlib, json, pkgutil, sys, sysconfig\n"
        f"found = {{}}\n"
        f"for top in {PACKAGES!r}:\n"
        "    package = importlib.import_module(top)\n"
        "    found[top] = package.__file__\n"
        "    for info in pkgutil.walk_packages(package.__path__, top + '.'):\n"
        "        found[info.name] = importlib.import_module(info.name).__file__\n"
        "print(json.dumps({'site': sysconfig.get_paths()['purelib'], 'path': sys.path, 'modules': found}))\n"
    )
    proc = _run(bin_dir, ["python", "-c", script], elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    site = report["site"]
    assert all(file.startswith(site) for file in report["modules"].values()), report["modules"]
    expected = {".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                for top in PACKAGES for path in (REPO / top).rglob("*.py")}
    assert set(report["modules"]) == expected
    assert not any(str(REPO) in entry for entry in report["path"])


def _predictions(folder: pathlib.Path) -> dict:
    """image (its path under the sample) -> (true label, predicted label, probabilities)."""
    rows = pq.read_table(folder / "predictions").to_pylist()
    return {r["uri"].split("/sample/faces/")[1]: (r["true_label"], r["predicted_label"],
                                                  [round(v, 6) for k, v in r.items() if k.startswith("prob_")])
            for r in rows}


def test_predict_from_the_wheel_matches_the_checkout(envs, elsewhere):
    """`emotion predict --model fast` from the installed wheel, run in the user's folder: the packaged
    model and sample come from site-packages, and the predictions equal the checkout's own."""
    bin_dir = envs("all")
    where = _run(bin_dir, ["python", "-c", "import beam_pipelines, model; print(beam_pipelines.__file__); "
                           "print(model.PACKAGED_MODELS['fast'])"], elsewhere)
    package_file, model_dir = where.stdout.split()
    sample = pathlib.Path(package_file).parent / "sample" / "faces"
    assert not sample.is_relative_to(REPO) and not pathlib.Path(model_dir).is_relative_to(REPO)
    proc = _run(bin_dir, ["emotion", "predict", "--input", str(sample), "--output", "preds", "--model", "fast"],
                elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((elsewhere / "preds" / "summary.json").read_text())
    packaged = json.loads((pathlib.Path(model_dir) / "metadata.json").read_text())
    assert summary["model_version"] == packaged["model_version"] and summary["labelled"] == 210
    mine = subprocess.run([sys.executable, "-m", "beam_pipelines.cli", "predict", "--input",
                           str(REPO / "beam_pipelines" / "sample" / "faces"), "--output", str(elsewhere / "mine"),
                           "--model", "fast"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert mine.returncode == 0, mine.stderr[-3000:]
    assert _predictions(elsewhere / "preds") == _predictions(elsewhere / "mine")


def test_the_dataflow_image_smoke_step(envs, elsewhere):
    """The worker image's check after its install: both packaged models predict the packaged sample."""
    proc = _run(envs("all"), ["python", str(REPO / "deploy" / "smoke.py"), "dataflow"], elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert "predict --model shipped: 211 predicted, 3 rejected" in proc.stdout
    assert "predict --model fast: 211 predicted, 3 rejected" in proc.stdout


def test_the_training_image_smoke_step(envs, elsewhere):
    """The training image's extras hold TensorFlow and no Beam; its smoke step says so."""
    proc = _run(envs("training"), ["python", str(REPO / "deploy" / "smoke.py"), "training"], elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert "training image ok" in proc.stdout


@pytest.mark.parametrize("dockerfile, target, extras", [("dataflow/Dockerfile", "dataflow", "all"),
                                                        ("training/Dockerfile", "training", "training,gpu")])
def test_each_image_runs_the_smoke_step_after_its_install(dockerfile, target, extras):
    text = (REPO / "deploy" / dockerfile).read_text().replace("\\\n", " ")
    assert f"ARG EXTRAS={extras}\n" in text  # what the tests above install (gpu only swaps TensorFlow's build)
    install = next(line for line in text.splitlines() if line.startswith("RUN pip install"))
    assert install.index("pip install") < install.index(f"smoke.py {target}")
    assert "COPY deploy/smoke.py" in text


def test_a_command_without_its_extra_names_the_extra(envs, elsewhere):
    from beam_pipelines.cli import COMMANDS

    bin_dir = envs("")
    assert _run(bin_dir, ["emotion", "--help"], elsewhere).returncode == 0
    for name, command in COMMANDS.items():
        proc = _run(bin_dir, ["emotion", name, "--help"], elsewhere)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (name, proc.stderr[-2000:])
        assert lines[0].startswith(f"emotion {name}: error: needs ") and f'"emotion-pipeline[{command.extra}]"' in lines[0]


def test_help_imports_no_tensorflow(envs, elsewhere):
    script = ("import sys\nfrom beam_pipelines import cli\ncode = cli.run_command('predict', ['--help'])\n"
              "print(code, 'tensorflow' in sys.modules)")
    proc = _run(envs("all"), ["python", "-c", script], elsewhere)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "0 False"
    assert "--model" in proc.stdout


def test_the_demo_runs_from_the_wheel(envs, elsewhere):
    proc = _run(envs("all"), ["emotion", "demo", "--epochs", "1", "--output", "demo"], elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert "215 files matched: 210 written" in proc.stdout and "1 skipped" in proc.stdout
    assert (elsewhere / "demo" / "report.html").stat().st_size > 10_000
    assert "Traceback" not in proc.stderr
