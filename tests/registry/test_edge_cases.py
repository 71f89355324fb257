"""What real registries do at the edges of the protocol: storage redirects that loop or leave HTTP, refused mounts,
HEAD answered badly, Content-Types that disagree with the manifest, paginated tag lists, and tokens that stop working.

Registries are real docker-registry processes; the odd behaviour comes from the fault proxy in front of them.
"""

from __future__ import annotations

import json
import re
import time
from urllib.parse import urlsplit

import pytest
import requests

from ci_integrations.registry import (
    AuthenticationError,
    NotFound,
    ProtocolError,
    copy_image,
    resolve_manifest,
)
from ci_integrations.registry.auth import Authenticator, BasicCredentials, static_credentials
from ci_integrations.registry.client import Endpoint, RegistryClient
from ci_integrations.registry.transport import RetryPolicy, Transport
from tests.registry.conftest import location
from tests.support.images import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    get_manifest,
    get_manifest_digest,
    push_index,
    push_random_image,
)
from tests.support.registry_server import start_registry, start_token_server

ALICE = {"username": "alice", "password": "edge-case-s3cret"}
FRAMING = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}
BLOB_GET = r"^/v2/team/api/blobs/sha256:[0-9a-f]+$"


def forward(upstream_url: str, method: str, path: str, headers: dict, body: bytes):
    """Send a request the proxy intercepted on to the real registry; answer (status, headers, body) for the proxy."""
    sent = {k: v for k, v in headers.items() if k.lower() not in FRAMING}
    response = requests.request(method, f"{upstream_url}{path}", headers=sent, data=body, timeout=30)
    answer = {k: v for k, v in response.headers.items() if k.lower() not in FRAMING}
    return response.status_code, answer, response.content


