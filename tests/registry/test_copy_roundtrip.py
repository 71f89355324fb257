"""Copies between real docker-registry instances: digests survive, and only the bytes that must move do."""

from __future__ import annotations

import hashlib
import threading

import pytest

from ci_integrations.registry import (
    DigestMismatch,
    ImageMismatch,
    NotFound,
    TagConflict,
    TransientError,
    check_access,
    copy_image,
    plan_copy,
    resolve_manifest,
)
from tests.registry.conftest import location, spec
from tests.support.images import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    blob_exists,
    get_manifest,
    get_manifest_digest,
    push_index,
    push_random_image,
)


@pytest.mark.parametrize(("media", "media_type"), [("oci", OCI_MANIFEST), ("docker", DOCKER_MANIFEST)])
def test_single_image_arrives_with_identical_digest_and_bytes(registry, other_registry, media, media_type):
    digest = push_random_image(registry.url, "team/api", "1.0", media=media, layers=3)
    source_bytes, _ = get_manifest(registry.url, "team/api", "1.0")

    summary = copy_image(location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))

    assert summary.digest == digest
    assert summary.media_type == media_type
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    stored_bytes, stored_type = get_manifest(other_registry.url, "prod/api", "1.0")
    assert stored_bytes == source_bytes  # original bytes, not a re-serialisation
    assert stored_type == media_type
    assert summary.manifests == 1 and summary.blobs_copied == 4  # 3 layers + config
    assert summary.bytes_transferred > 3 * 4096


@pytest.mark.parametrize(("media", "index_type"), [("oci", OCI_INDEX), ("docker", DOCKER_LIST)])
def test_index_and_every_platform_arrive_with_identical_digests(registry, other_registry, media, index_type):
    digest = push_index(registry.url, "team/api", "multi", media=media, platforms=("linux/amd64", "linux/arm64"))
    source_index, _ = get_manifest(registry.url, "team/api", "multi")

    summary = copy_image(location(registry.url, "team/api", "multi"), location(other_registry.url, "prod/api", "multi"))

    assert summary.digest == digest and summary.media_type == index_type
    assert get_manifest(other_registry.url, "prod/api", "multi") == (source_index, index_type)
    import json

    for child in json.loads(source_index)["manifests"]:
        assert get_manifest_digest(other_registry.url, "prod/api", child["digest"]) == child["digest"]
    assert summary.manifests == 3
    assert summary.blobs_copied == 6


def test_same_registry_promotion_mounts_every_blob_and_moves_no_layer_bytes(registry, proxy_factory):
    digest = push_random_image(registry.url, "team/api", "1.0", layers=4, layer_size=64 * 1024)
    proxy = proxy_factory(registry.url)

    summary = copy_image(location(proxy.url, "team/api", "1.0"), location(proxy.url, "prod/api", "1.0"))

    assert summary.blobs_mounted == 5 and summary.blobs_copied == 0 and summary.bytes_transferred == 0
    assert summary.bytes_mounted > 4 * 64 * 1024 and summary.bytes_skipped == 0  # the layers and the config
    assert get_manifest_digest(registry.url, "prod/api", "1.0") == digest
    assert proxy.requests("GET", r"/blobs/sha256:") == []  # nothing read from the source
    uploaded = sum(e.bytes_up for e in proxy.requests(path=r"/blobs/"))
    assert uploaded == 0
    assert all("mount=" in e.path for e in proxy.requests("POST", r"/blobs/uploads/"))


def test_recopy_of_the_same_digest_moves_nothing(registry, other_registry, proxy_factory):
    push_random_image(registry.url, "team/api", "1.0", layers=2, layer_size=32 * 1024)
    src, dst = location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0")
    copy_image(src, dst)
    proxy = proxy_factory(other_registry.url)

    again = copy_image(src, location(proxy.url, "prod/api", "1.0"))

    assert (again.bytes_transferred, again.blobs_copied, again.manifests) == (0, 0, 0)
    assert [e.method for e in proxy.log] == ["HEAD"]  # one HEAD of the tag, no blob traffic at all


def test_new_tag_for_an_image_already_at_the_destination_copies_no_blobs(registry, other_registry):
    digest = push_random_image(registry.url, "team/api", "1.0")
    copy_image(location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))

    summary = copy_image(location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "stable"))

    assert summary.blobs_copied == 0 and summary.blobs_skipped == 3 and summary.bytes_transferred == 0
    assert summary.bytes_skipped > 0 and summary.bytes_mounted == 0  # every byte was there already
    assert get_manifest_digest(other_registry.url, "prod/api", "stable") == digest


def test_interrupted_copy_completes_when_run_again(registry, other_registry, proxy_factory):
    digest = push_random_image(registry.url, "team/api", "1.0", layers=4, layer_size=16 * 1024)
    proxy = proxy_factory(other_registry.url)
    # The destination dies for good after two blobs land.
    proxy.add("status", method="PUT", path=r"/blobs/uploads/", status=503, times=None, after=2)

    with pytest.raises(TransientError):
        copy_image(
            location(registry.url, "team/api", "1.0"),
            location(proxy.url, "prod/api", "1.0", retry_attempts=2),
            parallelism=1,
        )
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") is None  # no half image under the tag
    proxy.clear()

    summary = copy_image(location(registry.url, "team/api", "1.0"), location(proxy.url, "prod/api", "1.0"))

    assert summary.digest == digest
    assert summary.blobs_skipped == 2 and summary.blobs_copied == 3
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest


def test_rerun_after_partial_copy_skips_blobs_already_there(registry, other_registry):
    digest = push_random_image(registry.url, "team/api", "1.0", layers=3)
    copy_image(location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", digest))
    # By-digest push first (as an interrupted run might leave it), then the tag.
    summary = copy_image(location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))
    assert summary.blobs_copied == 0 and summary.bytes_transferred == 0
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest


