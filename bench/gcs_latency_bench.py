"""Object-store latency benchmark: ingest and predict over gs:// on a local GCS emulator, behind a
proxy that adds a fixed latency to every request, at 0, 20 and 50 ms per request.

    tar xzf /work/shared/data/fer2013.tar.gz -C /tmp   # once, if /tmp/fer2013 is missing
    PYTHONPATH=bench .venv/bin/python bench/gcs_latency_bench.py --limit 600

An image archive (`--limit` FER2013 images, spread evenly over splits and classes) is uploaded to
the emulator once. Then for each latency and each DirectRunner mode, `emotion ingest` and
`emotion predict` run as whole processes (bench/_measure.py: wall time and peak memory of the
process tree) against gs://bench/raw, through the proxy (bench/latency_proxy.py, its own process).

- mp2: --direct_running_mode multi_processing --direct_num_workers 2 (one reader per worker process);
- mt8: --direct_running_mode multi_threading --direct_num_workers 8 (8 readers in one process).

Reported per run: images/s over the whole process (start-up included), images/s over the read
phase (first to last image download seen by the proxy: start-up excluded), peak MiB, and requests
per image of the input (`media:raw`, `json:raw`: each pays the latency once) and in all. Work items hold --files-per-batch files,
so a small archive still gives every reader work (the stages' default is 256).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
import urllib.request

from _gcs_emulator import emulator, free_port, wait_for
from _measure import measure

BENCH = os.path.dirname(os.path.abspath(__file__))
BUCKET = "bench"
PROJECT = "bench-project"
MODES = {
    "mp2": ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"],
    "mt8": ["--direct_running_mode", "multi_threading", "--direct_num_workers", "8"],
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def pick_images(root: str, limit: int) -> list[str]:
    """`limit` image paths relative to root, every k-th of the sorted listing (all splits and classes)."""
    found = sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, files in os.walk(root) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not found:
        sys.exit(f"no images under {root}: tar xzf /work/shared/data/fer2013.tar.gz -C /tmp")
    step = max(1, len(found) // limit)
    return found[::step][:limit]


def upload(root: str, names: list[str], client) -> int:
    bucket = client.bucket(BUCKET)

    def put(name: str) -> int:
        bucket.blob(f"raw/{name}").upload_from_filename(os.path.join(root, name))
        return 1

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return sum(pool.map(put, names))


def proxy_call(url: str, path: str, post: bool = False) -> dict:
    request = urllib.request.Request(url + path, method="POST" if post else "GET")
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


def run_stage(stage: str, out: str, mode: str, proxy_url: str, env: dict, args) -> dict:
    cmd = [sys.executable, "-m", "beam_pipelines.cli", stage, "--input", f"gs://{BUCKET}/raw", "--output", out,
           "--files-per-batch", str(args.files_per_batch), "--runner", "DirectRunner", *MODES[mode]]
    r = measure(cmd, env=env)
    return {"seconds": r["seconds"], "peak_rss_mib": r["peak_rss_mib"],
            **proxy_call(proxy_url, "/_proxy/stats")}


def summarize(images: int, run: dict) -> dict:
    requests, spans = run["requests"], run["spans_s"]
    read_s = spans.get("media:raw", 0.0)  # first to last download of an input image
    return {
        "seconds": run["seconds"],
        "images_per_s": round(images / run["seconds"], 1),
        "read_phase_s": round(read_s, 2),
        "read_images_per_s": round(images / read_s, 1) if read_s else None,
        "peak_rss_mib": run["peak_rss_mib"],
        # Per file open, Beam's reader sends a metadata GET (blob.reload) then a media GET, one after the
        # other; google-cloud-storage also fetches the bucket's metadata in a background thread, once
        # per client, and Beam's gs:// filesystem makes a new client per open.
        "media_gets_per_image": round(requests.get("media:raw", 0) / images, 2),
        "metadata_gets_per_image": round(requests.get("json:raw", 0) / images, 2),
        "requests_per_image": round(requests.get("total", 0) / images, 2),
        "requests": requests,
    }


def markdown(rows: list[dict]) -> str:
    lines = ["| latency ms | mode | ingest img/s (process) | ingest img/s (read phase) | predict img/s (process) "
             "| predict img/s (read phase) | peak MiB ingest / predict | input requests per image: media + metadata |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        i, p = r["ingest"], r["predict"]
        lines.append(
            f"| {r['latency_ms']} | {r['mode']} | {i['images_per_s']} | {i['read_images_per_s']} | {p['images_per_s']} "
            f"| {p['read_images_per_s']} | {i['peak_rss_mib']:.0f} / {p['peak_rss_mib']:.0f} "
            f"| {i['media_gets_per_image']} + {i['metadata_gets_per_image']} |"
        )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default="/tmp/fer2013", help="image root (<split>/<class>/*)")
    p.add_argument("--limit", type=int, default=3000, help="images uploaded")
    p.add_argument("--latencies", default="0,20,50", help="added ms per request, comma-separated")
    p.add_argument("--modes", default=",".join(MODES), help=f"DirectRunner modes: {', '.join(MODES)}")
    p.add_argument("--files-per-batch", type=int, default=16, help="files per work item of both stages")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    latencies = [float(x) for x in args.latencies.split(",")]
    modes = args.modes.split(",")
    names = pick_images(args.images, args.limit)

    with emulator() as emulator_url:
        proxy_url = f"http://127.0.0.1:{free_port()}"
        proxy = subprocess.Popen([sys.executable, os.path.join(BENCH, "latency_proxy.py"), "--upstream", emulator_url,
                                  "--port", proxy_url.rsplit(":", 1)[1]], stdout=subprocess.DEVNULL)
        try:
            wait_for(proxy_url + "/_proxy/stats", proxy)
            # Uploaded through the proxy (at 0 ms): the emulator stores each object's mediaLink from
            # the upload's Host, and downloads follow the mediaLink.
            os.environ["STORAGE_EMULATOR_HOST"] = proxy_url
            os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
            from google.cloud import storage

            client = storage.Client(project=PROJECT)
            client.create_bucket(BUCKET)
            start = time.perf_counter()
            n = upload(args.images, names, client)
            print(f"uploaded {n} images to gs://{BUCKET}/raw in {time.perf_counter() - start:.1f} s", file=sys.stderr)
            env = {
                "STORAGE_EMULATOR_HOST": proxy_url,
                "GOOGLE_CLOUD_PROJECT": PROJECT,
                # Beam's gs:// client in every process: anonymous at once (see the module's docstring).
                "PYTHONPATH": os.pathsep.join(
                    [os.path.join(BENCH, "_anonymous_gcs"), *filter(None, [os.environ.get("PYTHONPATH")])]),
            }
            rows = []
            for latency in latencies:
                for mode in modes:
                    row = {"latency_ms": latency, "mode": mode}
                    for stage, prefix in (("ingest", "out"), ("predict", "pred")):
                        proxy_call(proxy_url, f"/_proxy/config?latency_ms={latency}&reset=1", post=True)
                        out = f"gs://{BUCKET}/{prefix}-{latency:g}ms-{mode}"
                        run = run_stage(stage, out, mode, proxy_url, env, args)
                        row[stage] = summarize(n, run)
                        print(f"{latency:g} ms {mode} {stage}: {row[stage]['seconds']} s, "
                              f"{row[stage]['read_images_per_s']} img/s in the read phase", file=sys.stderr)
                    stats = json.loads(client.bucket(BUCKET).blob(f"out-{latency:g}ms-{mode}/stats.json")
                                       .download_as_bytes())
                    assert stats["totals"]["matched"] == n and "unreadable" not in stats["rejected"], stats
                    rows.append(row)
        finally:
            proxy.terminate()
            proxy.wait(10)

    result = {"images": n, "files_per_batch": args.files_per_batch, "cpus": os.cpu_count(), "runs": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print()
    print(markdown(rows))


if __name__ == "__main__":
    main()
