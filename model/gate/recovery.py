"""Roll-back after a kill: a killed transaction's journal, read as untrusted input (bound to the killed
run, every step checked against its recorded digest and roots), and the steps undone in reverse. The
journal is written by transaction.Transaction; see the package docstring."""

from __future__ import annotations

import json
import os
import re

from model.gate.names import PathRefused, canonical, is_local, name_problem, relative_problem
from model.gate.ops import Gate
from model.gate.transaction import JOURNAL_HEADER, JOURNAL_VERSION, content_digest, identity

JOURNAL_MAX_BYTES = 64 << 20  # the header holds the previous manifest; a step is a few hundred bytes
_ENTRY = re.compile(r"\d{6}\.json")
_UNFINISHED = re.compile(r"\.(\d{6}|header)\.json\.[A-Za-z0-9_]+\.tmp")
_ENTRY_KEYS = {"run_id", "seq", "kind", "a", "b", "created", "digest"}


class JournalRefused(PathRefused):
    """A journal that cannot be proven to be the killed run's own: nothing is rolled back."""


class MissingRoot(PathRefused):
    """A journal step in a root this run was not given (predict's --table): `role` and its recorded path."""

    def __init__(self, role: str, recorded: str):
        super().__init__(f"the journal also names the {role} root {recorded}")
        self.role, self.recorded = role, recorded


class Journal:
    """A journal read and checked by read_journal: its header and its steps, in order."""

    def __init__(self, header: dict, steps: list):
        self.header, self.steps = header, steps


def read_journal(gate: Gate, journal: str, run_id: str) -> Journal:
    """A killed transaction's journal, read as untrusted input and bound to `run_id` (the manifest's):
    the folder a real folder holding only regular files named header.json and 000000.json, 000001.json,
    ... without a gap; the header of this format, naming this run, its roots and scratch folders; every
    step naming this run and its own number, its paths as (role, plain relative path) of a role the
    header names, and a digest. Anything else is a JournalRefused (one line) and nothing is done."""
    journal = journal.rstrip("/")

    def refuse(why: str) -> JournalRefused:
        return JournalRefused(f"the commit journal {journal} {why}; nothing was rolled back")

    if not gate.isdir(journal):
        raise refuse("is not a folder (a link or a file)")
    # A kill inside Gate.write_bytes leaves its temporary file: an entry never renamed into place, so
    # its step was never taken (write-ahead). Such files are not read.
    names = sorted(name for name in (path.rsplit("/", 1)[-1] for path in gate.files(journal))
                   if not _UNFINISHED.fullmatch(name))
    if JOURNAL_HEADER not in names:
        raise refuse("has no header")
    entries = [n for n in names if n != JOURNAL_HEADER]
    if any(not _ENTRY.fullmatch(n) for n in entries) or entries != [f"{i:06d}.json" for i in range(len(entries))]:
        raise refuse("holds files that are not its steps, or its steps have a gap")
    values = {}
    for name in names:
        try:
            values[name] = json.loads(gate.read_bytes(f"{journal}/{name}", limit=JOURNAL_MAX_BYTES))
        except PathRefused as exc:
            raise refuse(f"holds {name}, which cannot be read as a step ({str(exc)[:120]})") from None
        except (ValueError, UnicodeDecodeError):
            raise refuse(f"holds {name}, which is not JSON") from None
    header = _check_header(values[JOURNAL_HEADER], run_id, refuse)
    steps = [_check_step(values[name], i, run_id, header, refuse) for i, name in enumerate(entries)]
    return Journal(header, steps)


def _check_header(header, run_id: str, refuse) -> dict:
    if not isinstance(header, dict) or header.get("journal_version") != JOURNAL_VERSION:
        raise refuse("has a header of another format (or none)")
    if header.get("run_id") != run_id:
        raise refuse(f"belongs to run {str(header.get('run_id'))[:80]!r}, not to run {run_id} its manifest names")
    roots, scratch = header.get("roots"), header.get("scratch")
    if not (isinstance(roots, dict) and roots and all(isinstance(r, str) and not name_problem(k) for k, r in roots.items())
            and isinstance(scratch, dict) and set(scratch) <= set(roots)
            and all(relative_problem(v) is None for v in scratch.values())):
        raise refuse("has a header without valid roots and scratch folders")
    previous = header.get("previous_manifest")
    if previous is not None and not isinstance(previous, str):
        raise refuse("has a header whose previous manifest is not text")
    return header


def _check_ref(ref, header: dict) -> bool:
    return isinstance(ref, list) and len(ref) == 2 and ref[0] in header["roots"] and relative_problem(ref[1]) is None


