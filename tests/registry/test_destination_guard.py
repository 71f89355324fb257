"""The destination guard and the token realm rule: a registry cannot point the worker at cloud metadata, the internal
network or a token service of its choosing, and error pages from such places are never quoted back.

Registries and token services are real processes on loopback; the hostile answers come from the fault proxy.
"""

from __future__ import annotations

import pytest

from ci_integrations.registry import (
    AccessDenied,
    DestinationRefused,
    ProtocolError,
    TransientError,
    address_guard,
    copy_image,
)
from ci_integrations.registry.destinations import check_realm
from tests.registry.conftest import location
from tests.support.images import get_manifest_digest, push_random_image
from tests.support.registry_server import start_registry, start_token_server

ALICE = {"username": "alice", "password": "guarded-s3cret"}
BLOB_GET = r"^/v2/team/api/blobs/sha256:[0-9a-f]+$"


def host_port(url: str) -> str:
    return url.split("://", 1)[1].rstrip("/")


# --- the ready-made guard ------------------------------------------------------------------------------------------

INTERNAL = {
    "127.0.0.1": "loopback",
    "::1": "loopback",
    "::ffff:127.0.0.1": "loopback",
    "0.0.0.0": "unspecified",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "10.1.2.3": "private",
    "172.16.0.1": "private",
    "192.168.1.1": "private",
    "fd00:ec2::254": "private",
    "224.0.0.1": "multicast",
    "100.100.100.200": "non-global",
}


@pytest.mark.parametrize("address", list(INTERNAL))
def test_address_guard_refuses_internal_addresses_naming_the_host_and_why(address):
    guard = address_guard()

    with pytest.raises(DestinationRefused, match=f"it resolves to .*, a {INTERNAL[address]} address") as caught:
        guard("https", address, 443)

    assert address in caught.value.message and not caught.value.retryable


def test_address_guard_refuses_a_name_that_resolves_to_loopback():
    with pytest.raises(DestinationRefused, match="localhost:80"):
        address_guard()("http", "localhost", 80)


def test_address_guard_lets_public_addresses_and_allowed_host_ports_through():
    guard = address_guard({"127.0.0.1:5000", "[::1]:5000"})

    guard("https", "8.8.8.8", 443)
    guard("http", "127.0.0.1", 5000)
    guard("http", "::1", 5000)
    with pytest.raises(DestinationRefused):
        guard("http", "127.0.0.1", 5001)  # the allowance is for one port, not the whole host


def test_address_guards_for_equal_allowances_are_equal_so_clients_are_still_shared():
    assert address_guard({"127.0.0.1:5000"}) == address_guard(["127.0.0.1:5000"])
    with pytest.raises(ValueError, match="host:port"):
        address_guard({"127.0.0.1"})


# --- every connection is guarded -----------------------------------------------------------------------------------


def test_the_guard_refuses_the_registry_itself_before_any_request_is_sent(registry, other_registry, proxy_factory):
    push_random_image(registry.url, "team/api", "1.0")
    proxy = proxy_factory(registry.url)

    with pytest.raises(DestinationRefused, match=f"{proxy.host}: it resolves to 127.0.0.1, a loopback address"):
        copy_image(
            location(proxy.url, "team/api", "1.0", guard=address_guard()),
            location(other_registry.url, "prod/api", "1.0"),
        )

    assert proxy.log == []


def test_a_blob_redirect_to_cloud_metadata_is_refused_without_connecting_or_retrying(
    registry, other_registry, proxy_factory
):
    push_random_image(registry.url, "team/api", "1.0", layers=2)
    source = proxy_factory(registry.url)
    source.redirect(path=BLOB_GET, to="http://169.254.169.254/latest/meta-data/iam/security-credentials/")
    guard = address_guard({source.host})

    with pytest.raises(DestinationRefused, match="169.254.169.254:80: it resolves to 169.254.169.254, a link-local"):
        copy_image(
            location(source.url, "team/api", "1.0", guard=guard), location(other_registry.url, "prod/api", "1.0")
        )

    assert len(source.requests("GET", BLOB_GET)) <= 3  # one per blob at most: a refusal is not retried
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") is None


def test_the_guard_is_asked_for_every_redirect_hop(registry, other_registry, proxy_factory):
    push_random_image(registry.url, "team/api", "1.0", layers=1)
    storage = proxy_factory(registry.url)  # serves the blob paths it is sent to, as a storage host would

    def to_storage(method, path, headers, body):
        return (307, {"Location": f"{storage.url}{path}"}, b"") if method == "GET" and "/blobs/" in path else None

    source = proxy_factory(registry.url, intercept=to_storage)
    asked: list[str] = []

    def recording_guard(scheme: str, host: str, port: int) -> None:
        asked.append(f"{scheme}://{host}:{port}")

    copy_image(
        location(source.url, "team/api", "1.0", guard=recording_guard),
        location(other_registry.url, "prod/api", "1.0"),
    )

    assert set(asked) == {source.url, storage.url}
    assert asked.count(storage.url) == len(storage.requests("GET", "/blobs/")) == 2  # config and layer


