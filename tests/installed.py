"""Environments that hold what a user installs: the built wheel, non-editable, in a fresh venv.

Building a venv per extra with pip from an index would download TensorFlow and Beam again for every
test run. The dependencies are already installed, at the versions pip resolved, in the interpreter
running the tests; so a fresh venv gets the wheel itself from pip (`--no-deps`) and, for its
dependencies, links to exactly the distributions that the wheel's metadata asks for with the chosen
extras (the closure over their own requirements and markers), nothing else. A package missing from an
extra therefore fails to import here, as it would for the user; the checkout is never on sys.path.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections import defaultdict
from email.parser import Parser
from importlib import metadata

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = pathlib.Path(__file__).resolve().parents[1]
SITE = pathlib.Path(sysconfig.get_paths()["purelib"])


def clean_tree(target: pathlib.Path) -> pathlib.Path:
    """The checkout's files as a clean clone has them (tracked, plus new files git does not ignore),
    copied to target: a build in the checkout itself would package what an earlier build left in
    build/ (a module since removed, say)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the working tree is not there
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def build_wheel(dist_dir: pathlib.Path, env: dict | None = None, verbose: bool = False) -> subprocess.CompletedProcess:
    """The wheel as `pip wheel .` builds it from a clean tree (isolated build, the pyproject's own build
    requirements), into dist_dir; the build's output."""
    source = clean_tree(dist_dir / "source")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-v" if verbose else "-q", "-w", str(dist_dir),
         str(source)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def wheel_file(dist_dir: pathlib.Path) -> pathlib.Path:
    (wheel,) = dist_dir.glob("emotion_pipeline-*.whl")
    return wheel


def wheel_requirements(wheel: pathlib.Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(archive.read(name).decode())
    return meta.get_all("Requires-Dist") or []


def _wanted(requirement: Requirement, extras: set[str]) -> bool:
    if requirement.marker is None:
        return True
    for extra in extras | {""}:
        try:
            if requirement.marker.evaluate({"extra": extra}):
                return True
        except UndefinedEnvironmentName:
            continue
    return False


def dependency_closure(requires: list[str], extras: set[str]) -> list[metadata.Distribution]:
    """The installed distributions that `pip install wheel[extras]` would bring, found by walking the
    requirements (ours first; `emotion-pipeline[...]` inside our own extras expands them)."""
    ours = canonicalize_name("emotion-pipeline")
    extras = set(extras)
    own = [Requirement(r) for r in requires]
    changed = True
    while changed:  # our extras that name other extras of ours (all = pipelines + training)
        changed = False
        for requirement in own:
            if canonicalize_name(requirement.name) == ours and _wanted(requirement, extras):
                if not requirement.extras <= extras:
                    extras |= requirement.extras
                    changed = True
    todo = [(r, set(r.extras)) for r in own if canonicalize_name(r.name) != ours and _wanted(r, extras)]
    found: dict[str, metadata.Distribution] = {}
    asked: dict[str, set[str]] = defaultdict(set)
    while todo:
        requirement, its_extras = todo.pop()
        key = canonicalize_name(requirement.name)
        if key in found and its_extras <= asked[key]:
            continue
        dist = metadata.distribution(requirement.name)
        found[key] = dist
        asked[key] |= its_extras
        for text in dist.requires or []:
            nested = Requirement(text)
            if _wanted(nested, asked[key]):
                todo.append((nested, set(nested.extras)))
    return list(found.values())


def _owned_paths(dist: metadata.Distribution) -> list[tuple[str, ...]]:
    """The site-packages paths a distribution's RECORD lists (scripts outside it left out)."""
    return [tuple(pathlib.PurePosixPath(str(f)).parts) for f in dist.files or [] if not str(f).startswith("..")]


def link_distributions(dists: list[metadata.Distribution], target: pathlib.Path) -> None:
    """Links the chosen distributions' files into target: a folder that only chosen distributions use
    is linked whole; one shared with a distribution left out (google/, say) is made and filled entry by
    entry, so that nothing left out becomes importable through it."""
    owners: dict[tuple[str, ...], set[str]] = defaultdict(set)  # path prefix -> distributions with files there
    for dist in metadata.distributions(path=[str(SITE)]):
        name = canonicalize_name(dist.metadata["Name"])  # parsed once: METADATA is re-read on every access
        for parts in _owned_paths(dist):
            for depth in range(1, len(parts) + 1):
                owners[parts[:depth]].add(name)
    chosen = {canonicalize_name(d.metadata["Name"]) for d in dists}
    linked: set[tuple[str, ...]] = set()
    for dist in dists:
        for parts in _owned_paths(dist):
            for depth in range(1, len(parts) + 1):
                prefix = parts[:depth]
                if prefix in linked:
                    break
                if owners[prefix] <= chosen or depth == len(parts):
                    source, destination = SITE.joinpath(*prefix), target.joinpath(*prefix)
                    if source.exists() and not destination.exists():
                        destination.parent.mkdir(parents=True, exist_ok=True)
                        destination.symlink_to(source)
                    linked.add(prefix)
                    break


def installed_env(root: pathlib.Path, wheel: pathlib.Path, extras: set[str]) -> pathlib.Path:
    """A fresh venv at root with the wheel installed non-editable and its dependencies for extras;
    returns its bin/ folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = pathlib.Path(subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    link_distributions(dependency_closure(wheel_requirements(wheel), extras), site)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
         "--no-compile", str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "bin"


def clean_environ(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, nothing of the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(extra)
    return env