def _check_step(step, seq: int, run_id: str, header: dict, refuse) -> dict:
    ok = isinstance(step, dict) and set(step) == _ENTRY_KEYS and step["run_id"] == run_id and step["seq"] == seq \
        and step["kind"] in ("move", "new") and _check_ref(step["a"], header) and isinstance(step["digest"], str) \
        and (step["b"] is None if step["kind"] == "new" else _check_ref(step["b"], header)) \
        and isinstance(step["created"], list) and all(_check_ref(c, header) for c in step["created"])
    if not ok:
        raise refuse(f"holds step {seq:06d}.json, which is not a step of run {run_id}")
    if step["kind"] == "move":  # a commit moves between a root and its scratch folder, nothing else
        a_in, b_in = (_in_scratch(step[k], header) for k in ("a", "b"))
        if a_in == b_in or step["a"][0] != step["b"][0]:
            raise refuse(f"holds step {seq:06d}.json, a move this run's commit never makes")
    elif _in_scratch(step["a"], header):
        raise refuse(f"holds step {seq:06d}.json, a write this run's commit never makes")
    return step


def _in_scratch(ref: list, header: dict) -> bool:
    scratch = header["scratch"].get(ref[0])
    return bool(scratch) and (ref[1] == scratch or ref[1].startswith(scratch + "/"))


def _content(gate: Gate, path: str, limit: int = JOURNAL_MAX_BYTES) -> str | None:
    try:
        return content_digest(gate.read_bytes(path, limit=limit))
    except (OSError, PathRefused):
        return None


def plan_roll_back(gate: Gate, journal: Journal, roots: dict[str, str]) -> list[tuple[str, str, str | None]]:
    """The undo of each step the files prove was taken, last first, decided before anything changes:
    a move whose target is the very file or folder it moved (identity) and whose source is free is
    moved back; a move whose source is still the thing it would move was never taken; a new file whose
    content is what the step wrote is removed, any other file there is left alone. Anything else (the
    target is something else and the source is taken, ...) is a JournalRefused. `roots`: the current
    path of each role (the output from where the journal was found, --table as given); a role the
    journal needs and `roots` lacks, or whose path resolves elsewhere than recorded, is a MissingRoot."""
    for role in {ref[0] for step in journal.steps for ref in (step["a"], step["b"], *step["created"]) if ref}:
        if role not in roots or (role != "output" and canonical(roots[role]) != journal.header["roots"][role]):
            raise MissingRoot(role, journal.header["roots"][role])
    where = {role: path.rstrip("/") for role, path in roots.items()}

    def path_of(ref):
        return f"{where[ref[0]]}/{ref[1]}"

    state: dict[str, str | None] = {}  # what the planned undos will have made of a path

    def now(path: str, content: bool = False) -> str | None:
        if path in state:
            return state[path]
        if not gate.exists(path):
            return None
        if content:
            return _content(gate, path) or "?"
        return identity(gate.inside(path)) if is_local(path) else "remote"

    actions = []
    for step in reversed(journal.steps):
        a = path_of(step["a"])
        gate.inside(a)
        if step["kind"] == "new":
            if now(a, content=True) == step["digest"]:
                actions.append(("remove", a, None))
                state[a] = None
        else:
            b = path_of(step["b"])
            gate.inside(b)
            digest = step["digest"] or "remote"
            at_b, at_a = now(b), now(a)
            if at_b is not None and at_b == digest and at_a is None:
                actions.append(("move", b, a))
                state[a], state[b] = at_b, None
            elif not (at_a is not None and at_a == digest):  # neither where it went nor where it was
                raise JournalRefused(
                    f"cannot prove step {step['seq']:06d} of the commit journal is this run's: "
                    f"{b if at_b is not None else a} is not what it moved; nothing was rolled back")
        for ref in step["created"]:
            actions.append(("prune", path_of(ref), None))
    return actions


def roll_back(gate: Gate, journal: Journal, roots: dict[str, str]) -> int:
    """Undoes a killed transaction's steps as plan_roll_back decided (all or, on a refusal, none);
    returns the number of steps undone. Run again after a kill in the middle, it finishes the rest."""
    actions = plan_roll_back(gate, journal, roots)
    undone = 0
    for kind, a, b in actions:
        if kind == "move":
            gate.move(a, b)
            undone += 1
        elif kind == "remove":
            gate.remove(a)
            undone += 1
        else:
            gate.remove_empty_dirs(a, os.path.dirname(a))
    return undone
