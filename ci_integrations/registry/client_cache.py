"""Long-lived registry clients for small, frequent calls (manifest HEADs, access checks).

A new client per call means a new TCP (and TLS) connection and a new auth round trip every time. Clients kept here
are shared by the threads of a process: requests' connection pool and the authenticator are thread-safe, so
repeated HEADs reuse keep-alive connections and cached bearer tokens.

Clients are keyed by provider, URL, options and an identity of the credentials: two specs with different
credentials never share a client. The identity is an HMAC under a key that lives only in this process's memory, so
the cache keys reveal nothing about the credentials; the credentials themselves are never stored here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict

from .client import RegistryClient
from .providers import provider_for
from .refs import RegistrySpec

MAX_CLIENTS = 32
MAX_AGE_SECONDS = 300.0  # a client is rebuilt after this, so changed DNS or provider settings are picked up
POOL_SIZE = 8  # connections kept per client: about the number of threads of one web process

_IDENTITY_KEY = secrets.token_bytes(32)


def credentials_identity(credentials: dict | None) -> str:
    """Who a spec's credentials make us: equal for equal credentials, unrelated to their text otherwise."""
    if credentials is None:
        return "ambient"
    canonical = json.dumps(credentials, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(_IDENTITY_KEY, canonical.encode(), hashlib.sha256).hexdigest()


def client_key(spec: RegistrySpec) -> tuple:
    """Provider, URL, options, credentials identity and destination guard: specs differing in any get their own
    client (a client built with one guard must never serve a spec with another, or with none)."""
    options = json.dumps(spec.options or {}, sort_keys=True, separators=(",", ":"), default=str)
    return (
        (spec.provider or "generic").lower(),
        spec.url,
        options,
        credentials_identity(spec.credentials),
        spec.guard,
    )


class ClientCache:
    """A bounded, thread-safe map from registry identity to a shared RegistryClient (least recently used goes)."""

    def __init__(self, max_clients: int = MAX_CLIENTS, max_age: float = MAX_AGE_SECONDS) -> None:
        self.max_clients = max_clients
        self.max_age = max_age
        self._clients: OrderedDict[tuple, tuple[RegistryClient, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, spec: RegistrySpec) -> RegistryClient:
        key = client_key(spec)
        now = time.monotonic()
        with self._lock:
            found = self._clients.get(key)
            if found is not None and now - found[1] < self.max_age:
                self._clients.move_to_end(key)
                return found[0]
            client = provider_for(spec).client(spec, pool_size=POOL_SIZE)
            self._clients[key] = (client, now)
            self._clients.move_to_end(key)
            while len(self._clients) > self.max_clients:
                # Not closed here: another thread may be in the middle of a request on it. Its connections close
                # when the last user lets go of it.
                self._clients.popitem(last=False)
            return client

    def clear(self) -> None:
        with self._lock:
            self._clients.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._clients)


CLIENTS = ClientCache()


def shared_client(spec: RegistrySpec) -> RegistryClient:
    """The process's shared client for spec's registry and identity; do not close it."""
    return CLIENTS.get(spec)
