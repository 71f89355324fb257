"""Registries and token services that answer to exhaust memory: an index naming one child hundreds of times, more
manifests than any image has, and error or token bodies of tens of MiB. Each costs the client a bounded amount.

The registries are real docker-registry processes; the hostile answers come from the fault proxy in front of them.
"""

from __future__ import annotations

import hashlib

import pytest

from ci_integrations.registry import AuthenticationError, ProtocolError, RegistryError, copy_image
from ci_integrations.registry.client import MAX_INDEX_CHILDREN, OCI_INDEX
from ci_integrations.registry.errors import IndexTooLarge, cut, error_for_response
from tests.registry.conftest import location
from tests.registry.fault_proxy import hostile_index
from tests.support.images import OCI_MANIFEST, get_manifest, get_manifest_digest, push_random_image
from tests.support.registry_server import start_registry, start_token_server

ALICE = {"username": "alice", "password": "hostile-s3cret"}
FLOOD = 64 * 1024 * 1024
# What a client that stops after 64 KiB lets through: that plus what the loopback socket buffers hold.
READ_AT_MOST = 16 * 1024 * 1024


def descriptor(registry_url: str, repository: str, digest: str) -> dict:
    raw, media_type = get_manifest(registry_url, repository, digest)
    return {"mediaType": media_type, "digest": digest, "size": len(raw)}


def serve_manifests(manifests: dict[str, bytes]):
    """An intercept answering GET /v2/team/api/manifests/<reference> from `manifests` (other requests go through)."""

    def intercept(method, path, headers, body):
        reference = path.rpartition("/manifests/")[2]
        if method == "GET" and "/manifests/" in path and reference in manifests:
            return 200, {"Content-Type": OCI_INDEX}, manifests[reference]
        return None

    return intercept


def fake_children(count: int, salt: str = "") -> list[dict]:
    """Descriptors of `count` distinct manifests that exist nowhere (the client must refuse before asking)."""
    return [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + hashlib.sha256(f"{salt}{i}".encode()).hexdigest(), "size": 1}
        for i in range(count)
    ]


# --- indexes -------------------------------------------------------------------------------------------------------


def test_an_index_naming_one_child_400_times_fetches_and_pushes_that_child_once(
    registry, other_registry, proxy_factory
):
    child = push_random_image(registry.url, "team/api", None)
    index = hostile_index([descriptor(registry.url, "team/api", child)] * 400)
    source = proxy_factory(registry.url, intercept=serve_manifests({"hostile": index}))
    destination = proxy_factory(other_registry.url)

    summary = copy_image(location(source.url, "team/api", "hostile"), location(destination.url, "prod/api", "hostile"))

    assert get_manifest(other_registry.url, "prod/api", "hostile") == (index, OCI_INDEX)  # the index's bytes, intact
    assert len(source.requests("GET", rf"/manifests/{child}$")) == 1
    assert len(destination.requests("PUT", rf"/manifests/{child}$")) == 1
    assert summary.manifests == 2


def test_an_index_naming_more_than_the_cap_of_distinct_manifests_is_refused_before_any_is_fetched(
    registry, other_registry, proxy_factory
):
    index = hostile_index(fake_children(MAX_INDEX_CHILDREN + 1))
    source = proxy_factory(registry.url, intercept=serve_manifests({"hostile": index}))

    with pytest.raises(IndexTooLarge, match=f"more than {MAX_INDEX_CHILDREN} distinct manifests") as caught:
        copy_image(location(source.url, "team/api", "hostile"), location(other_registry.url, "prod/api", "hostile"))

    assert not caught.value.retryable
    assert source.requests("GET", r"/manifests/sha256:") == []
    assert get_manifest_digest(other_registry.url, "prod/api", "hostile") is None


