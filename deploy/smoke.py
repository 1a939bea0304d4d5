"""The deploy images' smoke step: each Dockerfile runs it right after installing the package, and
tests/test_wheel.py runs it against the built wheel in a fresh environment with the image's extras,
so what an image checks at build time is what CI runs.

    python deploy/smoke.py dataflow   # worker / Flex launcher image (extras `all`): Beam, TensorFlow,
                                      # LiteRT, OpenCV; `emotion predict` on the packaged sample
    python deploy/smoke.py training   # training image (extras `training`): TensorFlow, no Beam;
                                      # `emotion train --help`; `emotion ingest` names its missing extra

It must run from anywhere with nothing but the installed package: the code and the packaged models
come from site-packages, never from a source tree (the check fails if they do not).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import tempfile

SITE = os.path.realpath(sysconfig.get_paths()["purelib"])


def _emotion(*args: str) -> subprocess.CompletedProcess:
    """The installed `emotion` entry point (next to this interpreter, as pip installs scripts)."""
    script = os.path.join(os.path.dirname(sys.executable), "emotion")
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=600)


def _installed(*modules: str) -> dict[str, str]:
    """Imports each module and checks it comes from site-packages; returns module -> version or path."""
    found = {}
    for name in modules:
        module = importlib.import_module(name)
        path = os.path.realpath(getattr(module, "__file__", "") or "")
        if name.split(".")[0] in ("beam_pipelines", "model", "schemas") and not path.startswith(SITE):
            raise SystemExit(f"smoke: {name} is imported from {path}, not from the installed package ({SITE})")
        found[name] = getattr(module, "__version__", path)
    return found


def dataflow() -> None:
    versions = _installed("apache_beam", "tensorflow", "cv2", "ai_edge_litert", "beam_pipelines.ingest.launcher",
                          "beam_pipelines.predict.launcher", "beam_pipelines.cli")
    from model import PACKAGED_MODELS

    sample = os.path.join(os.path.dirname(importlib.import_module("beam_pipelines").__file__), "sample")
    with tempfile.TemporaryDirectory() as work:
        for name, model_dir in PACKAGED_MODELS.items():
            if not os.path.realpath(model_dir).startswith(SITE):
                raise SystemExit(f"smoke: the packaged model {name!r} is at {model_dir}, outside site-packages")
            out = os.path.join(work, name)
            proc = _emotion("predict", "--input", sample, "--output", out, "--model", name, "--quiet")
            if proc.returncode != 0:
                raise SystemExit(f"smoke: emotion predict --model {name} failed ({proc.returncode}):\n"
                                 f"{proc.stderr[-2000:]}")
            with open(os.path.join(out, "summary.json")) as f:
                totals = json.load(f)["totals"]
            if not totals["predicted"] or totals["matched"] != totals["predicted"] + totals["rejected"] + \
                    totals["skipped_non_data"]:
                raise SystemExit(f"smoke: emotion predict --model {name} on the sample: {totals}")
            print(f"smoke: predict --model {name}: {totals['predicted']} predicted, {totals['rejected']} rejected")
    print("smoke: dataflow image ok:", ", ".join(f"{k} {v}" for k, v in versions.items() if "/" not in str(v)))


def training() -> None:
    versions = _installed("tensorflow", "model.train", "model.evaluate", "model.export")
    if importlib.util.find_spec("apache_beam") is not None:
        raise SystemExit("smoke: the training image installs no Beam, yet apache_beam is importable")
    proc = _emotion("train", "--help")
    if proc.returncode != 0 or "--model-dir" not in proc.stdout:
        raise SystemExit(f"smoke: emotion train --help failed ({proc.returncode}): {proc.stderr[-2000:]}")
    # A command of another image: one line naming the extra to install, exit 2.
    proc = _emotion("ingest", "--input", "in", "--output", "out")
    lines = proc.stderr.strip().splitlines()
    if proc.returncode != 2 or len(lines) != 1 or "emotion-pipeline[pipelines]" not in lines[0]:
        raise SystemExit(f"smoke: emotion ingest without Beam: exit {proc.returncode}, {proc.stderr[-2000:]}")
    print(f"smoke: training image ok: tensorflow {versions['tensorflow']}, no Beam")


if __name__ == "__main__":
    targets = {"dataflow": dataflow, "training": training}
    if len(sys.argv) != 2 or sys.argv[1] not in targets:
        sys.exit(f"usage: python smoke.py {{{','.join(targets)}}}")
    targets[sys.argv[1]]()