def relative(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def blob_digests(registry_url: str, repository: str, reference: str) -> tuple[str, list[str]]:
    raw, _ = get_manifest(registry_url, repository, reference)
    body = json.loads(raw)
    return body["config"]["digest"], [layer["digest"] for layer in body["layers"]]


# --- 1. blob GET redirected to a storage host ----------------------------------------------------------------------


def test_blob_redirect_loop_fails_with_a_protocol_error_without_retrying(registry, other_registry, proxy_factory):
    push_random_image(registry.url, "team/api", "1.0", layers=1)

    def loop(method, path, headers, body):
        if method == "GET" and re.match(BLOB_GET, urlsplit(path).path):
            hop = int((re.search(r"hop=(\d+)", path) or [0, "0"])[1])
            return 307, {"Location": f"{urlsplit(path).path}?hop={hop + 1}"}, b""
        return None

    front = proxy_factory(registry.url, intercept=loop)

    with pytest.raises(ProtocolError, match="redirect loop") as caught:
        copy_image(location(front.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))

    assert not caught.value.retryable
    # Per blob: the first request plus the redirects followed, and no second attempt of the whole chain.
    hops = [
        int(re.search(r"hop=(\d+)", e.path)[1]) if "hop=" in e.path else 0 for e in front.requests("GET", "/blobs/")
    ]
    assert max(hops) <= 10 and hops.count(0) <= 2
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") is None


def test_blob_redirect_to_a_non_http_url_fails_clearly_without_retrying(registry, other_registry, proxy_factory):
    push_random_image(registry.url, "team/api", "1.0", layers=1)

    def elsewhere(method, path, headers, body):
        if method == "GET" and re.match(BLOB_GET, path):
            return 307, {"Location": "ftp://storage.example/blob?X-Amz-Signature=presigned-secret-value"}, b""
        return None

    front = proxy_factory(registry.url, intercept=elsewhere)

    with pytest.raises(ProtocolError, match="redirected to a ftp: URL") as caught:
        copy_image(location(front.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))

    assert "presigned-secret-value" not in caught.value.message
    assert len(front.requests("GET", BLOB_GET)) <= 2  # one per blob at most: nothing was retried


def test_redirect_to_plain_http_on_the_registry_host_drops_the_credentials(monkeypatch):
    transport = Transport(
        "https://registry.example",
        Authenticator("registry.example", static_credentials(BasicCredentials("alice", ALICE["password"]))),
    )
    transport.auth.scheme = "basic"
    sent: list[tuple[str, dict]] = []

    def fake_send(method, url, headers, data, *, transfer=False):
        sent.append((url, headers))
        response = requests.Response()
        response.url, response._content, response._content_consumed = url, b"", True
        hops = {
            "https://registry.example/v2/a/blobs/x": "/v2/a/blobs/x?moved=1",
            "https://registry.example/v2/a/blobs/x?moved=1": "http://registry.example/v2/a/blobs/x",
        }
        response.status_code = 307 if url in hops else 200
        if url in hops:
            response.headers["Location"] = hops[url]
        return response

    monkeypatch.setattr(transport, "_send", fake_send)

    assert transport.send_once("GET", "https://registry.example/v2/a/blobs/x").status_code == 200

    assert [("Authorization" in headers) for _, headers in sent] == [True, True, False]


# --- 3. a mount answered 202: the registry opened an upload session instead -----------------------------------------


def _refusing_mounts(upstream_url: str, opened: list[str], delay: dict | None = None):
    """Answer every mount request as registries that cannot mount do: 202 with a fresh upload session."""

    def intercept(method, path, headers, body):
        found = re.match(r"^(/v2/prod/api/blobs/uploads/)\?mount=([^&]+)&", path)
        if method != "POST" or not found:
            return None
        time.sleep((delay or {}).get(found.group(2), 0))
        status, answer, content = forward(upstream_url, "POST", found.group(1), headers, body)
        assert status == 202, content
        answer["Location"] = relative(answer["Location"])
        opened.append(urlsplit(answer["Location"]).path)
        return 202, answer, content

    return intercept


def test_refused_mount_continues_with_the_upload_session_it_opened(registry, proxy_factory):
    digest = push_random_image(registry.url, "team/api", "1.0", layers=2)
    opened: list[str] = []
    front = proxy_factory(registry.url, intercept=_refusing_mounts(registry.url, opened))

    summary = copy_image(location(front.url, "team/api", "1.0"), location(front.url, "prod/api", "1.0"))

    assert summary.blobs_mounted == 0 and summary.blobs_copied == 3
    assert get_manifest_digest(registry.url, "prod/api", "1.0") == digest
    posts = front.requests("POST", r"/blobs/uploads/")
    assert len(posts) == 3 and all("mount=" in e.path for e in posts)  # no second session per blob
    assert sorted(urlsplit(e.path).path for e in front.requests("PUT", r"/blobs/uploads/")) == sorted(opened)


def test_copy_aborted_after_a_refused_mount_cancels_that_upload_session(registry, proxy_factory):
    push_random_image(registry.url, "team/api", "1.0", layers=1, layer_size=64 * 1024)
    config, [layer] = blob_digests(registry.url, "team/api", "1.0")
    opened: list[str] = []
    # The config's mount is answered only after the layer has failed and the copy is being abandoned.
    refusing = _refusing_mounts(registry.url, opened, delay={config: 0.5})
    gone = b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}'

    def intercept(method, path, headers, body):
        if method == "GET" and path == f"/v2/team/api/blobs/{layer}":
            return 404, {"Content-Type": "application/json"}, gone
        return refusing(method, path, headers, body)

    front = proxy_factory(registry.url, intercept=intercept)

    with pytest.raises(NotFound):
        copy_image(location(front.url, "team/api", "1.0"), location(front.url, "prod/api", "1.0"))

    assert len(opened) == 2
    cancelled = {urlsplit(e.path).path for e in front.requests("DELETE", r"/blobs/uploads/")}
    assert cancelled == set(opened)  # neither session left open on the registry


# --- 4. HEAD of a manifest answered badly ---------------------------------------------------------------------------

HEAD_QUIRKS = {
    "405 for every HEAD": {"path": r"/manifests/", "status": 405},
    "404 for an existing tag": {"path": r"/manifests/1\.0$", "status": 404},
    "no Docker-Content-Digest": {"path": r"/manifests/", "status": 200, "headers": {"Content-Type": OCI_MANIFEST}},
}


