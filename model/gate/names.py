"""Names and paths the gate checks: names read from users and disk that become part of a path
(check_name), manifest entries (check_relative), where an operation really lands (resolve, within,
canonical), what a file read back must be (regular_file) and which OS errors are the user's to fix
(REFUSED_ERRNOS, refusal)."""

from __future__ import annotations

import errno
import os
import re

from model.errors import UsageError

NAME_MAX = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class PathRefused(UsageError):
    """An operation on a path outside the run's roots (or a path that cannot be checked)."""


# The file system said no: permissions, an immutable or read-only file, a file where a folder must go,
# a full disk or quota, a file-size limit (ulimit -f), a name or path too long, a loop of links, too
# many links. The user's to fix, not a bug: one line, exit 2 (beam_pipelines.cli and the gate).
REFUSED_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
                            errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENAMETOOLONG, errno.ELOOP,
                            errno.EMLINK, errno.ETXTBSY, errno.ENXIO})


def refusal(exc: OSError, doing: str) -> UsageError:
    """The one line for an OS refusal met while `doing` (what, on which path)."""
    reason = exc.strerror or type(exc).__name__
    return UsageError(f"cannot {doing} ({reason}): fix the folder's permissions or space, or choose another folder")


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


def canonical(path: str) -> str:
    """The one spelling of a root or a file in one: local, absolute with every link resolved (the same
    from any working folder and through any link to it); gs://, the object name (see resolve)."""
    return os.path.realpath(os.path.abspath(path)) if is_local(path) else resolve(path)


def regular_file(path: str) -> os.stat_result:
    """The lstat of `path` when it is a regular file (not a link, FIFO, device, socket or folder): what a
    run may open for reading in a root. PathRefused otherwise; FileNotFoundError when absent."""
    import stat  # (the gate's module level is kept to a few standard modules: tests/test_architecture.py)

    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        kind = ("a link" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or socket")
        raise PathRefused(f"{path} is {kind}, not a file this tool wrote: move it away")
    return st


def _root(path: str) -> str:
    return os.path.realpath(os.path.abspath(path)) if is_local(path) else resolve(path)


def within(path: str, root: str) -> bool:
    """True when the resolved `path` lies strictly inside the resolved `root`."""
    return path != root and path.startswith(root.rstrip("/") + "/")


