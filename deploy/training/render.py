"""Fills the ${VAR} placeholders of a job template (vertex-job.yaml, k8s/train.yaml).

    python deploy/training/render.py deploy/training/vertex-job.yaml TRAIN_IMAGE=... DATA=gs://... > job.yaml

Values come from VAR=VALUE arguments, then the environment. A line ending in `# if:VAR` is
dropped when VAR is empty or 0 (optional blocks: accelerators, service account). Every
placeholder left must have a value, or nothing is printed and the exit status is 2.
"""

from __future__ import annotations

import os
import re
import sys

PLACEHOLDER = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
CONDITION = re.compile(r"#\s*if:([A-Z_][A-Z0-9_]*)\s*$")


def render(template: str, values: dict[str, str]) -> str:
    lines, missing = [], set()

    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            missing.add(name)
            return match.group(0)
        return values[name]

    for line in template.splitlines(keepends=True):
        if line.lstrip().startswith("#"):  # comments stay as written
            lines.append(line)
            continue
        cond = CONDITION.search(line)
        if cond:
            if values.get(cond.group(1), "") in ("", "0"):
                continue
            line = line[: cond.start()].rstrip() + "\n"
        lines.append(PLACEHOLDER.sub(fill, line))
    if missing:
        raise KeyError(", ".join(sorted(missing)))
    return "".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    values = dict(os.environ)
    for pair in argv[1:]:
        name, sep, value = pair.partition("=")
        if not sep:
            print(f"render: expected VAR=VALUE, got {pair!r}", file=sys.stderr)
            return 2
        values[name] = value
    with open(argv[0]) as f:
        template = f.read()
    try:
        sys.stdout.write(render(template, values))
    except KeyError as exc:
        print(f"render: no value for {exc.args[0]} (pass VAR=VALUE or set it in the environment)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
