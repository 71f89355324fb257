"""A streaming reverse proxy for the benchmark: counts the bytes each way and can cut one blob download part way.

Unlike the tests' fault proxy it never holds a body in memory (a 1 GiB layer passes through in 1 MiB pieces), and
it can refuse cross-repository mounts, the way ECR without BLOB_MOUNTING, Artifactory or Harbor do.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PIECE = 1 << 20
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}


class StreamingProxy:
    """`cut_blob_at`: the share of the first blob GET over `cut_min_bytes` sent before the connection is reset (once).
    `refuse_mounts`: answer 405 to `POST …/blobs/uploads/?mount=`. Counters: blob bytes down (GET) and up (PUT, PATCH
    of uploads; manifests are not counted), as they flow, so a transfer broken off counts what it moved.
    """

    def __init__(
        self, upstream_url: str, *, cut_blob_at: float | None = None, cut_min_bytes: int = 0, refuse_mounts=False
    ):
        self.upstream = urlsplit(upstream_url).netloc
        self.cut_blob_at, self.cut_min_bytes, self.refuse_mounts = cut_blob_at, cut_min_bytes, refuse_mounts
        self.blob_bytes_down = self.bytes_up = self.mounts_refused = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                proxy._handle(self)

            do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET  # noqa: N815

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _count(self, attribute: str, n: int) -> None:
        with self._lock:
            setattr(self, attribute, getattr(self, attribute) + n)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        if self.refuse_mounts and method == "POST" and "mount=" in path:
            self._count("mounts_refused", 1)
            handler.send_response(405)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        length = int(handler.headers.get("Content-Length") or 0)
        upstream = http.client.HTTPConnection(self.upstream, timeout=120)
        try:
            upstream.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for key, value in headers.items():
                upstream.putheader(key, value)
            if length or method in ("PUT", "POST", "PATCH"):
                upstream.putheader("Content-Length", str(length))
            upstream.endheaders()
            left = length
            blob_upload = method in ("PUT", "PATCH") and "/blobs/uploads/" in path
            while left > 0:
                piece = handler.rfile.read(min(PIECE, left))
                if not piece:
                    return  # the client gave up mid-body: what it sent so far is counted
                upstream.send(piece)
                left -= len(piece)
                if blob_upload:
                    self._count("bytes_up", len(piece))
            response = upstream.getresponse()
            handler.send_response(response.status)
            declared = response.getheader("Content-Length")
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    handler.send_header(key, value)
            handler.send_header("Content-Length", declared or "0")
            handler.end_headers()
            if method == "HEAD":
                return
            size = int(declared or 0)
            blob = method == "GET" and re.search(r"/blobs/sha256:", path) is not None
            cut = None
            if blob and self.cut_blob_at is not None and size >= self.cut_min_bytes:
                cut, self.cut_blob_at = int(size * self.cut_blob_at), None
            sent = 0
            while sent < size:
                piece = response.read(min(PIECE, size - sent if cut is None else min(size, cut) - sent))
                if not piece:
                    break
                handler.wfile.write(piece)
                sent += len(piece)
                if blob:
                    self._count("blob_bytes_down", len(piece))
                if cut is not None and sent >= cut:
                    handler.wfile.flush()
                    _reset(handler)
                    return
        finally:
            upstream.close()


def _reset(handler: BaseHTTPRequestHandler) -> None:
    try:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
    except OSError:
        pass
    handler.close_connection = True
