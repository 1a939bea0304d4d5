"""Runs a command as a whole process and measures wall time and peak memory of its process tree.

Peak memory is the largest sum of RSS over the process and all its descendants, sampled every
0.2 s from /proc (multi-process runners spread memory over several processes).
"""

from __future__ import annotations

import os
import subprocess
import time


def _tree_rss_kib(root_pid: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ppid = int(fields[1])
            with open(f"/proc/{entry}/status") as f:
                kib = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except (OSError, StopIteration, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = kib
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def measure(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> dict:
    """{'seconds', 'peak_rss_mib', 'returncode', 'output'} of one run of cmd."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kib(proc.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    output = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak / 1024, 1), "returncode": proc.returncode,
            "output": output}
