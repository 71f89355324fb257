"""An in-process reverse proxy in front of a real registry that injects faults and counts traffic.

Rules match on method and a path regex and fire a limited number of times: answer a status (with headers), reset
the connection halfway through a body, hang, corrupt a response body, or flood the client with an endless body.
`intercept` lets a test serve extra routes (a token endpoint, say) or refuse requests before they reach the registry.
Every request is logged with the bytes that went up and came back, so tests can prove that no layer bytes moved.

Hostile answers (an index naming one child hundreds of times, a huge error page, a redirect or a token realm aimed
at a host the client must not reach) are built with `hostile_index`, `flood` and `redirect`. With `tls`, the proxy
answers HTTPS and plain HTTP on the same port, as a registry host reachable both ways would.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
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
    action: str  # "status" | "reset" | "hang" | "corrupt" | "relative_location" | "flood" | "ignore_range"
    method: str | None = None
    path: str = ".*"
    times: int | None = 1  # None: forever
    status: int = 503
    headers: dict = field(default_factory=dict)
    body: bytes | None = None
    hang_seconds: float = 30.0
    after: int = 0  # let this many matching requests through untouched first
    flood_bytes: int = 0  # "flood": how long the (chunked, undeclared) body would be if the client read it all
    cut_at: float = 0.5  # "reset" of a response: the share of the body sent before the connection drops
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
    tls: bool = False


class FaultProxy:
    def __init__(self, upstream_url: str, intercept: Callable | None = None, tls: tuple[str, str] | None = None):
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

        context = None
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
        self.httpd = _EitherProtocolServer(("127.0.0.1", 0), Handler, context)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self.plain_url = f"http://{self.host}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True, name="fault-proxy").start()

    def add(self, action: str, **kwargs) -> Rule:
        rule = Rule(action=action, **kwargs)
        with self._lock:
            self.rules.append(rule)
        return rule

    def flood(
        self,
        *,
        method: str | None = None,
        path: str = ".*",
        status: int = 500,
        content_type: str,
        size: int = 64 * 1024 * 1024,
        times: int | None = None,
    ) -> Rule:
        """Answer with an endless-looking body (chunked, no length) of `size` bytes; the log records what was sent
        before the client hung up."""
        return self.add(
            "flood",
            method=method,
            path=path,
            status=status,
            headers={"Content-Type": content_type},
            flood_bytes=size,
            times=times,
        )

    def redirect(self, *, method: str | None = "GET", path: str = ".*", to: str, times: int | None = None) -> Rule:
        """Answer 307 to `to` (a storage host, a cloud metadata address, …)."""
        return self.add("status", method=method, path=path, status=307, headers={"Location": to}, body=b"", times=times)

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

    def wait_for(self, method: str | None = None, path: str = ".*", count: int = 1, timeout: float = 10.0) -> list:
        """The logged requests matching, once there are `count` of them: a flood is logged only when the client has
        hung up, which may be just after the client raised."""
        deadline = time.monotonic() + timeout
        while len(found := self.requests(method, path)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return found

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
        tls = isinstance(handler.connection, ssl.SSLSocket)
        body = _read_body(handler)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        declared = handler.headers.get("Content-Length")
        if declared and len(body) < int(declared):
            # The client gave up mid-body (e.g. it caught a bad digest before sending the last bytes).
            handler.close_connection = True
            self._record(Logged(method, path, 0, len(body), 0, "client_aborted", headers, tls))
            return
        if self.intercept is not None:
            answer = self.intercept(method, path, headers, body)
            if answer is not None:
                status, answer_headers, answer_body = answer
                self._record(Logged(method, path, status, len(body), len(answer_body), "intercepted", headers, tls))
                _respond(handler, status, answer_headers, answer_body)
                return
        rule = self._rule_for(method, path)
        if rule and rule.action == "status":
            payload = rule.body
            if payload is None:
                payload = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "injected fault"}]}).encode()
            self._record(Logged(method, path, rule.status, len(body), len(payload), "status", headers, tls))
            _respond(handler, rule.status, {"Content-Type": "application/json", **rule.headers}, payload)
            return
        if rule and rule.action == "flood":
            sent = _flood(handler, rule.status, rule.headers, rule.flood_bytes)
            self._record(Logged(method, path, rule.status, len(body), sent, "flood", headers, tls))
            return
        if rule and rule.action == "hang":
            time.sleep(rule.hang_seconds)
            self._record(Logged(method, path, 0, len(body), 0, "hang", headers, tls))
            _reset(handler)
            return
        if rule and rule.action == "reset" and method in ("PUT", "PATCH") and body:
            self._record(Logged(method, path, 0, len(body), 0, "reset", headers, tls))
            _reset(handler)  # the upload got half way (we read it all, the client saw the reset)
            return
        if rule and rule.action == "ignore_range":
            # A server (or a CDN in front of it) that does not do ranges: it answers 200 with the whole body.
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
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
            cut = int(len(payload) * rule.cut_at)
            self._record(Logged(method, path, status, len(body), cut, "reset", headers, tls))
            handler.send_response(status)
            for key, value in out_headers.items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(payload[:cut])
            handler.wfile.flush()
            _reset(handler)
            return
        # Recorded before answering: a client that has its answer may look at the log at once.
        self._record(Logged(method, path, status, len(body), len(payload), rule.action if rule else None, headers, tls))
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


def _flood(handler: BaseHTTPRequestHandler, status: int, headers: dict, size: int) -> int:
    """Send `size` bytes of chunked body, stopping when the client hangs up; returns the bytes written."""
    handler.send_response(status)
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b"<p>internal page " + b"x" * (64 * 1024 - 17)
    sent = 0
    try:
        while sent < size:
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        handler.wfile.write(b"0\r\n\r\n")
    except OSError:
        pass  # the client stopped reading and closed the connection, as it should
    handler.close_connection = True
    return sent


class _EitherProtocolServer(ThreadingHTTPServer):
    """Serves plain HTTP, and with an SSL context TLS too, on one port: the first byte of a TLS connection is 0x16."""

    def __init__(self, address, handler, context: ssl.SSLContext | None):
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request, client_address) -> None:
        if self.context is not None:
            try:
                first = request.recv(1, socket.MSG_PEEK)
            except OSError:
                return
            if first == b"\x16":
                try:
                    request = self.context.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError):
                    return
        super().finish_request(request, client_address)


def tls_certificate(directory: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost in `directory`; returns (certificate, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "proxy.crt"), os.path.join(directory, "proxy.key")
    with open(cert_path, "wb") as handle:
        handle.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


def hostile_index(children: list[dict], *, media_type: str = "application/vnd.oci.image.index.v1+json") -> bytes:
    """An index over `children` (descriptors, repeated as often as the test likes: registries do not dedupe)."""
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": children}).encode()


def _reset(handler: BaseHTTPRequestHandler) -> None:
    """Close with RST, the way a crashed proxy or load balancer drops a connection."""
    try:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
    except OSError:
        pass
    handler.close_connection = True