def test_expected_digest_guards_against_a_moved_source_tag(registry, other_registry):
    push_random_image(registry.url, "team/api", "1.0")
    other = "sha256:" + hashlib.sha256(b"something else").hexdigest()

    with pytest.raises(ImageMismatch) as caught:
        copy_image(
            location(registry.url, "team/api", "1.0"),
            location(other_registry.url, "prod/api", "1.0"),
            expected_digest=other,
        )

    assert other in caught.value.message
    assert isinstance(caught.value, DigestMismatch)
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") is None


def test_copy_by_digest_pushes_without_a_tag(registry, other_registry):
    digest = push_random_image(registry.url, "team/api", "1.0")
    summary = copy_image(location(registry.url, "team/api", digest), location(other_registry.url, "prod/api", digest))
    assert summary.digest == digest
    assert get_manifest_digest(other_registry.url, "prod/api", digest) == digest


def test_destination_digest_other_than_the_source_is_refused(registry, other_registry):
    push_random_image(registry.url, "team/api", "1.0")
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch):
        copy_image(location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", wrong))


def test_immutable_tag_holding_another_digest_fails_as_tag_conflict(registry, other_registry, proxy_factory):
    first = push_random_image(registry.url, "team/api", "1.0")
    second = push_random_image(registry.url, "team/api", "2.0")
    copy_image(location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "live"))
    proxy = proxy_factory(other_registry.url)
    # What ECR/Harbor answer for an immutable tag.
    message = b'{"errors":[{"code":"TAG_INVALID","message":"tag live is immutable and cannot be overwritten"}]}'
    proxy.add("status", method="PUT", path=r"/manifests/live$", status=400, body=message, times=None)

    with pytest.raises(TagConflict) as caught:
        copy_image(location(registry.url, "team/api", "2.0"), location(proxy.url, "prod/api", "live"))

    assert caught.value.existing_digest == first
    assert "immutable" in caught.value.message
    assert get_manifest_digest(other_registry.url, "prod/api", "live") == first != second


def test_missing_source_is_not_found_and_not_retried(registry, other_registry, proxy_factory):
    proxy = proxy_factory(registry.url)
    with pytest.raises(NotFound):
        copy_image(location(proxy.url, "team/api", "nope"), location(other_registry.url, "prod/api", "nope"))
    assert len(proxy.requests("GET", r"/manifests/nope")) == 1


def test_progress_reports_every_blob_and_byte(registry, other_registry):
    push_random_image(registry.url, "team/api", "1.0", layers=3, layer_size=3 * 1024 * 1024)
    seen = []

    summary = copy_image(
        location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"), progress=seen.append
    )

    last = max(seen, key=lambda p: (p.blobs_done, p.bytes_done))
    assert last.blobs_done == last.blobs_total == 4
    assert last.bytes_done == last.bytes_total == summary.bytes_transferred
    assert any(0 < p.bytes_done < p.bytes_total for p in seen)  # reported while streaming, not only at the end


def test_plan_copy_reports_what_would_move(registry, other_registry):
    push_random_image(registry.url, "team/api", "1.0", layers=2, layer_size=10_000)
    copy_image(location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "old"))
    push_random_image(registry.url, "team/api", "2.0", layers=1, layer_size=10_000)

    plan = plan_copy(location(registry.url, "team/api", "2.0"), location(other_registry.url, "prod/api", "old"))
    same = plan_copy(location(registry.url, "team/api", "2.0"), location(registry.url, "prod/api", "2.0"))

    assert plan.blobs_total == 2 and plan.blobs_present == 0 and plan.bytes_to_move == plan.bytes_total
    assert plan.tag_conflict_digest == get_manifest_digest(other_registry.url, "prod/api", "old")
    assert same.blobs_mountable == 2 and same.bytes_to_move == 0 and same.tag_conflict_digest is None


def test_resolve_manifest_and_check_access(registry):
    digest = push_random_image(registry.url, "team/api", "1.0")
    info = resolve_manifest(location(registry.url, "team/api", "1.0"))
    assert (info.digest, info.media_type) == (digest, OCI_MANIFEST) and info.size > 0
    check_access(location(registry.url, "team/api", "1.0"))
    check_access(location(registry.url, "prod/api", "1.0"), push=True)
    with pytest.raises(NotFound):
        check_access(location(registry.url, "team/api", "missing"))
    with pytest.raises(NotFound):
        resolve_manifest(location(registry.url, "team/api", "missing"))


def test_two_concurrent_copies_of_one_image_both_succeed(registry, other_registry):
    digest = push_random_image(registry.url, "team/api", "1.0", layers=4, layer_size=256 * 1024)
    results, errors = [], []

    def run():
        try:
            results.append(
                copy_image(location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))
            )
        except Exception as exc:  # pragma: no cover - shown in the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == [] and [r.digest for r in results] == [digest, digest]
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    assert all(blob_exists(other_registry.url, "prod/api", d) for d in _blob_digests(other_registry.url))


def _blob_digests(url: str) -> list[str]:
    import json

    body, _ = get_manifest(url, "prod/api", "1.0")
    manifest = json.loads(body)
    return [manifest["config"]["digest"]] + [layer["digest"] for layer in manifest["layers"]]


def test_spec_options_are_used_for_the_plain_copy(registry, other_registry):
    # A registry spec with tuning options still copies; unknown providers are refused with a clear message.
    push_random_image(registry.url, "team/api", "1.0")
    dst = location(spec(other_registry.url, read_timeout=30, connect_timeout=5), "prod/api", "1.0")
    assert copy_image(location(registry.url, "team/api", "1.0"), dst).manifests == 1
