"""Copies against registries that demand credentials: htpasswd Basic and a token service issuing scoped JWTs."""

from __future__ import annotations

import pytest

from ci_integrations.registry import AccessDenied, AuthenticationError, check_access, copy_image
from tests.registry.conftest import location
from tests.support.images import get_manifest_digest, push_random_image
from tests.support.registry_server import start_registry, start_token_server

ALICE = {"username": "alice", "password": "wonderland-s3cret"}


@pytest.fixture
def basic_registry():
    server = start_registry(htpasswd={"alice": ALICE["password"]})
    yield server
    server.stop()


@pytest.fixture
def token_service():
    tokens = start_token_server(users={"alice": ALICE["password"], "reader": "read-only-pw"})
    yield tokens
    tokens.stop()


@pytest.fixture
def token_registry(token_service):
    server = start_registry(token_auth=token_service.registry_config)
    yield server
    server.stop()


def test_copy_from_anonymous_to_basic_auth_registry(registry, basic_registry):
    digest = push_random_image(registry.url, "team/api", "1.0")

    summary = copy_image(
        location(registry.url, "team/api", "1.0"), location(basic_registry.url, "prod/api", "1.0", credentials=ALICE)
    )

    assert summary.digest == digest
    assert get_manifest_digest(basic_registry.url, "prod/api", "1.0", auth=("alice", ALICE["password"])) == digest


def test_wrong_basic_password_is_an_authentication_error_without_the_password(registry, basic_registry, proxy_factory):
    push_random_image(registry.url, "team/api", "1.0")
    proxy = proxy_factory(basic_registry.url)
    wrong = {"username": "alice", "password": "not-the-password-123"}

    with pytest.raises(AuthenticationError) as caught:
        copy_image(location(registry.url, "team/api", "1.0"), location(proxy.url, "prod/api", "1.0", credentials=wrong))

    assert "not-the-password-123" not in str(caught.value)
    assert not caught.value.retryable
    assert len(proxy.requests()) <= 3  # bare request, one answer to the challenge, then stop: 401 is not retried


def test_missing_credentials_for_a_basic_registry_say_so(registry, basic_registry):
    push_random_image(registry.url, "team/api", "1.0")
    with pytest.raises(AuthenticationError, match="requires credentials"):
        copy_image(location(registry.url, "team/api", "1.0"), location(basic_registry.url, "prod/api", "1.0"))


def test_copy_through_token_auth_asks_pull_on_source_and_pull_push_on_destination(
    registry, token_registry, token_service
):
    digest = push_random_image(registry.url, "team/api", "1.0")

    copy_image(
        location(registry.url, "team/api", "1.0"), location(token_registry.url, "prod/api", "1.0", credentials=ALICE)
    )

    assert get_manifest_digest(token_registry.url, "prod/api", "1.0", auth=("alice", ALICE["password"])) == digest
    asked = {scope for request in token_service.requests for scope in request["scopes"]}
    assert "repository:prod/api:pull,push" in asked
    # A handful of token requests, not one per blob: tokens are cached by scope.
    assert len(token_service.requests) <= 3


def test_same_registry_mount_token_covers_pull_on_source_and_push_on_destination(token_registry, token_service):
    auth = ("alice", ALICE["password"])
    digest = push_random_image(token_registry.url, "team/api", "1.0", auth=auth, layers=3)
    token_service.requests.clear()

    summary = copy_image(
        location(token_registry.url, "team/api", "1.0", credentials=ALICE),
        location(token_registry.url, "prod/api", "1.0", credentials=ALICE),
    )

    assert summary.blobs_mounted == 4 and summary.bytes_transferred == 0
    assert get_manifest_digest(token_registry.url, "prod/api", "1.0", auth=auth) == digest
    mount_scopes = [set(r["scopes"]) for r in token_service.requests if len(r["scopes"]) == 2]
    assert {"repository:prod/api:pull,push", "repository:team/api:pull"} in mount_scopes


def test_mount_refused_by_the_token_service_falls_back_to_streaming(token_service, token_registry):
    auth = ("alice", ALICE["password"])
    digest = push_random_image(token_registry.url, "team/api", "1.0", auth=auth)
    reader = {"username": "reader", "password": "read-only-pw"}
    # reader may only pull team/api; alice may only use prod/api, so alice's token cannot mount from team/api.
    token_service.grant = lambda user, kind, name, actions: (
        actions if (user, name) in {("reader", "team/api"), ("alice", "prod/api")} else []
    )

    summary = copy_image(
        location(token_registry.url, "team/api", "1.0", credentials=reader),
        location(token_registry.url, "prod/api", "1.0", credentials=ALICE),
    )

    assert summary.blobs_mounted == 0 and summary.blobs_copied == 3
    assert get_manifest_digest(token_registry.url, "prod/api", "1.0", auth=auth) == digest


def test_push_preflight_fails_with_access_denied_when_the_token_lacks_push(token_service, token_registry):
    token_service.grant = lambda user, kind, name, actions: [a for a in actions if a == "pull"]
    reader = {"username": "reader", "password": "read-only-pw"}
    with pytest.raises(AccessDenied):
        check_access(location(token_registry.url, "prod/api", "1.0", credentials=reader), push=True)


def test_credentials_expiring_mid_copy_are_renewed(registry, token_registry, token_service, proxy_factory):
    digest = push_random_image(registry.url, "team/api", "1.0", layers=3, layer_size=64 * 1024)
    proxy = proxy_factory(token_registry.url)
    # The registry starts refusing the token halfway through, as it would once the token expires.
    expired = b'{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}'
    challenge = (
        f'Bearer realm="{token_service.realm}",service="{token_service.service}",scope="repository:prod/api:pull,push"'
    )
    proxy.add(
        "status",
        method="PUT",
        path=r"/blobs/uploads/",
        status=401,
        headers={"WWW-Authenticate": challenge},
        body=expired,
        after=1,
        times=1,
    )

    summary = copy_image(
        location(registry.url, "team/api", "1.0"), location(proxy.url, "prod/api", "1.0", credentials=ALICE)
    )

    assert summary.digest == digest
    assert get_manifest_digest(token_registry.url, "prod/api", "1.0", auth=("alice", ALICE["password"])) == digest
    assert len(token_service.requests) >= 2  # a fresh token was fetched after the refusal


def test_token_service_hiccup_is_retried(registry, token_service, proxy_factory):
    token_proxy = proxy_factory(token_service.url)
    token_proxy.add("status", method="GET", path=r"^/token", status=503, times=1)
    fronted = start_registry(token_auth={**token_service.registry_config, "realm": f"{token_proxy.url}/token"})
    try:
        digest = push_random_image(registry.url, "team/api", "1.0")
        copy_image(
            location(registry.url, "team/api", "1.0"), location(fronted.url, "prod/api", "1.0", credentials=ALICE)
        )
        assert get_manifest_digest(fronted.url, "prod/api", "1.0", auth=("alice", ALICE["password"])) == digest
        assert [e.status for e in token_proxy.requests("GET", r"^/token")][:2] == [503, 200]
    finally:
        fronted.stop()
