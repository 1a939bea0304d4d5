"""ARCHITECTURE.md's import rules, checked on the source: every import statement of every module,
function-level ones included (a lazy import is still a dependency of that module)."""

from __future__ import annotations

import ast
import re

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
    owner passes (beam_pipelines.base.storage in the pipelines, TensorFlowStore in model/)."""
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
TENSORFLOW_FREE = ["base/files", "base/counts", "base/runner", "base/portable", "base/storage", "base/listing",
                   "base/reading", "base/progress", "base/manifest", "base/outputs", "base/killed_runs",
                   "ingest/launcher", "ingest/options", "ingest/shuffle", "ingest/shards", "ingest/stats",
                   "table/claim", "table/partitions", "compare", "report/launcher", "report/inputs", "report/filters",
                   "report/sections", "predict/options"]


@pytest.mark.parametrize("name", TENSORFLOW_FREE)
def test_pipeline_modules_outside_predict_import_no_tensorflow(name):
    found = imports_of(REPO / "beam_pipelines" / f"{name}.py")
    assert not found & ML, sorted(found & ML)
    # none of these imports TensorFlow (model.engines only lazily, inside the engine that needs it)
    allowed = ("model.preprocess", "model.metrics", "model.files", "model.errors", "model.gate", "model.engines")
    assert not {n for n in found if n.startswith("model.") and not n.startswith(allowed)}


# =========================================================================== every module's rule, from the page

FRAMEWORKS = {"apache_beam", "grpc", "tensorflow", "keras", "jax", "ai_edge_litert", "mtcnn", "cv2", "pyarrow", "jinja2",
              "matplotlib", "google", "duckdb", "numpy"}
HEADER = "| module | what | may import (ours) | frameworks |"


def first_party(module: str) -> str | None:
    """The module or package of ours that `module` (an import, or an import + a name) lands in:
    `schemas` for anything in schemas/, `model.gate` for the gate package, else the longest prefix
    that is a file or package on disk (`model` for a name of model/__init__.py)."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if parts[0] == "schemas":
        return "schemas"
    for i in range(len(parts), 0, -1):
        path = REPO.joinpath(*parts[:i])
        if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
            name = ".".join(parts[:i])
            return "model.gate" if name.startswith("model.gate") else name
    return parts[0]


def module_imports(path, own: str | None = None) -> tuple[set[str], set[str]]:
    """(ours, frameworks): every import statement of the module, function-level ones included."""
    ours, frameworks = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if first_party(name):
                ours.add(first_party(name))
            if name.split(".")[0] in FRAMEWORKS:
                frameworks.add(name.split(".")[0])
    ours.discard(own or str(path.relative_to(REPO))[:-3].replace("/", ".").removesuffix(".__init__"))
    return ours, frameworks


def page_rules() -> dict[str, tuple[set[str], set[str]]]:
    """ARCHITECTURE.md's module tables: module path -> (ours, frameworks) it may import."""
    rules, in_table = {}, False
    for line in (REPO / "ARCHITECTURE.md").read_text().splitlines():
        if line.strip() == HEADER:
            in_table = True
            continue
        if not in_table or not line.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0].startswith("---"):
            continue
        names = [set(re.findall(r"`([^`]+)`", cell)) for cell in (cells[0], cells[-2], cells[-1])]
        (module,) = names[0]
        rules[module] = (names[1], names[2])
    return rules


ALL_MODULES = [p for package in PACKAGES for p in modules(package)]


def test_the_architecture_page_has_a_rule_for_every_module_and_no_other():
    rules = page_rules()
    on_disk = {str(p.relative_to(REPO)) for p in ALL_MODULES}
    assert sorted(on_disk - set(rules)) == [], "modules without a row in ARCHITECTURE.md"
    assert sorted(set(rules) - on_disk) == [], "rows in ARCHITECTURE.md for modules that do not exist"


@pytest.mark.parametrize("path", ALL_MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_imports_only_what_the_page_allows_it(path):
    rule = page_rules().get(str(path.relative_to(REPO)))
    assert rule is not None, f"{path.relative_to(REPO)} has no row in ARCHITECTURE.md"
    ours, frameworks = module_imports(path)
    assert ours <= rule[0], f"imports of ours the page does not allow: {sorted(ours - rule[0])}"
    assert frameworks <= rule[1], f"frameworks the page does not allow: {sorted(frameworks - rule[1])}"


def test_the_page_itself_keeps_the_one_way_arrows():
    """The page may grow, but not against the layering: schemas/ imports nothing of ours but itself,
    model/ never Beam nor the pipelines, the ingest side never TensorFlow."""
    for module, (ours, frameworks) in page_rules().items():
        if module.startswith("schemas/"):
            assert ours <= {"schemas"} and frameworks <= {"pyarrow"}, module
        if module.startswith("model/"):
            assert not {o for o in ours if o.startswith("beam_pipelines")} and "apache_beam" not in frameworks, module
        if module.startswith("beam_pipelines/ingest") or module.startswith("beam_pipelines/report"):
            assert not frameworks & ML, module


def test_the_rule_checker_catches_a_forbidden_import(tmp_path):
    """The checker is not vacuous: listing.py with a lazy TensorFlow import and one of predict is caught."""
    rule = page_rules()["beam_pipelines/base/listing.py"]
    fake = tmp_path / "listing.py"
    fake.write_text((REPO / "beam_pipelines" / "base" / "listing.py").read_text()
                    + "\n\ndef later():\n    import tensorflow\n    from beam_pipelines import predict\n")
    ours, frameworks = module_imports(fake, own="beam_pipelines.base.listing")
    assert "tensorflow" in frameworks - rule[1] and "beam_pipelines.predict" in ours - rule[0]


# =========================================================================== the layout: no circles, sizes one reads

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports (any import statement, function-level ones included)."""
    names = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in ALL_MODULES}
    graph = {}
    for name, path in names.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            found.update(c for c in candidates if c in names and c != name)
        graph[name] = found
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_circles_among_our_modules():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_a_circle():
    """Not vacuous: a three-module circle beside a clean chain is found, and only it."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("path", ALL_MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_reads_in_a_sitting(path):
    """No module over MAX_MODULE_LINES lines, no function over MAX_FUNCTION_LINES (tests and bench aside)."""
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{len(source.splitlines())} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long
