"""Fixtures for the registry package: real docker-registry processes on free ports, and a fault proxy.

Nothing here touches Django or the database; these tests run with or without pytest-django.
"""

from __future__ import annotations

import pytest

from ci_integrations.registry import ImageLocation, RegistrySpec
from ci_integrations.registry.auth import TOKEN_CACHE
from tests.registry.fault_proxy import FaultProxy
from tests.support.registry_server import start_registry

# Fast retries and short timeouts so fault tests take fractions of a second, not minutes.
FAST = {"retry_base_delay": 0.01, "retry_max_delay": 0.05, "retry_attempts": 4, "read_timeout": 5}


@pytest.fixture(autouse=True)
def _fresh_token_cache():
    TOKEN_CACHE.clear()
    yield
    TOKEN_CACHE.clear()


@pytest.fixture
def registry():
    server = start_registry()
    yield server
    server.stop()


@pytest.fixture
def other_registry():
    server = start_registry()
    yield server
    server.stop()


@pytest.fixture
def proxy_factory():
    proxies: list[FaultProxy] = []

    def make(upstream_url: str, **kwargs) -> FaultProxy:
        proxy = FaultProxy(upstream_url, **kwargs)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


def spec(url: str, provider: str = "generic", credentials: dict | None = None, guard=None, **options) -> RegistrySpec:
    return RegistrySpec(provider=provider, url=url, options={**FAST, **options}, credentials=credentials, guard=guard)


def location(url_or_spec, repository: str, reference: str, **kwargs) -> ImageLocation:
    registry = url_or_spec if isinstance(url_or_spec, RegistrySpec) else spec(url_or_spec, **kwargs)
    return ImageLocation(registry=registry, repository=repository, reference=reference)
