"""Report: one static, self-contained HTML page for ingest, train and predict outputs.

    emotion report --output /tmp/fer2013-ingest          # one stage's output folder
    emotion report --output ./emotion-demo               # a folder holding several (ingest/, train/, predict-*/)

Writes DIR/report.html. What is there is discovered: an ingest output (stats.json), a
training run (metadata.json, history.csv) or a predict output (summary.json,
evaluation/metrics.json), in DIR itself or in its immediate subfolders; parts that are
missing are left out. The page has its images embedded as base64 data URIs, inline CSS,
no scripts and no external references, so it can be mailed or archived as one file.
Files are read through Beam's FileSystems, so gs:// folders work too.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import html
import io
import json
import math
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from beam_pipelines.common import UsageError, join, log, read_bytes, write_bytes

REPORT_NAME = "report.html"
GENERATOR_TAG = "<meta name=generator content=\"emotion report\">"  # marks a page this command may replace
MANIFEST = "demo.json"  # optional: titles and order of the sections, written by `emotion demo`
MAX_REJECTED_ROWS = 50
KIND_ORDER = {"ingest": 0, "train": 1, "predict": 2}
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}
MARKERS = {  # a folder is of a kind when one of these files exists in it
    "ingest": ("stats.json",),
    "train": ("metadata.json", "history.csv"),
    "predict": ("summary.json", "evaluation/metrics.json"),
}


class OneLineErrors(argparse.ArgumentParser):
    """argparse that reports a bad option as a UsageError: one line, exit 2, no usage dump."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def parse_args(argv):
    p = OneLineErrors(prog="emotion report", description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="an ingest/train/predict output folder, or a folder holding several")
    p.add_argument("--title", default=None, help="page title (default: from the folder)")
    args = p.parse_args(argv)
    args.output = args.output.rstrip("/") or "/"
    return args


# =========================================================================== file access


def _match(pattern: str) -> list[str]:
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # no such folder, nothing matched
        return []


def _exists(path: str) -> bool:
    try:
        return FileSystems.exists(path)
    except Exception:
        return False


def _read(path: str) -> bytes | None:
    try:
        with FileSystems.open(path) as f:
            return f.read()
    except Exception:
        return None


