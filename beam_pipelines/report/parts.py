"""What every section kind shares: `Part` (an output folder found under the report's root) and the
reads more than one kind makes (the dead-letter rows, a confusion matrix as the templates draw it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from beam_pipelines.base.files import join
from beam_pipelines.report.filters import (
    pick,
)
from beam_pipelines.report.inputs import read_tables

MAX_REJECTED_ROWS = 50


@dataclass
class Part:
    """One output folder found under the report's root, and what the page needs of it."""

    kind: str  # a SectionKind's name: ingest, train, predict or compare
    path: str
    name: str  # relative to the report folder ("" for the folder itself)
    title: str = ""
    note: str = ""
    anchor: str = ""
    data: dict = field(default_factory=dict)  # predict: its summary and metrics, for the "Models compared" table


def rejected_data(folder: str, expected: int | None) -> dict | None:
    """Reason counts and the first rows of rejected/*.parquet (None: no such table)."""
    t = read_tables(join(folder, "rejected", "*.parquet"))
    if t is None:
        return None
    data = {"total": t.num_rows, "expected": expected, "reasons": [], "rows": [], "folder": join(folder, "rejected")}
    if t.num_rows:
        counts = t.group_by("reason").aggregate([("reason", "count")]).to_pylist()
        data["reasons"] = sorted(((r["reason"], r["reason_count"]) for r in counts), key=str)
        shown = t.sort_by([("reason", "ascending"), ("uri", "ascending")]).slice(0, MAX_REJECTED_ROWS).to_pylist()
        data["rows"] = [pick(r, ("uri", "reason", "detail", "stage")) for r in shown]
    return data


def confusion_data(labels: list[str], matrix: list[list[int]]) -> dict:
    """A confusion matrix with each row's shares and the totals, for macros.confusion."""
    rows = []
    for label, counts in zip(labels, matrix):
        total = sum(counts)
        cells = [{"count": n, "share": n / (total or 1)} for n in counts]
        rows.append({"label": label, "cells": cells, "total": total})
    column_totals = [sum(r[j] for r in matrix) for j in range(len(labels))]
    return {"labels": labels, "rows": rows, "column_totals": column_totals, "total": sum(column_totals)}
