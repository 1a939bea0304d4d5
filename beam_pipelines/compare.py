"""Model-to-model comparison: two prediction runs over the same images, side by side.

    emotion compare --a runs/preds-shipped --b runs/preds-new --output runs/compare
    emotion compare --table gs://bucket/predictions --a RUN_ID_A --b RUN_ID_B --output runs/compare

--a / --b are two `emotion predict` output folders, or, with --table, two run ids of the partitioned
predictions table. Images are matched by URI. Outputs under --output (an owned output, as predict's):

  compare/comparison.json         images in both / only one, agreement rate, accuracy and macro-F1 of
                                  each run on the labelled images, the runs' model versions
  compare/agreement.parquet       label_a, label_b, count: the confusion between the two models' labels
  compare/per_class.parquet       label, support, recall_a, recall_b, f1_a, f1_b (when labels are known)
  compare/disagreements.parquet   every image the two label differently, most confident first
                                  (by the lower of the two confidences)

The tables' schemas are schemas/compare.py. `emotion report --output DIR` shows the comparison as a
section of the page.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_pipelines.base import progress
from beam_pipelines.base.files import join, parquet_bytes, read_parquet, write_bytes
from beam_pipelines.base.listing import list_entries
from beam_pipelines.base.outputs import OutputClaim, commit
from beam_pipelines.base.runner import log
from model.errors import UsageError
from model.metrics import confusion, summarize
from schemas import (
    AGREEMENT_SCHEMA,
    COMPARE_INPUT_SCHEMA,
    COMPARE_OPTIONAL_COLUMNS,
    COMPARE_PER_CLASS_SCHEMA,
    DISAGREEMENTS_SCHEMA,
    LABEL_TO_INDEX,
    LABELS,
)
from schemas.tables import with_schema_version

OUTPUT_NAMES = ["compare"]
# No Beam pipeline runs here: these count in progress.py's registry only (the lines and the summary).
FILES_LISTED = progress.Counter("prediction_files")
FILES_READ = progress.Counter("prediction_files_read")
ROWS_READ = progress.Counter("prediction_rows_read")
COLUMNS = COMPARE_INPUT_SCHEMA.names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="emotion compare", description=__doc__.split("\n")[0])
    p.add_argument("--a", required=True, help="predict output folder (or, with --table, a run id)")
    p.add_argument("--b", required=True, help="predict output folder (or, with --table, a run id)")
    p.add_argument("--table", default=None, help="root of the partitioned predictions table (predict --table)")
    p.add_argument("--output", required=True, help="folder for compare/ (local or gs://)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files under --output/compare that no earlier run of this command wrote")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr while it runs")
    return p


# --------------------------------------------------------------------------- reading runs


def _read_predictions(paths: list[str], run_ids: set | None = None) -> pa.Table:
    """The compared columns of every prediction file, each checked to be one `emotion predict` wrote;
    the run ids its rows name are added to `run_ids`."""
    tables = []
    for path in paths:
        try:
            table = read_parquet(path)
        except Exception as exc:
            raise UsageError(f"{path} cannot be read as Parquet ({str(exc).splitlines()[0][:120]}): not a "
                             "predictions file of emotion predict") from None
        if "model_version" not in table.column_names and "model_version=" in path:  # a table partition
            version = path.split("model_version=", 1)[1].split("/", 1)[0]
            table = table.append_column("model_version", pa.array([version] * table.num_rows, pa.string()))
        if run_ids is not None and "run_id" in table.column_names:
            run_ids.update(str(v) for v in pc.unique(table["run_id"]).to_pylist())
        for name in COMPARE_OPTIONAL_COLUMNS:  # files written before the column existed
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, COMPARE_INPUT_SCHEMA.field(name).type))
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise UsageError(f"{path} is not a predictions file of emotion predict (no column "
                             f"{', '.join(missing[:3])}): move it away or compare another folder")
        try:
            table = table.select(COLUMNS).cast(COMPARE_INPUT_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            raise UsageError(f"{path} is not a predictions file of emotion predict (its columns have other types: "
                             f"{str(exc).splitlines()[0][:120]})") from None
        labels = set(pc.unique(table["predicted_label"]).to_pylist()) | set(pc.unique(table["true_label"]).to_pylist())
        if labels - set(LABELS) - {None} or table["predicted_label"].null_count:
            raise UsageError(f"{path} holds labels outside {', '.join(LABELS)}: not a predictions file of this "
                             "emotion predict")
        tables.append(table)
        FILES_READ.inc()
        ROWS_READ.inc(table.num_rows)
    return pa.concat_tables(tables) if tables else pa.table({c: pa.array([], pa.string()) for c in COLUMNS})


def run_files(source: str, table_root: str | None) -> list[str]:
    """The prediction files of a predict output or of a table run id."""
    if table_root:
        from beam_pipelines.table.claim import read_run as read_run_row
        from beam_pipelines.table.claim import run_partition

        row = read_run_row(table_root, source)
        if row is None:
            raise UsageError(f"run {source} is not in the runs table of --table {table_root}")
        folder = run_partition(table_root, row)
    else:
        folder = join(source, "predictions")
    try:
        files = sorted(e.path for e in list_entries(folder) if e.path.endswith(".parquet"))
    except Exception as exc:
        raise UsageError(f"cannot list {folder}: {exc}") from None
    if not files:
        raise UsageError(f"no predictions under {folder}: give an `emotion predict` --output folder"
                         + (" or a run id of --table" if not table_root else ""))
    return files


# --------------------------------------------------------------------------- comparing


KEYS = ("uri", "face")


def _keyed(table: pa.Table, suffix: str) -> pa.Table:
    """The rows with their join key (uri, face: the face index, 0 for a row of a whole image) and
    every other column suffixed."""
    table = table.append_column("face", pc.fill_null(table["face_index"], 0))
    return table.rename_columns([c if c in KEYS else f"{c}_{suffix}" for c in table.column_names])


def compare(a: pa.Table, b: pa.Table) -> dict:
    """Everything the outputs hold, from two runs' rows (matched by URI and face)."""
    a, b = _keyed(a, "a"), _keyed(b, "b")
    both = a.join(b, list(KEYS), join_type="inner").sort_by([("uri", "ascending"), ("face", "ascending")])
    n = both.num_rows
    label_a = both["predicted_label_a"].to_pylist()
    label_b = both["predicted_label_b"].to_pylist()
    truth = [t if t is not None else u for t, u in zip(both["true_label_a"].to_pylist(), both["true_label_b"].to_pylist())]
    ia = np.array([LABEL_TO_INDEX[x] for x in label_a], np.int64)
    ib = np.array([LABEL_TO_INDEX[x] for x in label_b], np.int64)
    agreement = confusion(ia, ib)
    labelled = np.array([t is not None for t in truth])
    it = np.array([LABEL_TO_INDEX[t] if t is not None else -1 for t in truth], np.int64)
    summary = {
        "images_a": a.num_rows,
        "images_b": b.num_rows,
        "images_in_both": n,
        "only_in_a": a.num_rows - n,
        "only_in_b": b.num_rows - n,
        "agreement": float((ia == ib).mean()) if n else None,
        "labelled": int(labelled.sum()),
        "model_version_a": _single(both["model_version_a"]),
        "model_version_b": _single(both["model_version_b"]),
    }
    per_class = []
    if labelled.any():
        sa = summarize(confusion(it[labelled], ia[labelled]))
        sb = summarize(confusion(it[labelled], ib[labelled]))
        summary |= {"accuracy_a": sa["accuracy"], "accuracy_b": sb["accuracy"],
                    "macro_f1_a": sa["macro_f1"], "macro_f1_b": sb["macro_f1"],
                    "only_a_correct": int(((ia == it) & (ib != it) & labelled).sum()),
                    "only_b_correct": int(((ib == it) & (ia != it) & labelled).sum())}
        per_class = [{"label": label, "support": sa["per_class"][label]["support"],
                      "recall_a": sa["per_class"][label]["recall"], "recall_b": sb["per_class"][label]["recall"],
                      "f1_a": sa["per_class"][label]["f1"], "f1_b": sb["per_class"][label]["f1"]} for label in LABELS]
    conf_a, conf_b = both["confidence_a"].to_numpy(), both["confidence_b"].to_numpy()
    differ = np.flatnonzero(ia != ib)
    order = differ[np.lexsort((np.array(both["uri"].to_pylist(), dtype=object)[differ],
                               -np.minimum(conf_a, conf_b)[differ]))] if len(differ) else differ
    faces = pc.coalesce(both["face_index_a"], both["face_index_b"]).to_pylist()
    disagreements = [{
        "uri": both["uri"][i].as_py(), "face_index": faces[i], "content_sha256": both["content_sha256_a"][i].as_py(), "true_label": truth[i],
        "label_a": label_a[i], "confidence_a": float(conf_a[i]), "label_b": label_b[i], "confidence_b": float(conf_b[i]),
        "correct": None if truth[i] is None else "a" if label_a[i] == truth[i] else "b" if label_b[i] == truth[i]
        else "neither",
    } for i in order]
    return {
        "summary": summary,
        "agreement": [{"label_a": LABELS[i], "label_b": LABELS[j], "count": int(agreement[i, j])}
                      for i in range(len(LABELS)) for j in range(len(LABELS))],
        "per_class": per_class,
        "disagreements": disagreements,
    }


