"""Location handling: relative upload URLs resolve against the request and keep their query; blob redirects to a
storage host follow without the registry's credentials."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import requests

from ci_integrations.registry import copy_image
from tests.registry.conftest import location
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
