"""A local HTTP file server for the download tests (127.0.0.1 only, started inside the test).

Serves in-memory files with `Range: bytes=N-` support (206 + Content-Range, 416 past the end). Switches:
`cut_after[path] = N` sends the full Content-Length but closes the connection after N bytes, on the first
request for that path only; `cut_every[path] = N` does so on every request; `no_length` (a set of paths)
sends no Content-Length and ends the body by closing the connection; `redirects[path] = url` answers 302
to `url`; `ignore_range` answers every request with 200 and the whole file. Every request is logged as
(path, Range header or None, status).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FileServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}
        self.cut_every: dict[str, int] = {}
        self.no_length: set[str] = set()
        self.redirects: dict[str, str] = {}
        self.ignore_range = False
        self.log: list[tuple[str, str | None, int]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                if path in server.redirects:
                    server._record(path, rng, 302)
                    self.send_response(302)
                    self.send_header("Location", server.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(path)
                if data is None:
                    return self._reply(path, rng, 404, b"not found")
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        server._record(path, rng, 416)
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = data[start:]
                status = 206 if start else 200
                cut = None
                with server._lock:
                    if path in server.cut_after:
                        cut = server.cut_after.pop(path)  # first request only
                    elif path in server.cut_every:
                        cut = server.cut_every[path]
                server._record(path, rng, status)  # before replying: the log is complete when the client sees it
                self.send_response(status)
                if path in server.no_length:
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _reply(self, path, rng, status, body):
                server._record(path, rng, status)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def _record(self, path, rng, status):
        with self._lock:
            self.log.append((path, rng, status))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url(path)


@pytest.fixture
def file_server():
    server = FileServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


@pytest.fixture
def other_server():
    """A second server: another origin (another port) than `file_server`."""
    server = FileServer()
    server.thread.start()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()