def _single(column: pa.ChunkedArray) -> str | None:
    values = pc.unique(column).to_pylist()
    return values[0] if len(values) == 1 else ", ".join(sorted(map(str, values))) or None


def _parquet(rows: list[dict], schema: pa.Schema) -> bytes:
    return parquet_bytes(pa.Table.from_pylist(rows, schema=with_schema_version(schema)), compression="zstd")


def write(result: dict, root: str) -> None:
    out = join(root, "compare")
    write_bytes(join(out, "comparison.json"), (json.dumps(result["summary"], indent=2) + "\n").encode(), "application/json")
    write_bytes(join(out, "agreement.parquet"), _parquet(result["agreement"], AGREEMENT_SCHEMA))
    write_bytes(join(out, "per_class.parquet"), _parquet(result["per_class"], COMPARE_PER_CLASS_SCHEMA))
    write_bytes(join(out, "disagreements.parquet"), _parquet(result["disagreements"], DISAGREEMENTS_SCHEMA))


def run(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    args.output = args.output.rstrip("/")
    name_a, name_b = args.a, args.b
    with progress.report("compare", progress_figures, quiet=args.quiet):
        files_a, files_b = run_files(args.a, args.table), run_files(args.b, args.table)
        FILES_LISTED.inc(len(files_a) + len(files_b))
        runs_a, runs_b = set(), set()
        result = compare(_read_predictions(files_a, runs_a), _read_predictions(files_b, runs_b))
    counters = progress.snapshot()
    same = _same_run(files_a, files_b, runs_a, runs_b)
    summary = result["summary"] | {"a": name_a, "b": name_b, "same_run": same}
    if same:
        log.info("compare: --a and --b are the same run (%s): every image agrees by construction; compare it "
                 "with another run", name_a if files_a == files_b else ", ".join(sorted(runs_a)))
    result["summary"] = summary
    if summary["images_in_both"] == 0:
        raise UsageError(f"{name_a} and {name_b} share no image (matched by URI): nothing to compare")
    claim = OutputClaim(args.output, "compare", OUTPUT_NAMES, overwrite=args.overwrite,
                        description={"command": " ".join(["emotion", "compare", *(argv or [])]),
                                     "input": f"{name_a} vs {name_b}"})
    with claim as plan:
        write(result, plan.write_root)
        commit(plan, {k: summary[k] for k in ("images_in_both", "only_in_a", "only_in_b")})
    log.info("compare: %d images in both; agreement %.4f%s%s", summary["images_in_both"], summary["agreement"],
             f"; accuracy a {summary['accuracy_a']:.4f} vs b {summary['accuracy_b']:.4f} on {summary['labelled']} labelled"
             if "accuracy_a" in summary else "", progress.format_counters(dict(sorted(counters.items()))))
    return summary


def _same_run(files_a: list[str], files_b: list[str], runs_a: set, runs_b: set) -> bool:
    """Whether both sides are one run: the same prediction files (a folder given twice, by any path),
    or rows that name the same single run id (a copy of a run's folder)."""
    import os

    def canonical(paths):
        return sorted(os.path.realpath(p) if "://" not in p else p for p in paths)

    return canonical(files_a) == canonical(files_b) or (len(runs_a) == 1 and runs_a == runs_b)


def progress_figures(counts: dict) -> progress.Figures:
    """A progress line: the prediction files of both runs read, once both are listed."""
    return progress.Figures(counts.get("prediction_files_read", 0), counts.get("prediction_files"), "prediction files",
                            f"{counts.get('prediction_rows_read', 0):,} rows")
