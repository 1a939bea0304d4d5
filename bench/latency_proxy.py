"""An HTTP proxy that adds a fixed latency to every request, to make a local GCS emulator answer
like an object store (tens of milliseconds per small read). Standard library only.

    python bench/latency_proxy.py --upstream http://127.0.0.1:9023 --port 9024 --latency-ms 20
    STORAGE_EMULATOR_HOST=http://127.0.0.1:9024 emotion ingest --input gs://bucket/raw ...

Every request is forwarded unchanged (method, path and query, headers, body) after sleeping the
latency; the proxy serves each connection on its own thread, so concurrent requests pay the latency
in parallel, as they do against a real object store. The Host header is kept, so the emulator's
resumable-upload Location URLs point back at the proxy. A chunked request body is de-chunked and
sent with a Content-Length (the emulator reads bodies by length); responses are buffered and sent
with a Content-Length, which keeps client connections alive.

The proxy counts what it forwards, by kind of request (`media` downloads, `upload`s, `json` API
calls such as metadata reads and listings), also by the top folder of the object named (`media:raw`),
and when the first and last of each arrived; it answers two requests itself:
GET /_proxy/stats (those counts, JSON) and POST /_proxy/config?latency_ms=N[&reset=1].
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Connection-level headers: they describe one hop, never forwarded (RFC 9110 7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
              "te", "trailer", "transfer-encoding", "upgrade"}
CONTROL_PREFIX = "/_proxy/"


def request_kind(method: str, path: str) -> str:
    """'media' (an object's bytes), 'upload' (bytes sent), or 'json' (metadata, listing, delete...)."""
    parsed = urllib.parse.urlsplit(path)
    if parsed.path.startswith("/upload/"):
        return "upload"
    if method in ("GET", "HEAD") and urllib.parse.parse_qs(parsed.query).get("alt") == ["media"]:
        return "media"
    if parsed.path.startswith("/download/"):
        return "media"
    return "json"


def top_folder(path: str) -> str | None:
    """The first path segment of the object a request names (`raw` for .../o/raw%2Fa.png), if any."""
    route = urllib.parse.urlsplit(path).path
    if "/o/" not in route:
        return None
    name = urllib.parse.unquote(route.split("/o/", 1)[1])
    return name.split("/", 1)[0] if "/" in name else None


class LatencyProxy(ThreadingHTTPServer):
    """The proxy server; `start()` serves it on a daemon thread, `url` is what clients point at."""

    daemon_threads = True
    request_queue_size = 256  # many readers connect at once

    def __init__(self, upstream: str, latency_s: float = 0.0, host: str = "127.0.0.1", port: int = 0):
        super().__init__((host, port), _Handler)
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname, parsed.port or 80)
        self.latency_s = latency_s
        self._lock = threading.Lock()
        self._counts: collections.Counter = collections.Counter()
        self._first: dict[str, float] = {}  # kind -> monotonic time of the first and the last request
        self._last: dict[str, float] = {}
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, method: str, kind: str, folder: str | None = None) -> None:
        """One request; also counted (and timed) as `kind:folder` when it names an object in a folder."""
        now = time.monotonic()
        keys = [kind] + ([f"{kind}:{folder}"] if folder else [])
        with self._lock:
            self._counts[f"{method} {kind}"] += 1
            self._counts["total"] += 1
            for key in keys:
                self._counts[key] += 1
                self._first.setdefault(key, now)
                self._last[key] = now

    def stats(self) -> dict:
        """Requests forwarded since the last reset, by method and kind, and per kind the seconds from
        the first such request to the last (for media GETs: how long reading the images took)."""
        with self._lock:
            return {"latency_ms": round(self.latency_s * 1000, 3), "requests": dict(self._counts),
                    "spans_s": {k: round(self._last[k] - self._first[k], 3) for k in self._first}}

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._first.clear()
            self._last.clear()

    def start(self) -> "LatencyProxy":
        self._thread = threading.Thread(target=self.serve_forever, name="latency-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> "LatencyProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive to clients; every response carries a Content-Length
    server: LatencyProxy

    def log_message(self, format, *args):  # one line per request would drown the benchmark's output
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailer fields
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response_only(status)
        head = self.command == "HEAD"  # no body: the upstream's Content-Length is passed on as it is
        for name, value in headers:
            if name.lower() not in HOP_BY_HOP and (head or name.lower() != "content-length"):
                self.send_header(name, value)
        if not head:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _control(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        if parsed.path == CONTROL_PREFIX + "config" and self.command == "POST":
            if "latency_ms" in query:
                self.server.latency_s = float(query["latency_ms"][0]) / 1000
            if query.get("reset") == ["1"]:
                self.server.reset()
        elif not (parsed.path == CONTROL_PREFIX + "stats" and self.command == "GET"):
            self._reply(404, [("Content-Type", "text/plain")], b"unknown proxy control request\n")
            return
        self._reply(200, [("Content-Type", "application/json")], json.dumps(self.server.stats()).encode())

    def _forward(self) -> None:
        body = self._body()
        if self.path.startswith(CONTROL_PREFIX):
            self._control()
            return
        self.server.count(self.command, request_kind(self.command, self.path), top_folder(self.path))
        if self.server.latency_s > 0:
            time.sleep(self.server.latency_s)  # this thread only: concurrent requests wait in parallel
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        else:
            headers.pop("Content-Length", None)
        # A fresh upstream connection per request: the emulator serves one connection at a time,
        # so a kept-alive connection held by one thread would stall all the others.
        headers["Connection"] = "close"
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body if body or "Content-Length" in headers else None,
                             headers=headers)
            response = upstream.getresponse()
            data = response.read()
            self._reply(response.status, response.getheaders(), data)
        except OSError as exc:
            self._reply(502, [("Content-Type", "text/plain")], f"proxy: upstream failed: {exc}\n".encode())
        finally:
            upstream.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _forward


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="the emulator's URL, e.g. http://127.0.0.1:9023")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed on start)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="added to every request")
    a = p.parse_args(argv)
    proxy = LatencyProxy(a.upstream, a.latency_ms / 1000, a.host, a.port)
    print(f"latency proxy {proxy.url} -> {a.upstream} (+{a.latency_ms:g} ms per request)", flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.server_close()


if __name__ == "__main__":
    main()
