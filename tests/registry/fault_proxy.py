"""An in-process reverse proxy in front of a real registry that injects faults and counts traffic.

Rules match on method and a path regex and fire a limited number of times: answer a status (with headers), reset
the connection halfway through a body, hang, or corrupt a response body. `intercept` lets a test serve extra routes
(a token endpoint, say) or refuse requests before they reach the registry. Every request is logged with the bytes
that went up and came back, so tests can prove that no layer bytes moved.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


@dataclass
class Rule:
    action: str  # "status" | "reset" | "hang" | "corrupt" | "relative_location"
    method: str | None = None
    path: str = ".*"
    times: int | None = 1  # None: forever
    status: int = 503
    headers: dict = field(default_factory=dict)
    body: bytes | None = None
    hang_seconds: float = 30.0
    after: int = 0  # let this many matching requests through untouched first
    fired: int = 0
    seen: int = 0

    def matches(self, method: str, path: str) -> bool:
        if (self.method is not None and self.method != method) or re.search(self.path, path) is None:
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        return self.times is None or self.fired < self.times


@dataclass
class Logged:
    method: str
    path: str
    status: int
    bytes_up: int
    bytes_down: int
    fault: str | None = None
    headers: dict = field(default_factory=dict)


class FaultProxy:
    def __init__(self, upstream_url: str, intercept: Callable | None = None):
        self.upstream = urlsplit(upstream_url).netloc
        self.rules: list[Rule] = []
        self.log: list[Logged] = []
        self.intercept = intercept
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
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True, name="fault-proxy").start()

    def add(self, action: str, **kwargs) -> Rule:
        rule = Rule(action=action, **kwargs)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def requests(self, method: str | None = None, path: str = ".*") -> list[Logged]:
        with self._lock:
            return [e for e in self.log if (method is None or e.method == method) and re.search(path, e.path)]

    # --- the proxy itself ----------------------------------------------------------------------------------------

    def _rule_for(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(method, path):
                    rule.fired += 1
                    return rule
        return None

    def _record(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        body = _read_body(handler)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        declared = handler.headers.get("Content-Length")
        if declared and len(body) < int(declared):
            # The client gave up mid-body (e.g. it caught a bad digest before sending the last bytes).
            handler.close_connection = True
            self._record(Logged(method, path, 0, len(body), 0, "client_aborted", headers))
            return
        if self.intercept is not None:
            answer = self.intercept(method, path, headers, body)
            if answer is not None:
                status, answer_headers, answer_body = answer
                self._record(Logged(method, path, status, len(body), len(answer_body), "intercepted", headers))
                _respond(handler, status, answer_headers, answer_body)
                return
        rule = self._rule_for(method, path)
        if rule and rule.action == "status":
            payload = rule.body
            if payload is None:
                payload = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "injected fault"}]}).encode()
            self._record(Logged(method, path, rule.status, len(body), len(payload), "status", headers))
            _respond(handler, rule.status, {"Content-Type": "application/json", **rule.headers}, payload)
            return
        if rule and rule.action == "hang":
            time.sleep(rule.hang_seconds)
            self._record(Logged(method, path, 0, len(body), 0, "hang", headers))
            _reset(handler)
            return
        if rule and rule.action == "reset" and method in ("PUT", "PATCH") and body:
            self._record(Logged(method, path, 0, len(body), 0, "reset", headers))
            _reset(handler)  # the upload got half way (we read it all, the client saw the reset)
            return
        upstream = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            upstream.request(
                method, path, body=body if body or method in ("PUT", "POST", "PATCH") else None, headers=headers
            )
            response = upstream.getresponse()
            payload = response.read() if method != "HEAD" else b""
            out_headers = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
            status = response.status
        finally:
            upstream.close()
        if rule and rule.action == "relative_location" and "Location" in out_headers:
            # Some registries answer relative Locations (with state in the query); clients must resolve them.
            parts = urlsplit(out_headers["Location"])
            out_headers["Location"] = parts.path + (f"?{parts.query}" if parts.query else "")
        if rule and rule.action == "corrupt" and payload:
            middle = len(payload) // 2
            payload = payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1 :]
        if rule and rule.action == "reset" and payload:
            self._record(Logged(method, path, status, len(body), len(payload) // 2, "reset", headers))
            handler.send_response(status)
            for key, value in out_headers.items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(payload[: len(payload) // 2])
            handler.wfile.flush()
            _reset(handler)
            return
        # Recorded before answering: a client that has its answer may look at the log at once.
        self._record(Logged(method, path, status, len(body), len(payload), rule.action if rule else None, headers))
        handler.send_response(status)
        for key, value in out_headers.items():
            if key.lower() != "content-length":
                handler.send_header(key, value)
        if method == "HEAD":
            handler.send_header("Content-Length", response.getheader("Content-Length", "0"))
        else:
            handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if payload:
            handler.wfile.write(payload)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    length = handler.headers.get("Content-Length")
    if length:
        return handler.rfile.read(int(length))
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                break
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        return b"".join(chunks)
    return b""


def _respond(handler: BaseHTTPRequestHandler, status: int, headers: dict, body: bytes) -> None:
    handler.send_response(status)
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD" and body:
        handler.wfile.write(body)


def _reset(handler: BaseHTTPRequestHandler) -> None:
    """Close with RST, the way a crashed proxy or load balancer drops a connection."""
    try:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
    except OSError:
        pass
    handler.close_connection = True