@pytest.mark.parametrize("quirk", list(HEAD_QUIRKS))
def test_manifest_head_answered_badly_falls_back_to_get_and_hashes_the_bytes(
    registry, other_registry, proxy_factory, quirk
):
    digest = push_random_image(registry.url, "team/api", "1.0")
    raw, _ = get_manifest(registry.url, "team/api", "1.0")
    source = proxy_factory(registry.url)
    destination = proxy_factory(other_registry.url)
    for proxy in (source, destination):
        proxy.add("status", method="HEAD", body=b"", times=None, **HEAD_QUIRKS[quirk])

    info = resolve_manifest(location(source.url, "team/api", "1.0"))
    # The destination's HEADs decide "already there?" and verify the result after the push.
    summary = copy_image(location(source.url, "team/api", "1.0"), location(destination.url, "prod/api", "1.0"))

    assert (info.digest, info.media_type, info.size) == (digest, OCI_MANIFEST, len(raw))
    assert summary.digest == digest and get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    assert source.requests("GET", r"/manifests/1\.0$") and destination.requests("GET", r"/manifests/1\.0$")


def test_head_404_for_a_digest_is_trusted_without_a_get(registry, proxy_factory):
    push_random_image(registry.url, "team/api", "1.0")
    proxy = proxy_factory(registry.url)
    missing = "sha256:" + "0" * 64

    with RegistryClient(Endpoint(proxy.url)) as client:
        assert client.head_manifest("team/api", missing) is None

    assert [e.method for e in proxy.log] == ["HEAD"]


# --- 5. Content-Type with parameters, or disagreeing with the manifest's mediaType -----------------------------------

CONTENT_TYPES = {
    "index with a charset parameter": ("oci", f"{OCI_INDEX}; charset=utf-8", OCI_INDEX),
    "OCI manifest served as a Docker manifest": ("oci", DOCKER_MANIFEST, OCI_MANIFEST),
    "Docker manifest list served as an OCI index": ("docker", OCI_INDEX, DOCKER_LIST),
}


@pytest.mark.parametrize("case", list(CONTENT_TYPES))
def test_manifest_media_type_comes_from_its_own_field_whatever_the_content_type(
    registry, other_registry, proxy_factory, case
):
    media, served_as, expected = CONTENT_TYPES[case]
    if expected in (OCI_INDEX, DOCKER_LIST):
        digest = push_index(registry.url, "team/api", "1.0", media=media)
    else:
        digest = push_random_image(registry.url, "team/api", "1.0", media=media)
    source_bytes, _ = get_manifest(registry.url, "team/api", "1.0")

    def mislabel(method, path, headers, body):
        if method == "GET" and path == "/v2/team/api/manifests/1.0":
            status, answer, content = forward(registry.url, method, path, headers, body)
            return status, {**answer, "Content-Type": served_as}, content
        return None

    source = proxy_factory(registry.url, intercept=mislabel)

    summary = copy_image(location(source.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))

    assert (summary.digest, summary.media_type) == (digest, expected)
    assert get_manifest(other_registry.url, "prod/api", "1.0") == (source_bytes, expected)


# --- 6. tag lists paginated with Link headers ------------------------------------------------------------------------


def _tag_pages(pages: dict[str, tuple[list[str], str | None]]):
    def intercept(method, path, headers, body):
        tags, link = pages[path]
        answer = {"Content-Type": "application/json"}
        if link:
            answer["Link"] = f'<{link}>; rel="next"'
        return 200, answer, json.dumps({"name": "team/api", "tags": tags}).encode()

    return intercept


def test_tag_pages_follow_relative_and_absolute_next_links(registry, proxy_factory):
    pages: dict = {}
    front = proxy_factory(registry.url, intercept=_tag_pages(pages))
    pages.update(
        {
            "/v2/team/api/tags/list?n=1000": (["a", "b"], "/v2/team/api/tags/list?n=2&last=b"),
            "/v2/team/api/tags/list?n=2&last=b": (["c", "d"], f"{front.url}/v2/team/api/tags/list?n=2&last=d"),
            "/v2/team/api/tags/list?n=2&last=d": (["e"], None),
        }
    )

    with RegistryClient(Endpoint(front.url), policy=RetryPolicy(attempts=1)) as client:
        assert client.tags("team/api") == ["a", "b", "c", "d", "e"]


