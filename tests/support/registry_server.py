"""Real Debian `docker-registry` (CNCF distribution) instances on free loopback ports, for tests and benchmarks.

No Django here: the registry tests, the promotion tests and bench/copy_bench.py all start registries through this.
`start_token_server` adds a tiny token service (scoped RS256 JWTs) for registries running with token auth.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import requests

REGISTRY_BINARY = os.environ.get("P2P_REGISTRY_BINARY", "/usr/bin/docker-registry")
HTPASSWD_BINARY = "/usr/bin/htpasswd"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a server the tests started, and kill it if it does not stop within 5 seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass
class RegistryServer:
    """A running docker-registry; `stop()` kills it and removes its temporary storage."""

    url: str
    host: str
    data_dir: str
    process: subprocess.Popen
    workdir: str
    owns_data_dir: bool = True

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log(self) -> str:
        """The registry's own log (useful in assertion messages)."""
        try:
            with open(os.path.join(self.workdir, "registry.log"), encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def __enter__(self) -> RegistryServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _htpasswd_file(path: str, users: dict[str, str]) -> None:
    lines = []
    for user, password in users.items():
        # distribution only accepts bcrypt entries; -C 4 keeps hashing cheap for tests.
        out = subprocess.run(
            [HTPASSWD_BINARY, "-nbBC", "4", user, password], check=True, capture_output=True, text=True
        ).stdout
        lines.append(out.strip())
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def _config(port: int, data_dir: str, workdir: str, htpasswd, token_auth) -> str:
    # JSON is valid YAML, so the config needs no YAML library.
    config: dict = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}, "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": data_dir},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16), "headers": {}},
    }
    if htpasswd and token_auth:
        raise ValueError("choose htpasswd or token_auth, not both")
    if htpasswd:
        path = os.path.join(workdir, "htpasswd")
        _htpasswd_file(path, htpasswd)
        config["auth"] = {"htpasswd": {"realm": "test-registry", "path": path}}
    if token_auth:
        bundle = token_auth["rootcertbundle"]
        if "-----BEGIN" in bundle:
            path = os.path.join(workdir, "token-ca.pem")
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(bundle)
            bundle = path
        config["auth"] = {
            "token": {
                "realm": token_auth["realm"],
                "service": token_auth.get("service", "test-registry"),
                "issuer": token_auth.get("issuer", "test-issuer"),
                "rootcertbundle": bundle,
            }
        }
    return json.dumps(config)


def start_registry(
    *, htpasswd: dict[str, str] | None = None, token_auth: dict | None = None, data_dir: str | None = None
) -> RegistryServer:
    """Start docker-registry on a free 127.0.0.1 port and wait until /v2/ answers.

    htpasswd: {"user": "password"} enables Basic auth. token_auth: {"realm", "service", "issuer", "rootcertbundle"
    (a path or PEM text)} enables bearer token auth (see `start_token_server`). data_dir reuses existing storage.
    """
    last_error = ""
    for _ in range(3):  # a free port can be taken between probing and binding; try another one
        workdir = tempfile.mkdtemp(prefix="p2p-registry-")
        owns = data_dir is None
        storage = data_dir or os.path.join(workdir, "data")
        os.makedirs(storage, exist_ok=True)
        port = free_port()
        config_path = os.path.join(workdir, "config.yml")
        with open(config_path, "w", encoding="utf-8") as handle:
            handle.write(_config(port, storage, workdir, htpasswd, token_auth))
        log = open(os.path.join(workdir, "registry.log"), "wb")  # noqa: SIM115 - the child owns it
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", config_path], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        server = RegistryServer(
            url=f"http://127.0.0.1:{port}",
            host=f"127.0.0.1:{port}",
            data_dir=storage,
            process=process,
            workdir=workdir,
            owns_data_dir=owns,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = requests.get(f"{server.url}/v2/", timeout=1)
                if response.status_code in (200, 401):
                    return server
            except requests.ConnectionError:
                pass
            time.sleep(0.02)
        last_error = server.log()
        server.stop()
    raise RuntimeError(f"docker-registry did not start: {last_error[-2000:]}")


# --- token auth -------------------------------------------------------------------------------------------------


def _libtrust_key_id(public_key) -> str:
    """The key id distribution derives from a certificate's public key (libtrust fingerprint)."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


@dataclass
class TokenServer:
    """A token service in the style of Docker's: GET /token?service=…&scope=… answers a scoped JWT.

    `grant(user, scope_type, name, actions) -> actions granted` decides; by default any authenticated (or anonymous,
    when `users` is None) caller gets what it asks for. Every request is recorded in `requests` as
    {"user", "service", "scopes": [...]} so tests can see which scopes a client asked for.
    """

    url: str
    realm: str
    service: str
    issuer: str
    cert_pem: str
    httpd: ThreadingHTTPServer
    key: object
    key_id: str
    users: dict[str, str] | None = None
    grant: Callable[[str | None, str, str, list[str]], list[str]] | None = None
    token_ttl: int = 300
    requests: list[dict] = field(default_factory=list)

    @property
    def registry_config(self) -> dict:
        return {"realm": self.realm, "service": self.service, "issuer": self.issuer, "rootcertbundle": self.cert_pem}

    def issue(self, user: str | None, scopes: list[str]) -> str:
        import jwt

        access = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            scope_type, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1].split(",")
            granted = self.grant(user, scope_type, name, actions) if self.grant else actions
            if granted:
                access.append({"type": scope_type, "name": name, "actions": list(granted)})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": now + self.token_ttl,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.key_id})

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_token_server(
    *,
    users: dict[str, str] | None = None,
    grant: Callable[[str | None, str, str, list[str]], list[str]] | None = None,
    service: str = "test-registry",
    issuer: str = "test-issuer",
    token_ttl: int = 300,
) -> TokenServer:
    """Start a token server on a free port; pass `server.registry_config` as `start_registry(token_auth=…)`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    holder: dict = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            server: TokenServer = holder["server"]
            query = parse_qs(urlsplit(self.path).query)
            user = None
            header = self.headers.get("Authorization", "")
            if header.startswith("Basic "):
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                if server.users is not None and server.users.get(user) != password:
                    return self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            elif server.users is not None:
                return self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})
            scopes = query.get("scope", [])
            server.requests.append({"user": user, "service": query.get("service", [None])[0], "scopes": scopes})
            token = server.issue(user, scopes)
            body = {"token": token, "access_token": token, "expires_in": server.token_ttl}
            body["issued_at"] = dt.datetime.now(dt.UTC).isoformat()
            self._answer(200, body)

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    server = TokenServer(
        url=f"http://127.0.0.1:{port}",
        realm=f"http://127.0.0.1:{port}/token",
        service=service,
        issuer=issuer,
        cert_pem=cert_pem,
        httpd=httpd,
        key=key,
        key_id=_libtrust_key_id(key.public_key()),
        users=users,
        grant=grant,
        token_ttl=token_ttl,
    )
    holder["server"] = server
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True, name="token-server").start()
    return server
