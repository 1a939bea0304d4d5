"""Names and paths the gate checks: names read from users and disk that become part of a path
(check_name), manifest entries (check_relative), and where an operation really lands (resolve, within)."""

from __future__ import annotations

import os
import re

from model.errors import UsageError

NAME_MAX = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class PathRefused(UsageError):
    """An operation on a path outside the run's roots (or a path that cannot be checked)."""


# =========================================================================== names


def name_problem(value) -> str | None:
    """Why `value` cannot be a name that becomes part of a path, or None when it can."""
    if not isinstance(value, str):
        return f"a name must be a string, not {type(value).__name__}"
    if not value or len(value) > NAME_MAX or not _NAME.fullmatch(value):
        return (f"a name is 1 to {NAME_MAX} letters, digits, '.', '_' and '-', starting with a letter or a "
                "digit")
    return None


def check_name(value, what: str) -> str:
    """`value` when it is a safe name (run id, model version, ...); otherwise a UsageError naming `what`."""
    problem = name_problem(value)
    if problem:
        shown = repr(value) if not isinstance(value, str) or len(value) <= 60 else repr(value[:60]) + "..."
        raise UsageError(f"{what} {shown} cannot name a folder: {problem}")
    return value


def relative_problem(rel) -> str | None:
    """Why `rel` is not a plain relative path (as a manifest lists), or None."""
    if not isinstance(rel, str) or not rel:
        return "not a non-empty string"
    if rel.startswith("/") or "\\" in rel or "://" in rel or any(ord(c) < 32 for c in rel):
        return "not a relative path"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "has an empty, '.' or '..' part"
    return None


def check_relative(rel, what: str) -> str:
    problem = relative_problem(rel)
    if problem:
        raise UsageError(f"{what}: entry {str(rel)[:80]!r} {problem}; it was not written by this pipeline "
                         "(move the folder away or choose another one)")
    return rel


# =========================================================================== paths


def is_local(path: str) -> bool:
    return "://" not in path


def resolve(path: str) -> str:
    """The path an operation on `path` acts on: local, the real path of its folder plus its own name
    (a link is not followed: removing it removes the link); gs://, the object name as given."""
    if is_local(path):
        absolute = os.path.abspath(path)
        if absolute == "/":
            return absolute
        parent, name = os.path.split(absolute)
        return os.path.join(os.path.realpath(parent), name)
    scheme, _, rest = path.partition("://")
    parts = rest.rstrip("/").split("/")
    if not parts[0] or any(part in (".", "..") for part in parts[1:]):
        raise PathRefused(f"{path}: an object path with an empty bucket or a '.' or '..' part")
    return f"{scheme}://{'/'.join(parts)}"


def _root(path: str) -> str:
    return os.path.realpath(os.path.abspath(path)) if is_local(path) else resolve(path)


def within(path: str, root: str) -> bool:
    """True when the resolved `path` lies strictly inside the resolved `root`."""
    return path != root and path.startswith(root.rstrip("/") + "/")


