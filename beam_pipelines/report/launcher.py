"""Report: one static, self-contained HTML page for ingest, train and predict outputs.

    emotion report --output /tmp/fer2013-ingest          # one stage's output folder
    emotion report --output ./emotion-demo               # a folder holding several (ingest/, train/, predict-*/)

Writes DIR/report.html. What is there is discovered: an ingest output (stats.json), a
training run (metadata.json, history.csv), a predict output (summary.json,
evaluation/metrics.json) or a compare output (compare/comparison.json), in DIR itself or in
its immediate subfolders; parts that are
missing are left out. The page has its images embedded as base64 data URIs, inline CSS,
no scripts and no external references, so it can be mailed or archived as one file.
Files are read through Beam's FileSystems, so gs:// folders work too.

Here: discovery, the page and the command. The kinds of section (ingest, train, predict, compare),
each with its marker files, data and template, are sections.KINDS; reading the outputs'
files is inputs.py, the numbers' formatting filters.py.
"""

from __future__ import annotations

import datetime as dt

import jinja2
from apache_beam.io.filesystems import FileSystems
from markupsafe import Markup

from beam_pipelines.base.files import join, read_bytes
from beam_pipelines.base.runner import OneLineErrors, log
from beam_pipelines.base.storage import pipeline_gate
from beam_pipelines.report.filters import fint, fnum
from beam_pipelines.report.inputs import exists, match, read_json
from beam_pipelines.report.parts import Part
from beam_pipelines.report.predict_section import comparison_rows
from beam_pipelines.report.sections import KIND, KINDS
from model.errors import UsageError

REPORT_NAME = "report.html"
GENERATOR_TAG = "<meta name=generator content=\"emotion report\">"  # marks a page this command may replace
# (GENERATOR_TAG is the one piece of HTML kept in Python: check_report_is_ours looks for these exact bytes.)
MANIFEST = "demo.json"  # optional: titles and order of the sections, written by `emotion demo`


def parse_args(argv):
    p = OneLineErrors(prog="emotion report", description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="an ingest/train/predict output folder, or a folder holding several")
    p.add_argument("--title", default=None, help="page title (default: from the folder)")
    args = p.parse_args(argv)
    args.output = args.output.rstrip("/") or "/"
    return args


# =========================================================================== discovery


def _kind_of(folder: str) -> str | None:
    for kind in KINDS:
        if any(exists(join(folder, m)) for m in kind.markers):
            return kind.name
    return None


def discover(root: str) -> list[Part]:
    """The outputs in root and its immediate subfolders, in demo.json's order, then by kind (KINDS)."""
    parts: dict[str, Part] = {}
    kind = _kind_of(root)
    if kind:
        parts[root] = Part(kind, root, "")
    for kind in KINDS:
        for marker in kind.markers:
            for path in match(join(root, "*", marker)):
                folder = path[: -len(marker) - 1]
                if folder not in parts and folder != root:
                    parts[folder] = Part(kind.name, folder, folder[len(root) + 1 :])
    sections = (read_json(join(root, MANIFEST)) or {}).get("sections", [])
    order = {s.get("path"): i for i, s in enumerate(sections)}
    titles = {s.get("path"): s for s in sections}
    for part in parts.values():
        spec = titles.get(part.name, {})
        part.title = str(spec.get("title") or "")
        part.note = str(spec.get("note") or "")
    kind_order = {kind.name: i for i, kind in enumerate(KINDS)}
    ordered = sorted(parts.values(), key=lambda p: (order.get(p.name, len(order)), kind_order[p.kind], p.name))
    for i, part in enumerate(ordered):
        part.anchor = f"s{i}-{part.kind}"
    return ordered


# =========================================================================== page


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("beam_pipelines.report", "templates"),
        autoescape=True,  # every {{ value }} is HTML-escaped unless a template marks it safe
        undefined=jinja2.StrictUndefined,  # a misspelt field fails loudly instead of rendering empty
        finalize=lambda value: "" if value is None else value,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fnum=fnum, fint=fint)
    return env


def _section(env: jinja2.Environment, part: Part) -> dict:
    """One part's section of the page; an unreadable part is a section saying so."""
    kind = KIND[part.kind]
    heading = part.title or (f"{kind.title}: {part.name}" if part.name else kind.title)
    section = {"anchor": part.anchor, "kind": part.kind, "heading": heading, "path": part.path, "note": part.note}
    try:
        data = kind.data(part)
        # Rendered apart from the page (the result is Markup) so that one part that cannot be read loses
        # only its own section.
        section.update(body=Markup(env.get_template(kind.template).render(d=data)), glance=data["glance"])
        section["error"] = None
    except Exception as exc:  # one unreadable part must not lose the whole report
        log.warning("report: %s left out: %s: %s", part.path, type(exc).__name__, exc)
        section.update(body="", glance=[], error=f"{type(exc).__name__}: {exc}")
    part.title = heading
    return section


def render(root: str, title: str, parts: list[Part], manifest: dict, generated: str) -> str:
    """The page for these parts (see templates/report.html.j2)."""
    env = _environment()
    sections = [_section(env, part) for part in parts]
    return env.get_template("report.html.j2").render(
        generator_tag=Markup(GENERATOR_TAG),
        title=title,
        root=root,
        generated=generated,
        sections=sections,
        stages=[{k: s.get(k) for k in ("stage", "result", "seconds")} for s in manifest.get("stages") or []],
        compare=comparison_rows([p for p in parts if p.kind == "predict"]),
    )


def _nothing_to_report(root: str) -> UsageError:
    names = [kind.name for kind in KINDS]
    markers = [m for kind in KINDS for m in kind.markers]
    return UsageError(
        f"no {', '.join(names[:-1])} or {names[-1]} output in {root} (looked for {', '.join(markers[:-1])} or "
        f"{markers[-1]} in it and in its subfolders)"
    )


def build(root: str, title: str | None = None) -> str:
    """Writes root/report.html; returns its path. UsageError when root holds no pipeline output."""
    root = root.rstrip("/") or "/"
    parts = discover(root)
    if not parts:
        if not exists(root) and not match(join(root, "*")):
            raise UsageError(f"{root} does not exist")
        raise _nothing_to_report(root)
    manifest = read_json(join(root, MANIFEST)) or {}
    title = title or manifest.get("title") or f"Emotion pipeline report: {root.rstrip('/').rsplit('/', 1)[-1]}"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = render(root, title, parts, manifest, now)
    path = join(root, REPORT_NAME)
    try:
        pipeline_gate([root]).write_bytes(path, page.encode("utf-8"))  # whole or not at all; a link there is replaced
    except OSError as exc:
        raise UsageError(f"cannot write {path} ({exc.strerror or exc}): choose another --output or fix its "
                         "permissions") from None
    return path


def check_report_is_ours(root: str) -> None:
    """A report.html already in the folder is replaced only if this command wrote it."""
    path = join(root, REPORT_NAME)
    if FileSystems.exists(path) and GENERATOR_TAG.encode() not in read_bytes(path)[:4096]:
        raise UsageError(f"{path} exists and was not written by emotion report; move it away first")


def run(argv=None) -> str:
    args = parse_args(argv)
    check_report_is_ours(args.output)
    path = build(args.output, args.title)
    print(f"report: {path}")
    return path
