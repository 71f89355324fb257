"""A CI's OIDC issuer on a loopback port, as GitHub Actions or GitLab run one: a discovery document and a JWKS over
HTTP, signing keys made with `cryptography`, and ID tokens signed with them. It counts the requests it answers, so a
test can show the portal did (or did not) ask it."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa


@dataclass
class SigningKey:
    kid: str
    algorithm: str
    private: object

    def public_jwk(self) -> dict:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        jwk = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}


def new_key(algorithm: str = "RS256") -> SigningKey:
    if algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid=uuid.uuid4().hex[:12], algorithm=algorithm, private=private)


@dataclass
class Issuer:
    """The issuer's state; `requests` lists the paths asked for, in order."""

    url: str = ""
    keys: list[SigningKey] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def sign(self, claims: dict | None = None, *, key: SigningKey | None = None, headers: dict | None = None, **extra):
        """An ID token with GitHub-like claims, valid from now for ten minutes, overridden by `claims`/`extra`."""
        key = key or self.keys[0]
        now = int(time.time())
        payload = {
            "iss": self.url,
            "aud": "p2p-portal",
            "sub": "repo:acme/payments-api:ref:refs/heads/main",
            "repository": "acme/payments-api",
            "ref": "refs/heads/main",
            "run_id": "4242",
            "actor": "octocat",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            **(claims or {}),
            **extra,
        }
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid, **(headers or {})})

    def rotate(self, algorithm: str = "RS256") -> SigningKey:
        """A new key replaces every old one, as an issuer's key rotation does."""
        key = new_key(algorithm)
        self.keys = [key]
        return key

    def jwks(self) -> dict:
        return {"keys": [key.public_jwk() for key in self.keys]}

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def start_issuer(*algorithms: str) -> Issuer:
    """An issuer with one key per algorithm given (RS256 when none), serving until stop()."""
    issuer = Issuer(keys=[new_key(algorithm) for algorithm in algorithms or ("RS256",)])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            issuer.requests.append(self.path)
            if self.path == "/.well-known/openid-configuration":
                body = {"issuer": issuer.url, "jwks_uri": f"{issuer.url}/.well-known/jwks"}
            elif self.path == "/.well-known/jwks":
                body = issuer.jwks()
            else:
                self.send_error(404)
                return
            raw = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    issuer.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    issuer.url = f"http://127.0.0.1:{issuer.server.server_address[1]}"
    threading.Thread(target=issuer.server.serve_forever, daemon=True).start()
    return issuer
