"""The README and docs/ as a newcomer meets them: every relative link leads somewhere, and the
"Predict your own folder" commands and snippets run as written on a labelled and an unlabelled folder.

The README marks the blocks it promises will run with an HTML comment (`<!-- test: NAME -->`) on the line
before the fence; this file runs exactly those blocks, so editing them without keeping them working fails
here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import REPO, SAMPLE

from schemas import LABELS

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
MARKED_BLOCK = re.compile(r"<!-- test: ([\w-]+) -->\s*\n```(\w*)\n(.*?)\n```", re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", re.M)


def prose(text: str) -> str:
    """The text outside fenced code blocks (a `[x](y)` inside code is code, not a link)."""
    return FENCE.sub("", text)


def anchors(text: str) -> set[str]:
    """The heading anchors GitHub makes: lower case, punctuation dropped, spaces to hyphens, repeats -1, -2."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(prose(text)):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def marked_blocks() -> dict[str, tuple[str, str]]:
    return {name: (lang, code) for name, lang, code in MARKED_BLOCK.findall(README.read_text())}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files_and_headings(page):
    text = page.read_text()
    broken = []
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_link_check_sees_the_readmes_links():
    targets = LINK.findall(prose(README.read_text()))
    assert "docs/safety.md" in targets and "docs/benchmarks.md" in targets, targets
    assert "predict-your-own-folder" in anchors(README.read_text())


def test_the_readme_marks_the_own_folder_blocks():
    blocks = marked_blocks()
    assert blocks["own-folder"][0] == "bash"
    assert "--input MY_FOLDER --output preds" in blocks["own-folder"][1]
    assert blocks["own-folder-duckdb"][0] == blocks["own-folder-pandas"][0] == "python"
    assert "duckdb.sql(" in blocks["own-folder-duckdb"][1]
    assert "'preds/predictions/*.parquet'" in blocks["own-folder-duckdb"][1]
    # The first screen: predictions of your own folder and a query on them within the first 60 lines.
    head = "\n".join(README.read_text().splitlines()[:60])
    assert "<!-- test: own-folder -->" in head and "<!-- test: own-folder-duckdb -->" in head


def run_readme_commands(block: str, folder, cwd) -> None:
    """Each `emotion ...` line of the block, as a user types it, with MY_FOLDER replaced by `folder`."""
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("emotion ")]
    assert commands, block
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for words in commands:
        args = [str(folder) if word == "MY_FOLDER" else word for word in words[1:]]
        proc = subprocess.run([sys.executable, "-m", "beam_pipelines.cli", *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{' '.join(words)}\n{proc.stderr[-3000:]}"


def run_snippet(code: str, cwd, monkeypatch) -> tuple[dict, str]:
    monkeypatch.chdir(cwd)
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), namespace)
    return namespace, printed.getvalue()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A small labelled copy of the sample (3 faces per class, in class folders) and a flat unlabelled one."""
    root = tmp_path_factory.mktemp("own_folders")
    labelled, unlabelled = root / "labelled-faces", root / "unlabelled-faces"
    unlabelled.mkdir()
    for label in LABELS:
        faces = sorted(p for p in (SAMPLE / label).iterdir() if re.fullmatch(r"(Private|Public)Test_\d+\.\w+", p.name))
        (labelled / label).mkdir(parents=True)
        for face in faces[:3]:
            shutil.copy(face, labelled / label / face.name)
        shutil.copy(faces[3], unlabelled / faces[3].name)  # flat: no folder names a class
    return labelled, unlabelled


@pytest.mark.parametrize("kind", ["labelled", "unlabelled"])
def test_predict_your_own_folder_runs_as_the_readme_says(kind, folders, tmp_path, monkeypatch):
    folder = folders[0] if kind == "labelled" else folders[1]
    images = sum(1 for p in folder.rglob("*") if p.is_file())
    blocks = marked_blocks()
    run_readme_commands(blocks["own-folder"][1], folder, cwd=tmp_path)

    preds = tmp_path / "preds"
    summary = json.loads((preds / "summary.json").read_text())
    assert summary["totals"]["predicted"] == images
    table = pq.read_table(sorted((preds / "predictions").glob("*.parquet")))
    assert table.num_rows == images
    # What the README says comes out.
    assert list((preds / "rejected").glob("*.parquet"))
    assert (preds / "evaluation" / "overview.json").is_file()
    assert (preds / "report.html").is_file()
    true_labels = set(table.column("true_label").to_pylist())
    if kind == "labelled":
        assert true_labels == set(LABELS)
        assert (preds / "evaluation" / "metrics.json").is_file() and 0 <= summary["accuracy"] <= 1
    else:
        assert true_labels == {None} and set(table.column("correct").to_pylist()) == {None}
        assert not (preds / "evaluation" / "metrics.json").exists()

    _, shown = run_snippet(blocks["own-folder-duckdb"][1], tmp_path, monkeypatch)
    predicted = set(table.column("predicted_label").to_pylist())
    assert predicted and all(label in shown for label in predicted), shown
    assert "precision" in shown and "mean_confidence" in shown

    namespace, printed = run_snippet(blocks["own-folder-pandas"][1], tmp_path, monkeypatch)
    assert len(namespace["preds"]) == images
    least_sure = min(table.column("confidence").to_pylist())
    assert f"{least_sure:.6f}" in printed, printed  # sorted least sure first, as pandas prints it
