"""Shared registry clients: repeated manifest HEADs reuse one client and one keep-alive connection, per identity."""

from __future__ import annotations

import threading

import pytest

from ci_integrations.registry import AuthenticationError, address_guard, resolve_manifest
from ci_integrations.registry.client_cache import CLIENTS, ClientCache, client_key, shared_client
from tests.registry.conftest import location, spec
from tests.support.images import push_random_image
from tests.support.registry_server import start_registry

ALICE = {"username": "alice", "password": "wonderland-s3cret"}


@pytest.fixture(autouse=True)
def _empty_client_cache():
    CLIENTS.clear()
    yield
    CLIENTS.clear()


@pytest.fixture
def basic_registry():
    server = start_registry(htpasswd={"alice": ALICE["password"]})
    yield server
    server.stop()


def _connections_opened(client, url: str) -> int:
    """TCP connections the client's pool has opened so far (urllib3 counts them per host pool)."""
    pools = client.transport.session().get_adapter(url).poolmanager.pools
    return sum(pools[key].num_connections for key in pools.keys())


def test_repeated_resolves_share_one_client_and_one_keep_alive_connection(registry):
    digest = push_random_image(registry.url, "team/api", "1.0")
    where = location(registry.url, "team/api", "1.0")

    infos = [resolve_manifest(where) for _ in range(5)]

    assert {info.digest for info in infos} == {digest}
    assert len(CLIENTS) == 1
    assert _connections_opened(shared_client(where.registry), registry.url) == 1


def test_equal_specs_get_the_same_client_and_other_credentials_another(registry):
    first = shared_client(spec(registry.url, credentials=dict(ALICE)))

    assert shared_client(spec(registry.url, credentials=dict(ALICE))) is first
    assert shared_client(spec(registry.url, credentials={**ALICE, "password": "other-pw"})) is not first
    assert shared_client(spec(registry.url)) is not first
    assert shared_client(spec(registry.url, provider="dockerhub", credentials=dict(ALICE))) is not first
    assert len(CLIENTS) == 4


def test_the_cache_key_does_not_contain_the_credentials(registry):
    key = client_key(spec(registry.url, credentials=dict(ALICE)))

    assert ALICE["password"] not in repr(key)
    assert client_key(spec(registry.url, credentials={**ALICE, "password": "other-pw"})) != key


def test_wrong_credentials_do_not_borrow_the_authenticated_client(basic_registry):
    push_random_image(basic_registry.url, "team/api", "1.0", auth=(ALICE["username"], ALICE["password"]))
    assert resolve_manifest(location(basic_registry.url, "team/api", "1.0", credentials=dict(ALICE))).digest

    with pytest.raises(AuthenticationError):
        resolve_manifest(
            location(basic_registry.url, "team/api", "1.0", credentials={**ALICE, "password": "not-the-password"})
        )
    with pytest.raises(AuthenticationError):
        resolve_manifest(location(basic_registry.url, "team/api", "1.0"))


def test_the_cache_is_bounded_and_drops_the_least_recently_used(registry):
    cache = ClientCache(max_clients=2)
    a, b, c = (spec(registry.url, credentials={"username": name, "password": "pw"}) for name in "abc")
    client_a = cache.get(a)
    cache.get(b)
    assert cache.get(a) is client_a  # a is now the most recently used

    cache.get(c)

    assert len(cache) == 2
    assert cache.get(a) is client_a
    assert len(cache) == 2  # b went to make room for c


def test_clients_older_than_max_age_are_rebuilt(registry):
    cache = ClientCache(max_age=0)
    where = spec(registry.url)

    assert cache.get(where) is not cache.get(where)


def test_concurrent_first_use_builds_one_client(registry):
    where = spec(registry.url)
    seen = []
    start = threading.Barrier(8)

    def use() -> None:
        start.wait()
        seen.append(shared_client(where))

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len({id(client) for client in seen}) == 1


def test_specs_with_different_destination_guards_never_share_a_client(registry):
    guarded = shared_client(spec(registry.url, guard=address_guard({"127.0.0.1:1"})))

    # A client built without a guard (or with another allowance) must not serve a guarded spec, nor the reverse.
    assert shared_client(spec(registry.url)) is not guarded
    assert shared_client(spec(registry.url, guard=address_guard({"127.0.0.1:2"}))) is not guarded
    assert shared_client(spec(registry.url, guard=address_guard({"127.0.0.1:1"}))) is guarded
