"""Counts that travel as dicts of numbers and are added up: stats, listing summaries, a run's totals."""

from __future__ import annotations

import apache_beam as beam


def merge_counts(a: dict, b: dict) -> dict:
    """Adds nested dicts of numbers; other values: first wins."""
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict):
            out[key] = merge_counts(out[key], value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = out[key] + value
    return out


class MergeCounts(beam.CombineFn):
    """Merges dicts of counts (merge_counts) into one: stats, listing summaries."""

    def create_accumulator(self):
        return {}

    def add_input(self, acc, value):
        return merge_counts(acc, value)

    def merge_accumulators(self, accs):
        out = {}
        for acc in accs:
            out = merge_counts(out, acc)
        return out

    def extract_output(self, acc):
        return acc