def _read_json(path: str) -> dict | None:
    data = _read(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        log.warning("report: %s is not valid JSON; left out", path)
        return None


def _read_parquet(pattern: str, columns=None):
    """All rows of the Parquet files matching pattern as one pyarrow Table (None: no files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for path in _match(pattern):
        data = _read(path)
        if not data:
            continue
        try:
            tables.append(pq.read_table(io.BytesIO(data), columns=columns))
        except Exception as exc:
            log.warning("report: cannot read %s: %s", path, exc)
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def _parquet_rows(pattern: str) -> int | None:
    """Row count of the Parquet files matching pattern, from their footers only."""
    import pyarrow.parquet as pq

    paths = _match(pattern)
    if not paths:
        return None
    total = 0
    for path in paths:
        try:
            with FileSystems.open(path) as f:
                total += pq.ParquetFile(f).metadata.num_rows
        except Exception:
            data = _read(path)
            if data:
                total += pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
    return total


# =========================================================================== discovery


@dataclass
class Part:
    kind: str  # ingest, train or predict
    path: str
    name: str  # relative to the report folder ("" for the folder itself)
    title: str = ""
    note: str = ""
    anchor: str = ""
    data: dict = field(default_factory=dict)


def _kind_of(folder: str) -> str | None:
    for kind, markers in MARKERS.items():
        if any(_exists(join(folder, m)) for m in markers):
            return kind
    return None


def discover(root: str) -> list[Part]:
    """The ingest/train/predict outputs in root and its immediate subfolders."""
    parts: dict[str, Part] = {}
    kind = _kind_of(root)
    if kind:
        parts[root] = Part(kind, root, "")
    for kind, markers in MARKERS.items():
        for marker in markers:
            for path in _match(join(root, "*", marker)):
                folder = path[: -len(marker) - 1]
                if folder not in parts and folder != root:
                    parts[folder] = Part(kind, folder, folder[len(root) + 1 :])
    manifest = _read_json(join(root, MANIFEST)) or {}
    order = {s.get("path"): i for i, s in enumerate(manifest.get("sections", []))}
    titles = {s.get("path"): s for s in manifest.get("sections", [])}
    for part in parts.values():
        spec = titles.get(part.name, {})
        part.title = str(spec.get("title") or "")
        part.note = str(spec.get("note") or "")
    ordered = sorted(parts.values(), key=lambda p: (order.get(p.name, len(order)), KIND_ORDER[p.kind], p.name))
    for i, part in enumerate(ordered):
        part.anchor = f"s{i}-{part.kind}"
    return ordered


# =========================================================================== HTML helpers


def e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fnum(x, nd: int = 3) -> str:
    if x is None or x == "":
        return "&mdash;"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return e(x)
    if math.isnan(x):
        return "&mdash;"
    return f"{x:.{nd}f}"


def fint(x) -> str:
    if x is None:
        return "&mdash;"
    try:
        return f"{int(x):,}"
    except (TypeError, ValueError):
        return e(x)


def pct(x) -> str:
    return "&mdash;" if x is None else f"{100 * float(x):.1f}%"


def image(png: bytes | None, alt: str, cls: str = "") -> str:
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure class="{e(cls)}"><img src="data:image/png;base64,{data}" alt="{e(alt)}">'
        f"<figcaption>{e(alt)}</figcaption></figure>"
    )


def table(
    headers: list[str], rows: list[list[str]], cls: str = "", foot: list[str] | None = None, numeric_from: int = 1
) -> str:
    """Cells are HTML already (escape text with e()); columns from numeric_from are right-aligned."""

    def cell(tag, i, value):
        return f"<{tag}{' class=num' if i >= numeric_from else ''}>{value}</{tag}>"

    out = [f'<table class="{e(cls)}"><thead><tr>']
    out += [cell("th", i, e(h)) for i, h in enumerate(headers)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    out.append("</tbody>")
    if foot:
        out.append("<tfoot><tr>" + "".join(cell("td", i, v) for i, v in enumerate(foot)) + "</tr></tfoot>")
    out.append("</table>")
    return "".join(out)


def kv(pairs: list[tuple[str, str]]) -> str:
    """A definition list; values are HTML already."""
    rows = "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in pairs if v not in (None, ""))
    return f'<dl class="kv">{rows}</dl>'


def bar(value) -> str:
    """A small inline bar for a number in [0, 1]."""
    if value is None:
        return ""
    w = max(0.0, min(1.0, float(value))) * 100
    return f'<span class="bar"><span style="width:{w:.0f}%"></span></span>'


def score(value) -> str:
    """A number in [0, 1] with its bar, kept on one line."""
    return f'<span class="nw">{fnum(value)} {bar(value)}</span>'


def check(ok: bool, text: str) -> str:
    cls, mark = ("ok", "&#10003;") if ok else ("bad", "&#10007;")
    return f'<p class="check {cls}"><span class="mark">{mark}</span> {text}</p>'


def warnings_box(warnings: list[str]) -> str:
    if not warnings:
        return '<p class="check ok"><span class="mark">&#10003;</span> No data-health warnings.</p>'
    items = "".join(f"<li>{e(w)}</li>" for w in warnings)
    plural = "s" if len(warnings) > 1 else ""
    return f'<div class="warn"><strong>{len(warnings)} warning{plural}</strong><ul>{items}</ul></div>'


def card(label: str, value: str, sub: str = "") -> str:
    return (
        f'<div class="card"><div class="label">{e(label)}</div><div class="value">{value}</div>'
        f'<div class="sub">{sub}</div></div>'
    )


# =========================================================================== rejected inputs


def rejected_section(folder: str, expected: int | None) -> str:
    """Reason counts and the first rows of rejected/*.parquet."""
    t = _read_parquet(join(folder, "rejected", "*.parquet"))
    if t is None:
        return ""
    n = t.num_rows
    out = ["<h3>Rejected inputs (dead-letter table)</h3>"]
    if not n:
        out.append('<p class="muted">No input was rejected.</p>')
        if expected:
            out.append(
                check(
                    False, f"the totals count {fint(expected)} rejected, but <code>rejected/*.parquet</code> is empty"
                )
            )
        return "".join(out)
    counts = {r["reason"]: r["reason_count"] for r in t.group_by("reason").aggregate([("reason", "count")]).to_pylist()}
    out.append(
        table(
            ["reason", "files"],
            [[f"<code>{e(k)}</code>", fint(v)] for k, v in sorted(counts.items(), key=str)],
            foot=["total", fint(n)],
        )
    )
    if expected is not None:
        out.append(
            check(
                expected == n,
                f"{fint(n)} rows in <code>rejected/*.parquet</code>"
                f"{' match' if expected == n else ' do not match'} the {fint(expected)} counted in the totals",
            )
        )
    shown = t.sort_by([("reason", "ascending"), ("uri", "ascending")]).slice(0, MAX_REJECTED_ROWS).to_pylist()
    body = [
        [
            f'<span class="uri">{e(r.get("uri"))}</span>',
            f"<code>{e(r.get('reason'))}</code>",
            e(r.get("detail")),
            e(r.get("stage")),
        ]
        for r in shown
    ]
    out.append(table(["uri", "reason", "detail", "stage"], body, cls="rejected", numeric_from=99))
    if n > len(shown):
        out.append(
            f'<p class="muted">First {len(shown)} of {fint(n)} rows; all of them are in '
            f"<code>{e(join(folder, 'rejected'))}/*.parquet</code>.</p>"
        )
    return "".join(out)


# =========================================================================== ingest


def ingest_section(part: Part) -> tuple[str, list[str]]:
    stats = _read_json(join(part.path, "stats.json")) or {}
    labels = stats.get("labels") or []
    totals = stats.get("totals", {})
    written = stats.get("written", {})
    rejected = stats.get("rejected", {})
    skipped = stats.get("skipped", {})
    out = []

    cards = [
        card("files matched", fint(totals.get("matched"))),
        card(
            "images written",
            fint(totals.get("written")),
            " / ".join(
                f"{e(s)} {fint(n)}"
                for s, n in sorted(
                    stats.get("written_per_split", {}).items(), key=lambda kv_: SPLIT_ORDER.get(kv_[0], 9)
                )
            ),
        ),
        card("rejected", fint(totals.get("rejected")), ", ".join(f"{e(k)} {v}" for k, v in rejected.items())),
        card("skipped (not data)", fint(totals.get("skipped_non_data")), ", ".join(e(k) for k in skipped)),
    ]
    out.append(f'<div class="cards">{"".join(cards)}</div>')
    if totals:
        parts = [totals.get("written", 0), totals.get("rejected", 0), totals.get("skipped_non_data", 0)]
        balanced = totals.get("matched") == sum(parts)
        out.append(
            check(
                balanced,
                f"{fint(totals.get('matched'))} matched = {fint(parts[0])} written + "
                f"{fint(parts[1])} rejected + {fint(parts[2])} skipped",
            )
        )
    out.append(warnings_box(stats.get("warnings", [])))

    # written per class x split, with totals both ways
    if written and labels:
        splits = sorted(written, key=lambda sp: SPLIT_ORDER.get(sp, 9))
        rows, split_totals = [], {sp: 0 for sp in splits}
        class_totals = []
        for c in labels:
            values = [int(written[sp].get(c, 0)) for sp in splits]
            for sp, v in zip(splits, values):
                split_totals[sp] += v
            class_totals.append(sum(values))
            rows.append([e(c), *map(fint, values), f"<strong>{fint(sum(values))}</strong>"])
        foot = ["total", *[fint(split_totals[sp]) for sp in splits], f"<strong>{fint(sum(class_totals))}</strong>"]
        out.append('<h3>Class balance (images written, after de-duplication)</h3><div class="row"><div class="wide">')
        out.append(image(_read(join(part.path, "plots", "class_distribution.png")), "Class distribution per split"))
        out.append('</div><div class="fit">')
        out.append(table(["class", *splits, "total"], rows, foot=foot))
        if min(class_totals):
            out.append(f'<p class="muted">Largest / smallest class: {max(class_totals) / min(class_totals):.1f}x.</p>')
        else:
            missing = [c for c, n in zip(labels, class_totals) if not n]
            out.append(check(False, f"No image of {e(', '.join(missing))}."))
        out.append("</div></div>")

    # duplicates and leakage
    dup = stats.get("duplicates")
    if dup is not None:
        leakage = dup.get("leakage_dropped", {}) or {}
        out.append("<h3>Duplicates and leakage</h3>")
        pairs = [
            ("groups of pixel-identical images", fint(dup.get("groups"))),
            ("redundant copies dropped", fint(dup.get("redundant_files"))),
            ("dropped within one split", fint(dup.get("dropped_within_split"))),
            (
                "dropped across splits (leakage)",
                fint(sum(leakage.values()))
                + (
                    " &mdash; " + ", ".join(f"{e(k)}: {fint(v)}" for k, v in sorted(leakage.items())) if leakage else ""
                ),
            ),
            ("groups with conflicting labels", fint(dup.get("conflicting_label_groups"))),
            ("files rejected for conflicting labels", fint(dup.get("conflicting_label_files"))),
        ]
        out.append(kv(pairs))
        if not dup.get("groups") and not dup.get("conflicting_label_groups"):
            out.append(check(True, "No duplicate images, no leakage between splits, no conflicting labels."))
        elif leakage:
            out.append(
                check(
                    False,
                    "Pixel-identical images were found in more than one split; the evaluation-side "
                    "copy was kept and the training-side copies dropped.",
                )
            )

    # image statistics per split
    image_stats = stats.get("image_stats", {})
    if image_stats:
        out.append("<h3>Image statistics per split</h3>")
        rows = [
            [
                f"<strong>{e(s)}</strong>",
                fint(v.get("images")),
                f"{fnum(v.get('brightness_mean'), 1)} &plusmn; {fnum(v.get('brightness_std'), 1)}",
                f"{fnum(v.get('contrast_mean'), 1)} &plusmn; {fnum(v.get('contrast_std'), 1)}",
                fnum(v.get("sharpness_geomean"), 0),
            ]
            for s, v in sorted(image_stats.items(), key=lambda kv_: SPLIT_ORDER.get(kv_[0], 9))
        ]
        out.append(
            table(
                [
                    "split",
                    "images",
                    "brightness (mean ± std)",
                    "contrast (mean ± std)",
                    "sharpness (geo. mean of Laplacian variance)",
                ],
                rows,
            )
        )

    out.append("<details><summary>Ingest settings</summary>")
    out.append(
        kv(
            [
                ("input", f"<code>{e(stats.get('input'))}</code>"),
                ("output", f"<code>{e(stats.get('output'))}</code>"),
                ("image size", e(stats.get("image_size"))),
                ("face crop", e(stats.get("face_crop"))),
                ("split source", e(stats.get("split_source"))),
                ("val fraction", e(stats.get("val_fraction"))),
                ("test fraction", e(stats.get("test_fraction"))),
                ("val carved from train", e(stats.get("val_carved_from_train"))),
                ("seed", e(stats.get("seed"))),
                ("shards per split", e(stats.get("num_shards"))),
                ("schema version", e(stats.get("schema_version"))),
                ("data fingerprint", f"<code>{e(stats.get('fingerprint'))}</code>"),
            ]
        )
    )
    out.append("</details>")
    out.append(rejected_section(part.path, totals.get("rejected") if totals else None))
    glance = [f"{fint(totals.get('written'))} images written, {fint(totals.get('rejected'))} rejected"]
    return "".join(out), glance


# =========================================================================== train


def train_section(part: Part) -> tuple[str, list[str]]:
    meta = _read_json(join(part.path, "metadata.json")) or {}
    history = []
    raw = _read(join(part.path, "history.csv"))
    if raw:
        history = list(csv.DictReader(io.StringIO(raw.decode("utf-8", "replace"))))
    training = meta.get("training", {})
    metrics = meta.get("metrics", {})
    tdata = meta.get("training_data", {})
    out = []
    glance = []

    val = metrics.get("val", {})
    test = metrics.get("test", {})
    cards = []
    if meta:
        cards.append(
            card(
                "model",
                f"<code>{e(meta.get('model_version'))}</code>",
                f"{e(meta.get('arch'))}, {fint(meta.get('parameters'))} parameters",
            )
        )
    if val:
        cards.append(
            card(
                "val macro-F1",
                fnum(val.get("macro_f1")),
                f"accuracy {fnum(val.get('accuracy'))} on {fint(val.get('examples'))}",
            )
        )
        glance.append(f"val macro-F1 {fnum(val.get('macro_f1'))}")
    if test:
        cards.append(
            card(
                "test macro-F1",
                fnum(test.get("macro_f1")),
                f"accuracy {fnum(test.get('accuracy'))} on {fint(test.get('examples'))}",
            )
        )
    if training:
        cards.append(
            card(
                "epochs",
                fint(training.get("epochs_run")),
                f"best epoch {e(training.get('best_epoch'))}, {fint(training.get('steps'))} steps, "
                f"{fnum(training.get('seconds_this_run'), 1)} s",
            )
        )
    elif history:
        cards.append(card("epochs (so far)", fint(len(history)), "no metadata.json yet: training has not exported"))
    if cards:
        out.append(f'<div class="cards">{"".join(cards)}</div>')

    curves = _read(join(part.path, "plots", "training_curves.png"))
    if curves:
        out.append(image(curves, "Training curves: loss, accuracy / val macro-F1, learning rate", cls="full"))

    if metrics:
        out.append("<h3>Metrics of the exported (best) weights</h3>")
        rows = []
        for name in (
            "val",
            "val_flip_tta",
            "test",
            "test_flip_tta",
            *[k for k in metrics if k not in ("val", "val_flip_tta", "test", "test_flip_tta")],
        ):
            m = metrics.get(name)
            if not m:
                continue
            split, _, tta = name.partition("_")
            rows.append(
                [
                    f"<strong>{e(split)}</strong>",
                    "flip TTA" if tta else "plain",
                    fint(m.get("examples")),
                    fnum(m.get("accuracy")),
                    score(m.get("macro_f1")),
                ]
            )
        out.append(table(["split", "inference", "images", "accuracy", "macro-F1"], rows, numeric_from=2))
        per_class_names = [
            k for k in ("val", "val_flip_tta", "test", "test_flip_tta") if metrics.get(k, {}).get("per_class")
        ]
        if per_class_names:
            labels = meta.get("labels") or list(metrics[per_class_names[0]]["per_class"])
            body = [
                [
                    e(c),
                    *[fnum(metrics[k]["per_class"].get(c, {}).get("f1")) for k in per_class_names],
                    *[
                        fint(metrics[k]["per_class"].get(c, {}).get("support"))
                        for k in per_class_names
                        if "tta" not in k
                    ],
                ]
                for c in labels
            ]
            heads = [
                "class",
                *[f"F1 {k.replace('_flip_tta', ' (TTA)')}" for k in per_class_names],
                *[f"support {k}" for k in per_class_names if "tta" not in k],
            ]
            out.append("<details><summary>Per-class F1</summary>" + table(heads, body) + "</details>")

    if training or tdata:
        out.append("<h3>Training run</h3>")
        ips = tdata.get("images_per_split") or {}
        out.append(
            kv(
                [
                    ("architecture", e(meta.get("arch"))),
                    ("recommended test-time augmentation", e(meta.get("recommended_tta"))),
                    ("strategy", f"{e(training.get('strategy'))} ({fint(training.get('replicas'))} replica(s))"),
                    ("global batch", fint(training.get("global_batch"))),
                    ("optimizer", f"{e(training.get('optimizer'))}, peak LR {fnum(training.get('peak_lr'), 4)}"),
                    ("mixed precision", e(training.get("mixed_precision"))),
                    ("stopped early", e(training.get("stopped_early"))),
                    ("resumed from step", fint(training.get("resumed_from_step"))),
                    ("training data", f"<code>{e(tdata.get('path'))}</code>"),
                    (
                        "images per split",
                        ", ".join(
                            f"{e(k)} {fint(v)}"
                            for k, v in sorted(ips.items(), key=lambda kv_: SPLIT_ORDER.get(kv_[0], 9))
                        ),
                    ),
                    ("data fingerprint", f"<code>{e(tdata.get('fingerprint'))}</code>"),
                    ("face crop", e(tdata.get("face_crop"))),
                    ("image size", e(meta.get("image_size"))),
                    ("model fingerprint", f"<code>{e(meta.get('model_fingerprint'))}</code>"),
                ]
            )
        )
        if meta.get("versions") or meta.get("command"):
            out.append("<details><summary>Versions and command</summary>")
            out.append(
                kv(
                    [(k, e(v)) for k, v in (meta.get("versions") or {}).items()]
                    + [("command", f"<code>{e(meta.get('command'))}</code>")]
                )
            )
            out.append("</details>")

    if history:
        keys = [
            k
            for k in (
                "epoch",
                "loss",
                "accuracy",
                "val_accuracy",
                "val_macro_f1",
                "lr",
                "images_per_s",
                "epoch_seconds",
            )
            if k in history[0]
        ]
        fmt = {
            "epoch": fint,
            "lr": lambda v: fnum(v, 5),
            "images_per_s": lambda v: fnum(v, 0),
            "epoch_seconds": lambda v: fnum(v, 1),
        }
        rows = [[fmt.get(k, fnum)(h.get(k)) for k in keys] for h in history]
        out.append(
            f"<details><summary>History ({len(history)} epochs)</summary>"
            + table(keys, rows, numeric_from=0, cls="compact")
            + "</details>"
        )
    return "".join(out), glance


# =========================================================================== predict


def _confusion_table(labels, matrix) -> str:
    head = "".join(f"<th class=num>{e(c)}</th>" for c in labels)
    rows = []
    for i, c in enumerate(labels):
        total = sum(matrix[i]) or 1
        cells = []
        for n in matrix[i]:
            share = n / total
            color = f"rgba(37,99,235,{0.08 + 0.8 * share:.2f})" if n else "transparent"
            fg = "#fff" if share > 0.5 else "inherit"
            cells.append(f'<td class="num" style="background:{color};color:{fg}">{fint(n)}</td>')
        rows.append(
            f"<tr><th>{e(c)}</th>{''.join(cells)}<td class=num><strong>{fint(sum(matrix[i]))}</strong></td></tr>"
        )
    col = [sum(r[j] for r in matrix) for j in range(len(labels))]
    foot = "".join(f"<td class=num>{fint(n)}</td>" for n in col)
    return (
        f'<table class="confusion"><thead><tr><th>true \\ predicted</th>{head}<th class=num>total</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody><tfoot><tr><td>total</td>{foot}<td class=num><strong>{fint(sum(col))}"
        "</strong></td></tr></tfoot></table>"
    )


def predict_section(part: Part) -> tuple[str, list[str]]:
    summary = _read_json(join(part.path, "summary.json")) or {}
    metrics = _read_json(join(part.path, "evaluation", "metrics.json")) or {}
    totals = summary.get("totals", {})
    out, glance = [], []
    part.data = {"summary": summary, "metrics": metrics}

    acc = metrics.get("accuracy", summary.get("accuracy"))
    f1 = metrics.get("macro_f1", summary.get("macro_f1"))
    cards = [
        card(
            "model",
            f"<code>{e(summary.get('model_version') or metrics.get('model_version'))}</code>",
            f"<span class=uri>{e(summary.get('model'))}</span>",
        )
    ]
    if totals:
        cards.append(
            card(
                "predicted",
                fint(totals.get("predicted")),
                f"of {fint(totals.get('matched'))} matched; {fint(summary.get('labelled'))} labelled",
            )
        )
        cards.append(
            card(
                "rejected",
                fint(totals.get("rejected")),
                ", ".join(f"{e(k)} {v}" for k, v in (summary.get("rejected") or {}).items()),
            )
        )
    if acc is not None:
        cards.append(card("accuracy", fnum(acc), f"macro-F1 {fnum(f1)}"))
        glance.append(f"accuracy {fnum(acc)}, macro-F1 {fnum(f1)}")
    if metrics.get("expected_calibration_error") is not None:
        cards.append(card("calibration error", fnum(metrics["expected_calibration_error"]), "ECE, 15 bins"))
    out.append(f'<div class="cards">{"".join(cards)}</div>')
    if summary.get("input"):
        out.append(
            f'<p class="muted">Input <code>{e(summary["input"])}</code>; face crop {e(summary.get("face_crop"))}; '
            f"test-time augmentation {e(summary.get('tta') or 'none')}.</p>"
        )

    if totals:
        parts = [totals.get("predicted", 0), totals.get("rejected", 0), totals.get("skipped_non_data", 0)]
        out.append(
            check(
                totals.get("matched") == sum(parts),
                f"{fint(totals.get('matched'))} matched = {fint(parts[0])} predicted + {fint(parts[1])} rejected"
                f" + {fint(parts[2])} skipped",
            )
        )
        n_rows = _parquet_rows(join(part.path, "predictions", "*.parquet"))
        if n_rows is not None:
            out.append(check(n_rows == parts[0], f"{fint(n_rows)} rows in <code>predictions/*.parquet</code>"))
        glance.append(f"{fint(parts[0])} predicted, {fint(parts[1])} rejected")
    elif metrics:
        glance.append(f"{fint(metrics.get('examples'))} evaluated")

    if metrics:
        out.append("<h3>Evaluation</h3>")
        if summary.get("labelled") is not None and metrics.get("examples") is not None and totals:
            unlabelled = totals.get("predicted", 0) - metrics["examples"]
            if unlabelled:
                out.append(
                    f'<p class="muted">{fint(metrics["examples"])} of {fint(totals.get("predicted"))} predictions '
                    f"have a known label and are evaluated; {fint(unlabelled)} have none "
                    "(their folder names no class).</p>"
                )
        out.append('<div class="row">')
        out.append(
            image(_read(join(part.path, "plots", "confusion_matrix.png")), "Confusion matrix (rows: true class)")
        )
        out.append(image(_read(join(part.path, "plots", "reliability.png")), "Reliability diagram"))
        out.append("</div>")
        labels = metrics.get("labels") or list(metrics.get("per_class", {}))
        if metrics.get("confusion") and labels:
            out.append(
                "<details><summary>Confusion counts</summary>"
                + _confusion_table(labels, metrics["confusion"])
                + "</details>"
            )

        per_class = _read_parquet(join(part.path, "evaluation", "per_class.parquet"))
        rows_pc = (
            per_class.to_pylist()
            if per_class is not None
            else [{"label": c, **v} for c, v in metrics.get("per_class", {}).items()]
        )
        if rows_pc:
            body = [
                [
                    e(r["label"]),
                    fnum(r["precision"]),
                    fnum(r["recall"]),
                    score(r["f1"]),
                    fint(r["support"]),
                    fint(r["predicted"]),
                ]
                for r in rows_pc
            ]
            foot = [
                "macro / total",
                fnum(sum(r["precision"] for r in rows_pc) / len(rows_pc)),
                fnum(sum(r["recall"] for r in rows_pc) / len(rows_pc)),
                fnum(f1),
                fint(sum(r["support"] for r in rows_pc)),
                fint(sum(r["predicted"] for r in rows_pc)),
            ]
            out.append('<h3>Per-class metrics</h3><div class="row"><div class="fit">')
            out.append(table(["class", "precision", "recall", "F1", "support", "predicted"], body, foot=foot))
            out.append(
                '<p class="muted">support: images of the class; predicted: images predicted as it.<br>'
                "The macro-F1 averages the classes present.</p>"
            )
            out.append('</div><div class="wide">')
            out.append(image(_read(join(part.path, "plots", "per_class.png")), "Per-class precision / recall / F1"))
            out.append("</div></div>")
        samples = _read(join(part.path, "plots", "samples.png"))
        if samples:
            out.append("<h3>Sample predictions</h3>")
            out.append(image(samples, "Most confident mistakes (red), then correct predictions (green)", cls="full"))
    elif totals:
        out.append('<p class="muted">No labelled input, so no evaluation.</p>')

    out.append(rejected_section(part.path, totals.get("rejected") if totals else None))
    return "".join(out), glance


def comparison_section(parts: list[Part]) -> str:
    rows = []
    for p in parts:
        s, m = p.data.get("summary", {}), p.data.get("metrics", {})
        if not m:
            continue
        rows.append(
            [
                f'<a href="#{e(p.anchor)}">{e(p.title or p.name or "predictions")}</a>',
                f"<code>{e(s.get('model_version') or m.get('model_version'))}</code>",
                f'<span class="uri">{e(s.get("input"))}</span>',
                e(s.get("tta") or "none"),
                fint(m.get("examples")),
                fnum(m.get("accuracy")),
                score(m.get("macro_f1")),
                fnum(m.get("expected_calibration_error")),
            ]
        )
    if len(rows) < 2:
        return ""
    return (
        "<section id=compare><h2>Models compared</h2>"
        + table(
            ["predictions", "model", "input", "TTA", "evaluated", "accuracy", "macro-F1", "ECE"], rows, numeric_from=4
        )
        + "</section>"
    )


# =========================================================================== page

CSS = """
:root{--fg:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f8fafc;--card:#fff;--accent:#2563eb;--ok:#15803d;--bad:#b91c1c}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
  font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header{background:#0f172a;color:#f1f5f9;padding:22px 32px}
header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#cbd5e1;font-size:13px}
header code{color:#e2e8f0;background:transparent}
nav{background:#fff;border-bottom:1px solid var(--line);padding:8px 32px;position:sticky;top:0;z-index:1}
nav a{margin-right:18px;color:var(--accent);text-decoration:none;font-weight:500}
main{max-width:1240px;margin:0 auto;padding:8px 32px 48px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 24px;margin:20px 0}
h2{margin:0 0 2px;font-size:19px}
h2 .kind{display:inline-block;font-size:11px;text-transform:uppercase;letter-spacing:.06em;background:#e0e7ff;
  color:#3730a3;border-radius:4px;padding:2px 6px;margin-right:8px;vertical-align:middle}
h3{font-size:15px;margin:22px 0 8px;border-bottom:1px solid var(--line);padding-bottom:4px}
.path{color:var(--muted);font-size:12px;margin:0 0 12px;word-break:break-all}
.note{margin:4px 0 10px}
.muted{color:var(--muted);font-size:12.5px}
code{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f1f5f9;
  border-radius:3px;padding:0 3px}
.uri{font:11.5px/1.35 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
thead th{background:#f1f5f9;font-weight:600;white-space:nowrap}
tfoot td{font-weight:600;border-top:2px solid #cbd5e1}
tbody tr:nth-child(even){background:#fafafa}
.num{text-align:right;font-variant-numeric:tabular-nums}
.nw,td code{white-space:nowrap}
table.compact th,table.compact td{padding:3px 7px}
table.rejected{width:100%;table-layout:fixed}
table.rejected th:nth-child(1){width:44%}
table.rejected th:nth-child(2){width:17%}
table.rejected th:nth-child(4){width:8%}
table.rejected td{word-break:break-word}
table.confusion td,table.confusion th{padding:4px 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:10px 0 12px}
.card{flex:1 1 170px;border:1px solid var(--line);border-radius:8px;padding:10px 14px;background:#fcfcfd;min-width:0}
.card .label{font-size:11.5px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted)}
.card .value{font-size:22px;font-weight:650;overflow-wrap:anywhere}
.card .value code{font-size:14px;background:transparent;padding:0}
.card .sub{font-size:12px;color:var(--muted);overflow-wrap:anywhere}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
.row>figure{flex:1 1 380px}
.row>.wide{flex:1 1 480px;min-width:0}
.row>.fit{flex:0 1 auto;max-width:100%;overflow-x:auto}
.row>.fit td,.row>.fit th{white-space:nowrap}
.row>.fit p{white-space:normal;max-width:36em}
figure{margin:6px 0 10px;text-align:center}
figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px;background:#fff}
figure.full img{width:100%}
figcaption{font-size:12px;color:var(--muted)}
.check{margin:6px 0;font-size:13px}
.check .mark{display:inline-block;width:18px;height:18px;line-height:18px;text-align:center;border-radius:50%;
  color:#fff;font-size:11px;margin-right:4px}
.check.ok .mark{background:var(--ok)}.check.bad .mark{background:var(--bad)}
.check.bad{color:var(--bad)}
.warn{background:#fffbeb;border:1px solid #fcd34d;border-left:4px solid #f59e0b;border-radius:6px;
  padding:8px 14px;margin:8px 0}
.warn ul{margin:4px 0 0;padding-left:20px}
dl.kv{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;margin:6px 0 10px;font-size:13px}
dl.kv dt{color:var(--muted)}dl.kv dd{margin:0;word-break:break-all}
details{margin:8px 0}
summary{cursor:pointer;color:var(--accent);font-weight:500}
.bar{display:inline-block;width:60px;height:8px;background:#e5e7eb;border-radius:4px;vertical-align:middle;
  margin-left:6px;overflow:hidden}
.bar span{display:block;height:100%;background:var(--accent)}
ol.glance{margin:6px 0;padding-left:22px}
ol.glance li{margin:2px 0}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 24px}
@media print{nav{display:none}section{break-inside:avoid-page}}
"""

KIND_TITLES = {"ingest": "Data (ingest)", "train": "Training", "predict": "Predictions"}


def build(root: str, title: str | None = None) -> str:
    """Writes root/report.html; returns its path. UsageError when root holds no pipeline output."""
    root = root.rstrip("/") or "/"
    parts = discover(root)
    if not parts:
        if not _exists(root) and not _match(join(root, "*")):
            raise UsageError(f"{root} does not exist")
        raise UsageError(
            f"no ingest, train or predict output in {root} (looked for stats.json, metadata.json, history.csv, "
            "summary.json or evaluation/metrics.json in it and in its subfolders)"
        )
    manifest = _read_json(join(root, MANIFEST)) or {}
    title = title or manifest.get("title") or f"Emotion pipeline report: {root.rstrip('/').rsplit('/', 1)[-1]}"

    sections, glance = [], []
    render = {"ingest": ingest_section, "train": train_section, "predict": predict_section}
    for part in parts:
        try:
            body, lines = render[part.kind](part)
        except Exception as exc:  # one unreadable part must not lose the whole report
            log.warning("report: %s left out: %s: %s", part.path, type(exc).__name__, exc)
            body, lines = f'<p class="check bad">This part could not be read: {e(type(exc).__name__)}: {e(exc)}</p>', []
        heading = part.title or (f"{KIND_TITLES[part.kind]}: {part.name}" if part.name else KIND_TITLES[part.kind])
        part.title = heading
        note = f'<p class="note">{e(part.note)}</p>' if part.note else ""
        sections.append(
            f'<section id="{e(part.anchor)}"><h2><span class="kind">{e(part.kind)}</span>{e(heading)}</h2>'
            f'<p class="path">{e(part.path)}</p>{note}{body}</section>'
        )
        glance.append(
            f'<li><a href="#{e(part.anchor)}">{e(heading)}</a>: {e("; ".join(lines) if lines else part.kind)}</li>'
        )

    compare = comparison_section([p for p in parts if p.kind == "predict"])
    stages = manifest.get("stages") or []
    overview = ['<section id="overview"><h2>Overview</h2>']
    if stages:
        rows = [[e(s.get("stage")), e(s.get("result")), fnum(s.get("seconds"), 1)] for s in stages]
        overview.append(table(["stage", "result", "seconds"], rows, numeric_from=2))
    else:
        overview.append(f'<ol class="glance">{"".join(glance)}</ol>')
    overview.append("</section>")

    nav = "".join(f'<a href="#{e(p.anchor)}">{e(p.title)}</a>' for p in parts)
    if compare:
        nav += '<a href="#compare">Models compared</a>'
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>{GENERATOR_TAG}"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{e(title)}</h1><p>Folder <code>{e(root)}</code> &middot; generated {e(now)} by "
        "<code>emotion report</code></p></header>"
        f"<nav>{nav}</nav><main>{''.join(overview)}{compare}{''.join(sections)}</main>"
        "<footer>Self-contained page: every image is embedded; no scripts, no external resources.</footer>"
        "</body></html>\n"
    )
    path = join(root, REPORT_NAME)
    write_bytes(path, page.encode("utf-8"), "text/html")
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