def test_nested_indexes_count_together_against_the_cap(registry, other_registry, proxy_factory):
    # Ten nested indexes of 101 manifests each: every index is small, the tree is not.
    nested = {}
    for n in range(10):
        raw = hostile_index(fake_children(101, salt=f"nested-{n}-"))
        nested["sha256:" + hashlib.sha256(raw).hexdigest()] = raw
    top = hostile_index(
        [{"mediaType": OCI_INDEX, "digest": digest, "size": len(raw)} for digest, raw in nested.items()]
    )
    source = proxy_factory(registry.url, intercept=serve_manifests({"top": top, **nested}))

    with pytest.raises(IndexTooLarge, match=f"nested in it name more than {MAX_INDEX_CHILDREN}"):
        copy_image(location(source.url, "team/api", "top"), location(other_registry.url, "prod/api", "top"))

    fetched = {e.path.rpartition("/")[2] for e in source.requests("GET", r"/manifests/sha256:")}
    assert fetched == set(nested)  # the nested indexes were read, none of the 1010 manifests they name


# --- bodies --------------------------------------------------------------------------------------------------------


def test_a_huge_error_body_is_read_only_up_to_its_limit(registry, other_registry, proxy_factory):
    push_random_image(registry.url, "team/api", "1.0")
    source = proxy_factory(registry.url)
    flood = source.flood(method="GET", path=r"/manifests/1\.0$", status=400, content_type="text/html", size=FLOOD)

    with pytest.raises(ProtocolError) as caught:
        copy_image(location(source.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))

    assert flood.fired == 1
    [answered] = source.wait_for("GET", r"/manifests/1\.0$")
    assert answered.bytes_down < READ_AT_MOST
    assert len(caught.value.message) <= 2000


@pytest.fixture
def token_service():
    tokens = start_token_server(users={"alice": ALICE["password"]})
    yield tokens
    tokens.stop()


@pytest.fixture
def token_front(token_service, proxy_factory):
    """The token service behind the fault proxy, and a registry whose challenges name the proxy as realm."""
    front = proxy_factory(token_service.url)
    registry = start_registry(token_auth={**token_service.registry_config, "realm": f"{front.url}/token"})
    yield front, registry
    registry.stop()


@pytest.mark.parametrize(
    ("status", "content_type", "kind"),
    [
        pytest.param(200, "application/json", ProtocolError, id="token-answer"),
        pytest.param(401, "text/html", AuthenticationError, id="token-error"),
    ],
)
def test_a_huge_token_service_body_is_read_only_up_to_its_limit(registry, token_front, status, content_type, kind):
    front, token_registry = token_front
    push_random_image(registry.url, "team/api", "1.0")
    front.flood(method="GET", path=r"^/token", status=status, content_type=content_type, size=FLOOD)

    with pytest.raises(kind) as caught:
        copy_image(
            location(registry.url, "team/api", "1.0"),
            location(token_registry.url, "prod/api", "1.0", credentials=ALICE),
        )

    answered = front.wait_for("GET", r"^/token")
    assert answered and all(e.bytes_down < READ_AT_MOST for e in answered)
    assert len(caught.value.message) <= 2000


# --- messages ------------------------------------------------------------------------------------------------------


def test_cut_caps_text_at_its_limit_and_says_it_cut():
    assert cut("short message") == "short message"
    assert cut("x" * 2000) == "x" * 2000
    capped = cut("x" * 5000)
    assert len(capped) == 2000 and capped.endswith("x (cut)")
    assert cut("abcdefghijklmnop", 10) == "abcd (cut)"


def test_an_error_built_from_a_huge_registry_message_stays_within_the_message_limit():
    huge = '{"errors":[{"code":"MANIFEST_INVALID","message":"' + "m" * 60000 + '"}]}'

    error = error_for_response(400, huge, what="PUT manifest team/app:1")

    assert len(error.message) <= 2000
    assert error.message.startswith("PUT manifest team/app:1: HTTP 400 (MANIFEST_INVALID: mmm")
    assert "(cut)" in error.message
    assert len(RegistryError("y" * 10000).message) <= 2000
