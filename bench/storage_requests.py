"""Storage requests per image on gs://: ingest (both --shuffle modes) and predict against a local GCS
emulator, every request the pipelines send counted by kind (list, read, metadata, write, copy,
delete, ...) and by what it touches (the input images, ingest's spill, the outputs).

    PYTHONPATH=bench .venv/bin/python bench/storage_requests.py --limit 300
    PYTHONPATH=bench .venv/bin/python bench/storage_requests.py --images beam_pipelines/sample/faces --limit 0

An image archive (`--limit` images of --images, spread over its splits and classes; 0: all) is
uploaded to the emulator once. Then `emotion ingest --shuffle spill`, `emotion ingest --shuffle
records` and `emotion predict` (on the raw images; --predict-tfrecords: also on the records ingest
wrote) run as whole processes (the DirectRunner, in-process) against gs://, through a counting
proxy (bench/latency_proxy.py, no added latency) that looks into each request: a JSON-API batch
(Beam deletes and renames in batches of up to 100) counts once per operation inside it, as the
object store bills it.

Kinds: `list` (an object listing page), `read` (an object's bytes), `metadata` (an object's or
bucket's metadata), `write` (an upload: one per object, however many requests it takes; `write_part`
counts the extra requests of a resumable upload), `copy` (rewrite/copy: a rename is a copy and a
delete), `delete`, `other`. Areas: `input` (under the archive's prefix), `spill` (ingest's
<staging>/.spill/), `output` (everything else the run writes or reads back), `bucket` (the bucket's
metadata: google-cloud-storage fetches it once per client, and Beam's gs:// filesystem makes a
client per file it opens).

Many shards on a small corpus (--num-shards, with a small --files-per-batch) spread each batch over
many shards as a large archive does (a 10 M-image archive: ~750 shards, a batch of 256 files over
~217 of them), so the spill's requests per image are those of the large run.

The spill's share is what --shuffle spill costs on an object store and --shuffle records does not;
on the DirectRunner the two modes otherwise send the same requests. Printed: requests per image
per kind and area for each run, as JSON and a table; the cost model that uses them is in
README.md's sizing section.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse

from _gcs_emulator import emulator
from latency_proxy import LatencyProxy, _Handler

BENCH = os.path.dirname(os.path.abspath(__file__))
BUCKET = "bench"
PROJECT = "bench-project"
INPUT_PREFIX = "raw"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
SUB_REQUEST = re.compile(rb"^(GET|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.1", re.MULTILINE)


# --------------------------------------------------------------------------- classifying requests


def object_name(path: str) -> str | None:
    """The object a JSON-API or upload path names (…/o/<name>[/rewriteTo/…]), or None."""
    route = urllib.parse.urlsplit(path).path
    if "/o/" not in route:
        return None
    name = route.split("/o/", 1)[1]
    for action in ("/rewriteTo/", "/copyTo/", "/compose"):
        name = name.split(action, 1)[0]
    return urllib.parse.unquote(name)


def request_kind(method: str, path: str) -> str:
    parsed = urllib.parse.urlsplit(path)
    query = urllib.parse.parse_qs(parsed.query)
    route = parsed.path
    if route.startswith("/upload/"):
        # A resumable upload: the POST that opens it is the write, each PUT a part of it.
        return "write_part" if method == "PUT" or "upload_id" in query else "write"
    if route.startswith("/download/") or query.get("alt") == ["media"]:
        return "read"
    if "/rewriteTo/" in route or "/copyTo/" in route or route.endswith("/compose"):
        return "copy"
    if method == "DELETE":
        return "delete"
    if method == "GET" and re.search(r"/b/[^/]+/o/?$", route):
        return "list"
    if method in ("GET", "HEAD"):
        return "metadata"
    if method in ("PATCH", "PUT"):
        return "metadata_write"
    return "other"


def area_of_name(name: str) -> str:
    if name.startswith(INPUT_PREFIX + "/"):
        return "input"
    if "/.spill/" in name or name.endswith("/.spill"):
        return "spill"
    return "output" if name else "other"


def area(path: str, body: bytes = b"") -> str:
    """input, spill, output or bucket: what the request touches (a listing: its prefix; an upload:
    the name in its query or its metadata)."""
    parsed = urllib.parse.urlsplit(path)
    if re.fullmatch(r"/storage/v1/b/[^/]+/?", parsed.path):
        return "bucket"  # the bucket's metadata (google-cloud-storage fetches it per client)
    name = object_name(path)
    if name is None:
        query = urllib.parse.parse_qs(parsed.query)
        name = (query.get("prefix") or query.get("name") or [""])[0]
    if not name and parsed.path.startswith("/upload/"):
        found = re.search(rb'"name"\s*:\s*"((?:[^"\\]|\\.)*)"', body)
        name = json.loads(b'"' + found.group(1) + b'"') if found else ""
    return area_of_name(name)


class CountingProxy(LatencyProxy):
    """latency_proxy.LatencyProxy that also counts each operation by (kind, area), batches opened up."""

    def __init__(self, upstream: str):
        super().__init__(upstream)
        self.RequestHandlerClass = _CountingHandler
        self.operations: collections.Counter = collections.Counter()
        self.upload_areas: dict[str, str] = {}  # a resumable upload's id -> the area of its object
        self.ops_lock = threading.Lock()

    def count_operation(self, kind: str, where: str) -> None:
        with self.ops_lock:
            self.operations[(kind, where)] += 1

    def take(self) -> dict:
        """The operations counted since the last take, as {kind: {area: n}}; then resets them."""
        with self.ops_lock:
            out: dict = {}
            for (kind, where), n in sorted(self.operations.items()):
                out.setdefault(kind, {})[where] = n
            self.operations.clear()
        self.reset()
        return out


class _CountingHandler(_Handler):
    server: CountingProxy
    _upload_area: str | None = None

    def _body(self) -> bytes:
        body = super()._body()
        self._upload_area = None
        if self.path.startswith("/_proxy/"):
            return body
        if urllib.parse.urlsplit(self.path).path.startswith("/batch/"):
            for method, path in SUB_REQUEST.findall(body):  # each operation of a batch is billed
                self.server.count_operation(request_kind(method.decode(), path.decode()), area(path.decode()))
            return body
        kind = request_kind(self.command, self.path)
        where = area(self.path, body)
        if kind == "write_part":
            upload_id = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("upload_id", [""])[0]
            where = self.server.upload_areas.get(upload_id, where)
        elif kind == "write":
            self._upload_area = where
        self.server.count_operation(kind, where)
        return body

    def _reply(self, status, headers, body):
        if self._upload_area is not None:  # a resumable upload opened: its parts go where it goes
            for name, value in headers:
                if name.lower() == "location":
                    upload_id = urllib.parse.parse_qs(urllib.parse.urlsplit(value).query).get("upload_id", [""])[0]
                    self.server.upload_areas[upload_id] = self._upload_area
        super()._reply(status, headers, body)


# --------------------------------------------------------------------------- the runs


def pick_images(root: str, limit: int) -> list[str]:
    found = sorted(os.path.relpath(os.path.join(d, f), root)
                   for d, _, files in os.walk(root) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        sys.exit(f"no images under {root}")
    if not limit:
        return found
    step = max(1, len(found) // limit)
    return found[::step][:limit]


def upload(root: str, names: list[str], client) -> None:
    bucket = client.bucket(BUCKET)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: bucket.blob(f"{INPUT_PREFIX}/{n}").upload_from_filename(os.path.join(root, n)), names))


def run_stage(args: list[str], env: dict) -> float:
    """Runs one stage as its own process; its wall seconds."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "beam_pipelines.cli", *args, "--quiet", "--runner", "DirectRunner"]
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return round(time.perf_counter() - start, 1)


