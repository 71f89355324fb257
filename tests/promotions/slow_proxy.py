"""A pass-through HTTP proxy in front of a registry that can slow blob downloads to a trickle.

It keeps a copy in flight long enough for a test to kill the worker in the middle of it. It also takes requests in
absolute form (`GET http://host/v2/…`), as a forward proxy does, so it can stand in for the HTTP proxy in front of an
outside registry; `hosts` records the Host each request was meant for.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import requests

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authenticate"}


class SlowProxy:
    """Forwards GET and HEAD to `upstream`; while `throttled`, blob bodies flow at `bytes_per_second`."""

    def __init__(self, upstream: str, *, bytes_per_second: int = 256 * 1024):
        self.upstream = upstream.rstrip("/")
        self.bytes_per_second = bytes_per_second
        self.throttled = True
        self.hosts: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self, with_body: bool) -> None:
                proxy.hosts.append(self.headers.get("Host", ""))
                path = self.path
                if "://" in path:  # absolute form, sent to a forward proxy
                    parts = urlsplit(path)
                    path = parts.path + (f"?{parts.query}" if parts.query else "")
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"host", "proxy-connection"}
                }
                upstream = requests.request(
                    self.command, proxy.upstream + path, headers=headers, stream=True, allow_redirects=False
                )
                try:
                    self.send_response(upstream.status_code)
                    for key, value in upstream.raw.headers.items():
                        if key.lower() not in HOP_BY_HOP:
                            self.send_header(key, value)
                    self.end_headers()
                    if not with_body:
                        return
                    slow = "/blobs/" in path
                    for chunk in upstream.raw.stream(16 * 1024, decode_content=False):
                        self.wfile.write(chunk)
                        if slow and proxy.throttled:
                            time.sleep(len(chunk) / proxy.bytes_per_second)
                finally:
                    upstream.close()

            def do_GET(self):
                try:
                    self._forward(True)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_HEAD(self):
                self._forward(False)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
