"""Location handling: relative upload URLs resolve against the request and keep their query; blob redirects to a
storage host, and upload Locations on another host or on the registry's own host over plain HTTP, get none of the
registry's credentials."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from ci_integrations.registry import copy_image
from ci_integrations.registry.destinations import same_origin
from tests.registry.conftest import location
from tests.registry.fault_proxy import tls_certificate
from tests.support.images import get_manifest_digest, push_random_image
from tests.support.registry_server import start_registry

ALICE = {"username": "alice", "password": "redirect-s3cret"}


def test_relative_upload_locations_resolve_and_keep_their_query(registry, other_registry, proxy_factory):
    digest = push_random_image(registry.url, "team/api", "1.0")
    proxy = proxy_factory(other_registry.url)
    proxy.add("relative_location", method="POST", path=r"/blobs/uploads/", times=None)

    copy_image(location(registry.url, "team/api", "1.0"), location(proxy.url, "prod/api", "1.0"))

    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    puts = proxy.requests("PUT", r"/blobs/uploads/")
    assert puts and all("_state=" in e.path and "digest=sha256" in e.path for e in puts)


def test_blob_redirect_to_storage_never_carries_registry_credentials(other_registry, proxy_factory):
    source = start_registry(htpasswd={"alice": ALICE["password"]})
    try:
        auth = ("alice", ALICE["password"])
        digest = push_random_image(source.url, "team/api", "1.0", auth=auth)

        def storage(method, path, headers, body):
            # A presigned-URL storage host: serves the blob it is asked for (fetched here with the test's own auth).
            blob = re.search(r"/blob/(sha256:[0-9a-f]+)", path).group(1)
            data = requests.get(f"{source.url}/v2/team/api/blobs/{blob}", auth=auth, timeout=10).content
            return 200, {"Content-Type": "application/octet-stream"}, data

        storage_host = proxy_factory(source.url, intercept=storage)

        def front(method, path, headers, body):
            found = re.match(r"^/v2/team/api/blobs/(sha256:[0-9a-f]+)$", path)
            if method == "GET" and found and headers.get("Authorization"):
                target = f"{storage_host.url}/blob/{found.group(1)}?X-Amz-Signature=abc123&X-Amz-Expires=60"
                return 307, {"Location": target}, b""
            return None

        registry_front = proxy_factory(source.url, intercept=front)

        copy_image(
            location(registry_front.url, "team/api", "1.0", credentials=ALICE),
            location(other_registry.url, "prod/api", "1.0"),
        )

        assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
        fetched = storage_host.requests("GET", r"/blob/")
        assert len(fetched) == 3
        assert all("X-Amz-Signature=abc123" in e.path for e in fetched)  # the presigned query survived
        assert not any("Authorization" in e.headers for e in fetched)
    finally:
        source.stop()


def test_upload_locations_on_another_host_never_carry_registry_credentials(registry, proxy_factory):
    destination = start_registry(htpasswd={"alice": ALICE["password"]})
    try:
        digest = push_random_image(registry.url, "team/api", "1.0")
        auth = ("alice", ALICE["password"])
        framing = {"host", "content-length", "connection", "transfer-encoding"}

        def forward(method, path, headers, body, *, own_auth=None):
            sent = {k: v for k, v in headers.items() if k.lower() not in framing}
            if own_auth:
                sent.pop("Authorization", None)
            response = requests.request(
                method, f"{destination.url}{path}", headers=sent, data=body, auth=own_auth, timeout=30
            )
            answer = {k: v for k, v in response.headers.items() if k.lower() not in framing}
            return response.status_code, answer, response.content

        def upload_host_routes(method, path, headers, body):
            # Another host taking uploads (as some registries hand out): it accepts them on its own authority.
            return forward(method, path, headers, body, own_auth=auth)

        upload_host = proxy_factory(destination.url, intercept=upload_host_routes)

        def front(method, path, headers, body):
            status, answer, content = forward(method, path, headers, body)
            if method == "POST" and "Location" in answer:
                moved = urlsplit(urljoin(destination.url, answer["Location"]))
                answer["Location"] = f"{upload_host.url}{moved.path}?{moved.query}"
            return status, answer, content

        registry_front = proxy_factory(destination.url, intercept=front)

        copy_image(
            location(registry.url, "team/api", "1.0"),
            location(registry_front.url, "prod/api", "1.0", credentials=ALICE),
        )

        assert get_manifest_digest(destination.url, "prod/api", "1.0", auth=auth) == digest
        uploads = upload_host.requests("PUT")
        assert len(uploads) == 3
        assert not any(key.lower() == "authorization" for entry in uploads for key in entry.headers)
    finally:
        destination.stop()


def test_an_upload_location_on_plain_http_for_the_registrys_own_host_gets_no_credentials(
    registry, proxy_factory, tmp_path
):
    destination = start_registry(htpasswd={"alice": ALICE["password"]})
    try:
        digest = push_random_image(registry.url, "team/api", "1.0")
        auth = ("alice", ALICE["password"])
        framing = {"host", "content-length", "connection", "transfer-encoding"}

        def forward(method, path, headers, body, *, own_auth=None):
            sent = {k: v for k, v in headers.items() if k.lower() not in framing}
            if own_auth:
                sent.pop("Authorization", None)
            response = requests.request(
                method, f"{destination.url}{path}", headers=sent, data=body, auth=own_auth, timeout=30
            )
            answer = {k: v for k, v in response.headers.items() if k.lower() not in framing}
            return response.status_code, answer, response.content

        def front(method, path, headers, body):
            if path.startswith("/plain/"):
                # Reached over plain HTTP: the host takes the upload on its own authority, so the copy can finish.
                return forward(method, path.removeprefix("/plain"), headers, body, own_auth=auth)
            status, answer, content = forward(method, path, headers, body)
            if method == "POST" and "Location" in answer:
                # The HTTPS registry hands out an upload URL on its own host and port, but over plain HTTP.
                moved = urlsplit(urljoin(destination.url, answer["Location"]))
                answer["Location"] = f"{registry_front.plain_url}/plain{moved.path}?{moved.query}"
            return status, answer, content

        certificate, key = tls_certificate(str(tmp_path))
        registry_front = proxy_factory(destination.url, intercept=front, tls=(certificate, key))

        copy_image(
            location(registry.url, "team/api", "1.0"),
            location(registry_front.url, "prod/api", "1.0", credentials=ALICE, ca_bundle=certificate),
        )

        assert get_manifest_digest(destination.url, "prod/api", "1.0", auth=auth) == digest
        plain = [e for e in registry_front.log if not e.tls]
        assert len(plain) == 3 and all(e.method == "PUT" and e.path.startswith("/plain/") for e in plain)
        assert not any(key.lower() == "authorization" for entry in plain for key in entry.headers)
        # Over HTTPS the same host did get them: the rule is about the scheme, not a blanket refusal.
        assert any("Authorization" in entry.headers for entry in registry_front.log if entry.tls)
    finally:
        destination.stop()


@pytest.mark.parametrize(
    ("url", "own"),
    [
        ("https://registry.example/v2/a/blobs/uploads/1", True),
        ("https://REGISTRY.example:443/v2/a/blobs/uploads/1", True),
        ("http://registry.example/v2/a/blobs/uploads/1", False),
        ("http://registry.example:443/v2/a/blobs/uploads/1", False),
        ("https://registry.example:8443/v2/a/blobs/uploads/1", False),
        ("https://storage.example/v2/a/blobs/uploads/1", False),
    ],
)
def test_credentials_go_only_to_the_registrys_own_scheme_host_and_port(url, own):
    assert same_origin(url, "https://registry.example") is own
