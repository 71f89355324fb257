"""Registry faults injected by a proxy in front of a real registry: bounded retries, typed errors, no half images."""

from __future__ import annotations

import collections
import email.utils
import time

import pytest

from ci_integrations.registry import AccessDenied, DigestMismatch, TransientError, copy_image
from tests.registry.conftest import location
from tests.support.images import blob_exists, get_manifest_digest, push_random_image

BLOB_GET = r"/v2/team/api/blobs/sha256:"
UPLOAD_PUT = r"/blobs/uploads/"


@pytest.fixture
def image(registry):
    return push_random_image(registry.url, "team/api", "1.0", layers=2, layer_size=256 * 1024)


def _copy(src_url, dst_url, **options):
    return copy_image(location(src_url, "team/api", "1.0", **options), location(dst_url, "prod/api", "1.0", **options))


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_on_a_blob_are_retried_until_it_arrives(registry, other_registry, proxy_factory, image, status):
    proxy = proxy_factory(registry.url)
    proxy.add("status", method="GET", path=BLOB_GET, status=status, times=2)

    summary = _copy(proxy.url, other_registry.url)

    assert summary.digest == image
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == image
    assert [e.status for e in proxy.requests("GET", BLOB_GET)].count(status) == 2


def test_server_errors_on_manifest_reads_are_retried(registry, other_registry, proxy_factory, image):
    proxy = proxy_factory(registry.url)
    proxy.add("status", method="GET", path=r"/manifests/1.0$", status=502, times=2)
    assert _copy(proxy.url, other_registry.url).digest == image
    assert len(proxy.requests("GET", r"/manifests/1.0$")) == 3


def test_429_waits_for_retry_after_in_seconds(registry, other_registry, proxy_factory, image):
    proxy = proxy_factory(registry.url)
    proxy.add("status", method="GET", path=r"/manifests/1.0$", status=429, headers={"Retry-After": "1"})

    started = time.monotonic()
    summary = _copy(proxy.url, other_registry.url)

    assert summary.digest == image
    assert time.monotonic() - started >= 0.95  # honoured the registry, not our 10 ms backoff


def test_429_waits_for_retry_after_as_an_http_date(registry, other_registry, proxy_factory, image):
    proxy = proxy_factory(registry.url)
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    proxy.add("status", method="GET", path=BLOB_GET, status=429, headers={"Retry-After": when})

    started = time.monotonic()
    summary = _copy(proxy.url, other_registry.url)

    assert summary.digest == image
    assert time.monotonic() - started >= 0.95


def test_persistent_503_gives_up_after_bounded_attempts_without_pushing_the_manifest(
    registry, other_registry, proxy_factory, image
):
    proxy = proxy_factory(registry.url)
    proxy.add("status", method="GET", path=BLOB_GET, status=503, times=None)

    with pytest.raises(TransientError) as caught:
        _copy(proxy.url, other_registry.url, retry_attempts=3)

    assert caught.value.retryable and caught.value.status == 503
    assert "3 attempts" in caught.value.message and "injected fault" in caught.value.message
    per_blob = collections.Counter(e.path for e in proxy.requests("GET", BLOB_GET))
    assert max(per_blob.values()) == 3  # the blob that gave up tried exactly retry_attempts times, others no more
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") is None


def test_zero_retry_attempts_still_makes_one_attempt_and_fails_with_a_typed_error(
    registry, other_registry, proxy_factory, image
):
    assert _copy(registry.url, other_registry.url, retry_attempts=0).digest == image
    proxy = proxy_factory(registry.url)
    proxy.add("status", method="GET", path=BLOB_GET, status=503, times=None)
    with pytest.raises(TransientError, match="after 1 attempts"):
        copy_image(
            location(proxy.url, "team/api", "1.0", retry_attempts=0),
            location(other_registry.url, "prod/other", "1.0", retry_attempts=0),
        )
    assert max(collections.Counter(e.path for e in proxy.requests("GET", BLOB_GET)).values()) == 1  # none retried


