"""Time and peak-memory growth of model.preprocess.preprocess on each decompression bomb of the
hostile corpus (tests/hostile_corpus.py), each in a fresh interpreter.

    python bench/decode_bomb_bench.py [ENTRY_SUBSTRING ...] [--no-peek]

--no-peek switches the header parser off, to measure OpenCV's own ceiling (OPENCV_IO_MAX_IMAGE_PIXELS,
which model.preprocess sets) as the only guard.
"""

import subprocess
import sys

CHILD = r'''
import resource, sys, time
sys.path.insert(0, "tests")
import model.preprocess as pp
import hostile_corpus as hc
entry = next(e for e in hc.CORPUS if e.path == sys.argv[1])
if "--no-peek" in sys.argv:
    pp.peek_dimensions = lambda data, fmt: None
data = entry.build()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    pp.preprocess(data, 48)
    outcome = "written"
except pp.PreprocessError as exc:
    outcome = exc.reason
seconds = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{entry.path:34} {len(data):>7} B  {outcome:14} {seconds * 1000:8.1f} ms  peak RSS +{(after - before) / 1024:7.1f} MiB")
'''


def main():
    sys.path.insert(0, "tests")
    import hostile_corpus

    wanted = [a for a in sys.argv[1:] if not a.startswith("--")]
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    for entry in hostile_corpus.CORPUS:
        if entry.bomb and (not wanted or any(w in entry.path for w in wanted)):
            r = subprocess.run([sys.executable, "-c", CHILD, entry.path, *flags], capture_output=True, text=True)
            print(r.stdout.strip() or r.stderr.strip()[-300:])


if __name__ == "__main__":
    main()
