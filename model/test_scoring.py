"""How often test was scored for a model line: metadata.json's "test_scoring", kept with the model.

    "test_scoring": {"count": 2, "events": [{"when": ..., "model_version": ..., "command": ...,
                                              "what": ..., "recorded": "when it ran" | "reconstructed from ..."}]}

A model line is the models one directory held and the models it started from (--init-weights): each
export carries the events of the metadata.json it replaces and of the model it started from, so a count
never goes down by re-exporting. Only the final step (model/evaluate.py --final) adds an event; records
reconstructed after the fact say so in "recorded". Read back from disk, so checked: a record that is not
this shape is refused in one line rather than counted as zero.
"""

from __future__ import annotations

from model.errors import UsageError

KEY = "test_scoring"
FIELDS = ("when", "model_version", "command", "what", "recorded")


def empty() -> dict:
    return {"count": 0, "events": []}


def read(metadata: dict, where: str = "metadata.json") -> dict:
    """The record of a metadata dict (an empty one when it has none), checked."""
    record = metadata.get(KEY)
    if record is None:
        return empty()
    events = record.get("events") if isinstance(record, dict) else None
    if not isinstance(events, list) or not all(
            isinstance(e, dict) and all(isinstance(e.get(k, ""), str) for k in FIELDS) for e in events):
        raise UsageError(f"{where}: {KEY} is not a list of events: a hand-edited metadata file; re-export the model")
    if record.get("count") != len(events):
        raise UsageError(f"{where}: {KEY} counts {str(record.get('count'))[:20]} but lists {len(events)} events: "
                         f"a hand-edited metadata file")
    return {"count": len(events), "events": [dict(e) for e in events]}


def add(record: dict, event: dict) -> dict:
    events = [*record["events"], {k: str(event.get(k, "")) for k in FIELDS}]
    return {"count": len(events), "events": events}


def merge(*records: dict) -> dict:
    """The events of several records (a directory's previous export, the model it started from), each
    once, oldest first."""
    seen, events = set(), []
    for record in records:
        for event in record["events"]:
            key = tuple(event.get(k, "") for k in FIELDS)
            if key not in seen:
                seen.add(key)
                events.append(event)
    # A reconstructed event's time reads "by <time>" (it happened no later): ordered by the time itself.
    events.sort(key=lambda e: e.get("when", "").removeprefix("by "))
    return {"count": len(events), "events": events}