def test_connection_reset_halfway_through_a_blob_is_retried(registry, other_registry, proxy_factory, image):
    proxy = proxy_factory(registry.url)
    proxy.add("reset", method="GET", path=BLOB_GET, times=1)

    summary = _copy(proxy.url, other_registry.url)

    assert summary.digest == image and summary.bytes_transferred > 2 * 256 * 1024
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == image
    assert [e.fault for e in proxy.requests("GET", BLOB_GET)].count("reset") == 1


def test_reset_during_upload_starts_a_new_upload_session(registry, other_registry, proxy_factory, image):
    proxy = proxy_factory(other_registry.url)
    proxy.add("reset", method="PUT", path=UPLOAD_PUT, times=1)

    summary = _copy(registry.url, proxy.url)

    assert summary.digest == image
    assert len(proxy.requests("POST", UPLOAD_PUT)) == summary.blobs_copied + 1  # one extra session for the retry


def test_resets_every_time_end_in_a_transient_error_and_no_manifest(registry, other_registry, proxy_factory, image):
    proxy = proxy_factory(registry.url)
    proxy.add("reset", method="GET", path=BLOB_GET, times=None)

    with pytest.raises(TransientError) as caught:
        _copy(proxy.url, other_registry.url, retry_attempts=2)

    assert "source" in caught.value.message or "connection" in caught.value.message
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") is None


def test_hanging_server_times_out_and_fails_in_bounded_time(registry, other_registry, proxy_factory, image):
    proxy = proxy_factory(registry.url)
    proxy.add("hang", method="GET", path=BLOB_GET, times=None, hang_seconds=10)

    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        _copy(proxy.url, other_registry.url, retry_attempts=2, stall_timeout=0.3)

    assert time.monotonic() - started < 5
    assert "timed out" in caught.value.message
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") is None


def test_source_serving_corrupt_bytes_fails_with_digest_mismatch_and_nothing_lands(
    registry, other_registry, proxy_factory, image
):
    proxy = proxy_factory(registry.url)
    proxy.add("corrupt", method="GET", path=BLOB_GET, times=None)

    with pytest.raises(DigestMismatch) as caught:
        _copy(proxy.url, other_registry.url, retry_attempts=2)

    corrupted = {e.path.rsplit("/", 1)[1] for e in proxy.requests("GET", BLOB_GET)}
    assert any(digest in caught.value.message for digest in corrupted)
    assert not any(blob_exists(other_registry.url, "prod/api", digest) for digest in corrupted)
    # Bounded: each blob was fetched at most retry_attempts times.
    assert len(proxy.requests("GET", BLOB_GET)) <= 2 * len(corrupted)
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") is None


def test_corrupt_bytes_are_caught_while_streaming_before_the_upload_completes(
    registry, other_registry, proxy_factory, image
):
    source = proxy_factory(registry.url)
    source.add("corrupt", method="GET", path=BLOB_GET, times=None)
    destination = proxy_factory(other_registry.url)

    with pytest.raises(DigestMismatch):
        _copy(source.url, destination.url, retry_attempts=2)

    uploads = destination.requests("PUT", UPLOAD_PUT)
    assert uploads and all(e.fault == "client_aborted" for e in uploads)  # never a complete body to the registry


def test_one_corrupt_read_is_retried_and_the_copy_completes(registry, other_registry, proxy_factory, image):
    proxy = proxy_factory(registry.url)
    proxy.add("corrupt", method="GET", path=BLOB_GET, times=1)
    assert _copy(proxy.url, other_registry.url).digest == image


def test_registry_error_json_becomes_a_typed_error_with_the_registrys_message(
    registry, other_registry, proxy_factory, image
):
    proxy = proxy_factory(other_registry.url)
    body = b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied","detail":null}]}'
    proxy.add("status", method="POST", path=UPLOAD_PUT, status=403, body=body, times=None)

    with pytest.raises(AccessDenied) as caught:
        _copy(registry.url, proxy.url)

    assert "requested access to the resource is denied" in caught.value.message
    assert not caught.value.retryable
    assert len(proxy.requests("POST", UPLOAD_PUT)) <= 3  # one per blob at most: 403 is never retried
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") is None
