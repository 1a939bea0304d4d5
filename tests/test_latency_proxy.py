"""bench/latency_proxy.py: GCS traffic through it is unchanged, and every request pays the added
latency, concurrently with the others (as against a real object store)."""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import json
import os
import sys
import time
import urllib.request

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
pytest.importorskip("gcp_storage_emulator", reason="pip install gcp-storage-emulator (dev extra)")

from _gcs_emulator import emulator  # noqa: E402
from latency_proxy import LatencyProxy, request_kind, top_folder  # noqa: E402

LATENCY_S = 0.2
BUCKET = "proxy-test"


@pytest.fixture(scope="module")
def upstream():
    with emulator() as url:
        yield url


@pytest.fixture
def proxy(upstream):
    with LatencyProxy(upstream, latency_s=0.0) as p:
        yield p


@pytest.fixture
def client(proxy, monkeypatch):
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    client = storage.Client(project="proxy-project")
    if client.lookup_bucket(BUCKET) is None:
        client.create_bucket(BUCKET)
    return client


def test_blobs_round_trip_byte_identical_through_the_proxy(client, proxy):
    from google.cloud.storage.fileio import BlobReader

    bucket = client.bucket(BUCKET)
    small, large = os.urandom(3000), os.urandom(600 * 1024 + 17)
    bucket.blob("small.bin").upload_from_string(small)  # multipart POST
    big = bucket.blob("large.bin", chunk_size=256 * 1024)  # unknown size: resumable, POST then 3 PUTs
    big.upload_from_file(io.BytesIO(large))

    assert bucket.blob("small.bin").download_as_bytes() == small
    assert bucket.blob("large.bin").download_as_bytes() == large
    assert bucket.blob("large.bin").download_as_bytes(start=1000, end=70_000) == large[1000:70_001]  # Range
    # Beam's GCS reader is a BlobReader: a metadata GET, then media GETs with a Range, one per read
    # (read() of everything is one GET; reads in steps are one GET per chunk_size).
    with BlobReader(bucket.blob("large.bin"), chunk_size=100 * 1024) as f:
        assert b"".join(iter(lambda: f.read(100 * 1024), b"")) == large
    assert [b.name for b in client.list_blobs(BUCKET)] == ["large.bin", "small.bin"]

    counts = proxy.stats()["requests"]
    assert counts["upload"] >= 4 and counts["media"] >= 3 + 7 and counts["PUT upload"] >= 3, json.dumps(counts)


def test_chunked_request_bodies_are_forwarded(client, proxy):
    body = os.urandom(50_000)
    conn = http.client.HTTPConnection(*proxy.server_address[:2], timeout=30)
    conn.request("POST", f"/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name=chunked.bin",
                 body=iter([body[:1234], body[1234:]]), encode_chunked=True,
                 headers={"Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    response.read()
    conn.close()
    assert client.bucket(BUCKET).blob("chunked.bin").download_as_bytes() == body


def _get(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        r.read()
    return time.perf_counter() - start


def test_each_request_pays_the_latency_and_concurrent_ones_pay_it_together(client, proxy):
    client.bucket(BUCKET).blob("one.bin").upload_from_string(b"x" * 100)
    media = f"{proxy.url}/download/storage/v1/b/{BUCKET}/o/one.bin?alt=media"
    proxy.latency_s = LATENCY_S
    assert _get(media) >= LATENCY_S

    n = 16
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        each = list(pool.map(_get, [media] * n))
    elapsed = time.perf_counter() - start
    assert min(each) >= LATENCY_S
    assert elapsed < n * LATENCY_S / 4, f"{n} concurrent requests took {elapsed:.2f} s: serialized?"


def test_control_requests_set_latency_and_report_counts(proxy):
    request = urllib.request.Request(f"{proxy.url}/_proxy/config?latency_ms=5&reset=1", method="POST")
    assert json.load(urllib.request.urlopen(request)) == {"latency_ms": 5.0, "requests": {}, "spans_s": {}}
    assert proxy.latency_s == 0.005
    urllib.request.urlopen(f"{proxy.url}/storage/v1/b/{BUCKET}/o").read()
    stats = json.load(urllib.request.urlopen(f"{proxy.url}/_proxy/stats"))
    assert stats["requests"] == {"GET json": 1, "json": 1, "total": 1} and stats["spans_s"] == {"json": 0.0}


def test_request_kinds():
    assert request_kind("GET", "/download/storage/v1/b/b/o/x?alt=media") == "media"
    assert request_kind("GET", "/storage/v1/b/b/o/x?alt=media&generation=1") == "media"
    assert request_kind("GET", "/storage/v1/b/b/o/x") == "json"
    assert request_kind("PUT", "/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=1") == "upload"


def test_top_folder():
    assert top_folder("/download/storage/v1/b/b/o/raw/a/x.png?alt=media") == "raw"
    assert top_folder("/storage/v1/b/b/o/raw%2Fa%2Fx.png?projection=noAcl") == "raw"
    assert top_folder("/storage/v1/b/b/o/stats.json") is None
    assert top_folder("/storage/v1/b/b/o?prefix=raw%2F") is None