@pytest.fixture
def token_service():
    tokens = start_token_server(users={"alice": ALICE["password"]})
    yield tokens
    tokens.stop()


def test_a_token_realm_on_a_loopback_port_the_guard_does_not_allow_is_never_contacted(
    registry, token_service, proxy_factory
):
    canary = proxy_factory(token_service.url)
    # Same scheme and host as the registry, so the realm rule allows it: only the guard stands in the way.
    destination = start_registry(token_auth={**token_service.registry_config, "realm": f"{canary.url}/token"})
    try:
        push_random_image(registry.url, "team/api", "1.0")
        guard = address_guard({host_port(destination.url)})

        with pytest.raises(DestinationRefused, match=f"{canary.host}: it resolves to 127.0.0.1, a loopback"):
            copy_image(
                location(registry.url, "team/api", "1.0"),
                location(destination.url, "prod/api", "1.0", credentials=ALICE, guard=guard),
            )

        assert canary.log == []
    finally:
        destination.stop()


def test_a_plain_http_token_realm_on_another_host_is_refused_even_without_a_guard(
    registry, token_service, proxy_factory
):
    canary = proxy_factory(token_service.url)
    port = canary.host.rpartition(":")[2]
    destination = start_registry(
        token_auth={**token_service.registry_config, "realm": f"http://localhost:{port}/token"}
    )
    try:
        push_random_image(registry.url, "team/api", "1.0")

        with pytest.raises(DestinationRefused, match="token realm on localhost \\(http scheme\\)") as caught:
            copy_image(
                location(registry.url, "team/api", "1.0"),
                location(destination.url, "prod/api", "1.0", credentials=ALICE),
            )

        assert not caught.value.retryable
        assert canary.log == []  # the credentials never went there
    finally:
        destination.stop()


@pytest.mark.parametrize(
    ("realm", "registry_url", "allowed"),
    [
        ("https://auth.example.com/token", "http://127.0.0.1:5000", True),
        ("http://127.0.0.1:5001/token", "http://127.0.0.1:5000", True),
        ("https://registry.example/token", "https://registry.example", True),
        ("http://auth.example.com/token", "https://registry.example", False),
        ("http://registry.example/token", "https://registry.example", False),
        ("/token", "http://127.0.0.1:5000", False),
    ],
)
def test_a_token_realm_must_be_https_or_on_the_registrys_own_scheme_and_host(realm, registry_url, allowed):
    if allowed:
        check_realm(realm, registry_url)
    else:
        with pytest.raises(DestinationRefused, match="a realm must be https"):
            check_realm(realm, registry_url)


# --- error bodies that are not registry error JSON -----------------------------------------------------------------

PAGE = b"<html><body>internal-only admin console of 10.0.0.5</body></html>"


@pytest.mark.parametrize(("status", "kind"), [(400, ProtocolError), (503, TransientError)])
def test_an_error_page_that_is_not_registry_json_is_never_quoted(registry, other_registry, proxy_factory, status, kind):
    push_random_image(registry.url, "team/api", "1.0")
    source = proxy_factory(registry.url)
    html = {"Content-Type": "text/html; charset=utf-8"}
    source.add("status", method="GET", path=r"/manifests/1\.0$", status=status, headers=html, body=PAGE, times=None)

    with pytest.raises(kind) as caught:
        copy_image(location(source.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))

    message = caught.value.message
    assert f"1.0: HTTP {status} (text/html body, not registry error JSON)" in message
    assert "internal-only" not in message and "10.0.0.5" not in message


def test_a_token_service_error_page_is_never_quoted(registry, token_service, proxy_factory):
    front = proxy_factory(token_service.url)
    front.add("status", method="GET", path=r"^/token", status=403, headers={"Content-Type": "text/html"}, body=PAGE)
    destination = start_registry(token_auth={**token_service.registry_config, "realm": f"{front.url}/token"})
    try:
        push_random_image(registry.url, "team/api", "1.0")

        with pytest.raises(AccessDenied) as caught:
            copy_image(
                location(registry.url, "team/api", "1.0"),
                location(destination.url, "prod/api", "1.0", credentials=ALICE),
            )

        assert "HTTP 403 (text/html body, not registry error JSON)" in caught.value.message
        assert "internal-only" not in caught.value.message
    finally:
        destination.stop()