def test_tag_pages_linking_back_to_an_earlier_page_are_refused(registry, proxy_factory):
    pages: dict = {}
    front = proxy_factory(registry.url, intercept=_tag_pages(pages))
    first, second = "/v2/team/api/tags/list?n=1000", "/v2/team/api/tags/list?n=1000&last=b"
    pages.update({first: (["a", "b"], second), second: (["c"], first)})

    def bounded(method, path, headers, body):
        if len(front.log) > 20:  # stop a client that loops, so the test fails instead of hanging
            return 200, {"Content-Type": "application/json"}, b'{"tags": []}'
        return _tag_pages(pages)(method, path, headers, body)

    front.intercept = bounded

    with RegistryClient(Endpoint(front.url), policy=RetryPolicy(attempts=1)) as client:
        with pytest.raises(ProtocolError, match="loop"):
            client.tags("team/api")
    assert len(front.log) == 2


# --- 8. token services and tokens that stop working -----------------------------------------------------------------


@pytest.fixture
def token_service():
    tokens = start_token_server(users={"alice": ALICE["password"]})
    yield tokens
    tokens.stop()


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(lambda token: {"access_token": token}, id="access_token-without-expires_in"),
        pytest.param(lambda token: {"access_token": token, "expires_in": 1}, id="tiny-expires_in"),
    ],
)
def test_token_service_answering_access_token_or_a_tiny_lifetime_still_authenticates(
    registry, token_service, proxy_factory, answer
):
    def rewrite(method, path, headers, body):
        status, reply, content = forward(token_service.url, method, path, headers, body)
        if status == 200:
            content = json.dumps(answer(json.loads(content)["token"])).encode()
        return status, {"Content-Type": "application/json"}, content

    token_front = proxy_factory(token_service.url, intercept=rewrite)
    destination = start_registry(token_auth={**token_service.registry_config, "realm": f"{token_front.url}/token"})
    try:
        digest = push_random_image(registry.url, "team/api", "1.0")
        copy_image(
            location(registry.url, "team/api", "1.0"), location(destination.url, "prod/api", "1.0", credentials=ALICE)
        )
        assert get_manifest_digest(destination.url, "prod/api", "1.0", auth=("alice", ALICE["password"])) == digest
    finally:
        destination.stop()


def test_token_refused_again_after_re_authenticating_fails_after_one_renewal(
    token_service, other_registry, proxy_factory
):
    source = start_registry(token_auth=token_service.registry_config)
    try:
        push_random_image(source.url, "team/api", "1.0", layers=1, auth=("alice", ALICE["password"]))
        proxy = proxy_factory(source.url)
        challenge = (
            f'Bearer realm="{token_service.realm}",service="{token_service.service}",'
            'scope="repository:team/api:pull",error="invalid_token"'
        )
        expired = b'{"errors":[{"code":"UNAUTHORIZED","message":"token expired"}]}'
        proxy.add(
            "status",
            method="GET",
            path=BLOB_GET,
            status=401,
            headers={"WWW-Authenticate": challenge},
            body=expired,
            times=None,
        )
        token_service.requests.clear()

        with pytest.raises(AuthenticationError, match="after re-authenticating") as caught:
            copy_image(
                location(proxy.url, "team/api", "1.0", credentials=ALICE),
                location(other_registry.url, "prod/api", "1.0"),
                parallelism=1,
            )

        assert "token expired" in caught.value.message and not caught.value.retryable
        # One token for the manifest, one renewal when the blob was refused; then a clear failure, not a loop of
        # tokens. On a loaded machine a retried call can take one token more, so the bound is a loop's absence.
        assert 2 <= len(token_service.requests) <= 3
        assert 2 <= len(proxy.requests("GET", BLOB_GET)) <= 4  # at most the whole exchange twice
    finally:
        source.stop()
