"""ARCHITECTURE.md's import rules, checked on the source: every import statement of every module,
function-level ones included (a lazy import is still a dependency of that module)."""

from __future__ import annotations

import ast

import pytest
from conftest import REPO

PACKAGES = ("schemas", "model", "beam_pipelines")
ML = {"tensorflow", "keras", "tensorboard", "mtcnn"}


def imports_of(path) -> set[str]:
    """Top-level names of everything `path` imports (`from x.y import z` -> x and x.y)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return names


def modules(package: str):
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("schemas"), ids=lambda p: p.name)
def test_schemas_import_nothing_of_ours_but_schemas(path):
    found = imports_of(path)
    assert not found & {"model", "beam_pipelines", "apache_beam", *ML}, sorted(found)


@pytest.mark.parametrize("path", modules("model"), ids=lambda p: p.name)
def test_model_never_imports_beam(path):
    found = imports_of(path)
    assert "apache_beam" not in found
    # The arrow runs one way: the pipelines import the model, never the reverse.
    assert not {n for n in found if n.split(".")[0] == "beam_pipelines"}, sorted(found)


@pytest.mark.parametrize("path", sorted((REPO / "model" / "gate").glob("*.py")), ids=lambda p: p.name)
def test_the_gate_imports_neither_beam_nor_tensorflow_on_import(path):
    """model/gate/ is shared by both sides: at module level it imports only the standard library,
    model.errors and itself; Beam's FileSystems and tf.io.gfile are reached lazily, by the store its
    owner passes (beam_pipelines.storage in the pipelines, TensorFlowStore in model/)."""
    import ast

    tree = ast.parse(path.read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module)
    allowed = {"__future__", "contextlib", "datetime", "errno", "json", "logging", "os", "re", "shutil",
               "socket", "tempfile", "uuid", "model.errors"}
    assert {n for n in top if not n.startswith("model.gate")} <= allowed, sorted(top)


def test_the_input_contract_imports_no_framework():
    found = imports_of(REPO / "model" / "preprocess.py")
    # mtcnn (it runs on TensorFlow) is imported only when --face-detector mtcnn asks for it.
    assert not found & {"apache_beam", "beam_pipelines", *(ML - {"mtcnn"})}, sorted(found)


# Beam modules that run on ingest workers or in the launcher: never TensorFlow, not even lazily.
# (cli.py imports it for the commands that use it, to silence its start-up lines.)
TENSORFLOW_FREE = ["common", "storage", "listing", "reading", "progress", "outputs", "ingest", "table", "compare", "report"]


@pytest.mark.parametrize("name", TENSORFLOW_FREE)
def test_pipeline_modules_outside_predict_import_no_tensorflow(name):
    found = imports_of(REPO / "beam_pipelines" / f"{name}.py")
    assert not found & ML, sorted(found & ML)
    allowed = ("model.preprocess", "model.metrics", "model.files", "model.errors", "model.gate")  # none imports TensorFlow
    assert not {n for n in found if n.startswith("model.") and not n.startswith(allowed)}


def test_the_architecture_page_names_every_module():
    page = (REPO / "ARCHITECTURE.md").read_text()
    for path in modules("beam_pipelines"):
        if path.stem != "__init__":
            assert f"`{path.name}`" in page, path.name