def per_image(counts: dict, images: int, seconds: float) -> dict:
    rows = {kind: {where: round(n / images, 3) for where, n in areas.items()} for kind, areas in counts.items()}
    total = sum(n for areas in counts.values() for n in areas.values())
    return {"seconds": seconds, "per_image": rows, "total_per_image": round(total / images, 3), "operations": counts}


def table(results: dict) -> str:
    kinds = sorted({k for r in results.values() for k in r["per_image"]})
    lines = ["| run | " + " | ".join(kinds) + " | total |", "|---|" + "---:|" * (len(kinds) + 1)]
    for run, r in results.items():
        cells = []
        for kind in kinds:
            areas = r["per_image"].get(kind, {})
            cells.append(" + ".join(f"{v:g} {a}" for a, v in sorted(areas.items())) or "0")
        lines.append(f"| {run} | " + " | ".join(cells) + f" | {r['total_per_image']:g} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default="/tmp/fer2013", help="image root (<split>/<class>/* or <class>/*)")
    p.add_argument("--limit", type=int, default=300, help="images uploaded (0: all)")
    p.add_argument("--files-per-batch", type=int, default=256, help="files per work item (the stages' default)")
    p.add_argument("--num-shards", type=int, default=0,
                   help="ingest's --num-shards (0: from the data size); many shards on a small corpus spread a "
                        "batch over many shards, as a large archive does")
    p.add_argument("--predict-tfrecords", action="store_true", help="also predict on the records ingest wrote")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args()
    names = pick_images(a.images, a.limit)
    results = {}
    with emulator() as emulator_url, CountingProxy(emulator_url) as proxy:
        # Uploaded through the proxy: the emulator keeps each object's mediaLink from the upload's Host.
        os.environ["STORAGE_EMULATOR_HOST"] = proxy.url
        os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
        from google.cloud import storage

        client = storage.Client(project=PROJECT)
        client.create_bucket(BUCKET)
        upload(a.images, names, client)
        n = len(names)
        proxy.take()
        env = {"PYTHONPATH": os.pathsep.join([os.path.join(BENCH, "_anonymous_gcs"),
                                              *filter(None, [os.environ.get("PYTHONPATH")])])}
        source = f"gs://{BUCKET}/{INPUT_PREFIX}"
        batch = ["--files-per-batch", str(a.files_per_batch)]
        for mode in ("spill", "records"):
            seconds = run_stage(["ingest", "--input", source, "--output", f"gs://{BUCKET}/ingest-{mode}", "--shuffle", mode,
                       "--num-shards", str(a.num_shards), *batch], env)
            results[f"ingest --shuffle {mode}"] = per_image(proxy.take(), n, seconds)
            print(f"ingest --shuffle {mode}: {results[f'ingest --shuffle {mode}']['total_per_image']} requests/image "
                  f"({seconds} s)", file=sys.stderr)
        stats = {mode: json.loads(client.bucket(BUCKET).blob(f"ingest-{mode}/stats.json").download_as_bytes())
                 for mode in ("spill", "records")}
        assert stats["spill"]["fingerprint"] == stats["records"]["fingerprint"], stats
        proxy.take()
        predictions = [("predict (images)", source)]
        if a.predict_tfrecords:
            predictions.append(("predict (tfrecords)", f"gs://{BUCKET}/ingest-records"))
        for label, source_of in predictions:
            seconds = run_stage(["predict", "--input", source_of, "--output", f"gs://{BUCKET}/pred-{len(results)}", *batch], env)
            results[label] = per_image(proxy.take(), n, seconds)
            print(f"{label}: {results[label]['total_per_image']} requests/image ({seconds} s)", file=sys.stderr)
    out = {"images": n, "written": stats["spill"]["totals"]["written"], "files_per_batch": a.files_per_batch,
           "num_shards": stats["spill"]["num_shards"], "runs": results}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))
    print()
    print(table(results))


if __name__ == "__main__":
    main()
