"""Documented behaviours of real registries, reproduced by the fault proxy in front of a real docker-registry.

Each test names its source: issue 15 ("Registry fidelity") lists them with the registries' docs and trackers.
"""

from __future__ import annotations

import json
import time

import pytest

from ci_integrations.registry import copy_image, plan_copy
from ci_integrations.registry.errors import PersistentServerError, RateLimited, RegistryPolicyViolation, TagConflict
from ci_integrations.registry.providers import provider_name_for_host
from tests.registry.conftest import location
from tests.support.images import get_manifest_digest, push_random_image

MOUNT = r"/blobs/uploads/\?mount="
UPLOADS = r"/blobs/uploads/"


def _oci_error(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


def _image_in_both_repositories(url: str) -> str:
    digest = push_random_image(url, "team/api", "1.0", layers=3, layer_size=128 * 1024)
    copy_image(location(url, "team/api", "1.0"), location(url, "prod/api", "old"))
    return digest


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (405, b""),  # Nexus and keppel refuse the mount parameter
        (400, _oci_error("UNSUPPORTED", "cross-repository mount is not supported")),
        (401, _oci_error("UNAUTHORIZED", "project team not found")),  # Harbor, for a project it will not name
    ],
)
def test_a_refused_mount_costs_no_upload_when_the_destination_already_has_the_blobs(
    registry, proxy_factory, status, body
):
    """Issue 15 item 2: ECR answers mounts as ordinary uploads unless BLOB_MOUNTING is on, Artifactory refuses them
    but shares blobs, so HEAD comes before the mount and a blob already there is never sent again (P9)."""
    digest = _image_in_both_repositories(registry.url)
    proxy = proxy_factory(registry.url)
    proxy.add("status", method="POST", path=MOUNT, status=status, body=body, times=None)

    summary = copy_image(location(proxy.url, "team/api", "1.0"), location(proxy.url, "prod/api", "2.0"))

    assert summary.digest == digest and get_manifest_digest(registry.url, "prod/api", "2.0") == digest
    assert summary.bytes_transferred == 0 and summary.blobs_skipped == 4
    assert proxy.requests("POST", MOUNT) == [] and proxy.requests("PUT", UPLOADS) == []


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, _oci_error("UNAUTHORIZED", "project team not found")),  # Harbor
        (405, b""),  # Nexus, keppel
        (400, _oci_error("UNSUPPORTED", "mount failed")),
        (500, _oci_error("UNKNOWN", "mount failed")),  # ECR Public
    ],
)
def test_a_mount_answered_with_an_error_falls_back_to_a_normal_upload(registry, proxy_factory, status, body):
    """Issue 15 item 3: any answer to a mount but 201 or 202 falls back to a normal upload, asked once (no retries of
    a refusal); only a failed normal upload fails the copy."""
    digest = push_random_image(registry.url, "team/api", "1.0", layers=2, layer_size=64 * 1024)
    proxy = proxy_factory(registry.url)
    proxy.add("status", method="POST", path=MOUNT, status=status, body=body, times=None)

    summary = copy_image(location(proxy.url, "team/api", "1.0"), location(proxy.url, "prod/api", "1.0"))

    assert summary.digest == digest and get_manifest_digest(registry.url, "prod/api", "1.0") == digest
    assert summary.blobs_copied == 3 and summary.blobs_mounted == 0
    assert len(proxy.requests("POST", MOUNT)) == 3  # one try per blob


def test_preflight_counts_the_bytes_a_registry_without_mounting_will_really_move(registry):
    """Issue 15 item 2: with `blob_mounting: false` (ECR without BLOB_MOUNTING, Artifactory) the preflight counts the
    missing blobs as bytes to move, not as mounted; blobs already there count as nothing."""
    push_random_image(registry.url, "team/api", "1.0", layers=2, layer_size=64 * 1024)
    src = location(registry.url, "team/api", "1.0", blob_mounting=False)
    dst = location(registry.url, "prod/api", "1.0", blob_mounting=False)

    plan = plan_copy(src, dst)
    assert plan.bytes_to_move == plan.bytes_total > 128 * 1024

    mounting = plan_copy(location(registry.url, "team/api", "1.0"), location(registry.url, "prod/api", "1.0"))
    assert mounting.bytes_to_move == 0


def test_a_500_repeated_with_the_same_body_is_permanent_after_three_tries(registry, other_registry, proxy_factory):
    """Issue 15 item 10: a 500 for a Windows foreign-layer manifest repeats forever; after three identical answers
    the copy stops retrying and the error is not retryable (the promotion does not start over either)."""
    push_random_image(registry.url, "team/api", "1.0", layers=1, layer_size=1024)
    proxy = proxy_factory(registry.url)
    body = _oci_error("UNKNOWN", "unknown error: foreign layer")
    proxy.add("status", method="GET", path=r"/manifests/1.0", status=500, body=body, times=None)

    with pytest.raises(PersistentServerError) as caught:
        copy_image(
            location(proxy.url, "team/api", "1.0", retry_attempts=10), location(other_registry.url, "prod/api", "1.0")
        )

    assert not caught.value.retryable and "3 times" in caught.value.message
    assert len(proxy.requests("GET", r"/manifests/1.0")) == 3


def test_a_429_without_retry_after_waits_for_the_rate_limit_reset(registry, other_registry, proxy_factory):
    """Issue 15 item 7: Docker Hub's 429 carries ratelimit-limit, ratelimit-remaining and ratelimit-reset but no
    Retry-After (docs.docker.com, Docker Hub usage and limits: "pull usage and limits"); a reset that comes soon
    is waited for."""
    digest = push_random_image(registry.url, "team/api", "1.0", layers=1, layer_size=1024)
    proxy = proxy_factory(registry.url)
    headers = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600", "ratelimit-reset": "1"}
    proxy.add("status", method="GET", path=r"/manifests/1.0", status=429, headers=headers, times=1)

    started = time.monotonic()
    summary = copy_image(location(proxy.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))

    assert summary.digest == digest and time.monotonic() - started >= 0.9


def test_a_rate_limit_that_resets_too_late_fails_at_once_saying_when(registry, other_registry, proxy_factory):
    """Issue 15 item 7: when the reset does not fit in the time the work has, fail with "pull limit reached at
    <host>; resets at HH:MM UTC" after one request, instead of spending more of the limit."""
    push_random_image(registry.url, "team/api", "1.0", layers=1, layer_size=1024)
    proxy = proxy_factory(registry.url)
    reset = int(time.time()) + 3 * 3600
    headers = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "0;w=21600", "ratelimit-reset": str(reset)}
    proxy.add("status", method="GET", path=r"/manifests/1.0", status=429, headers=headers, times=None)

    with pytest.raises(RateLimited) as caught:
        copy_image(location(proxy.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))

    expected = time.strftime("%H:%M UTC", time.gmtime(reset))
    assert caught.value.message == f"pull limit reached at {proxy.host}; resets at {expected}"
    assert not caught.value.retryable and len(proxy.requests("GET", r"/manifests/1.0")) == 1


def test_a_destination_that_holds_the_digest_costs_no_pull_at_the_source(registry, other_registry, proxy_factory):
    """Issue 15 item 7: on Docker Hub every manifest GET counts as a pull (each architecture of an index too), so a
    copy whose destination already holds the expected digest never reads the source."""
    digest = push_random_image(registry.url, "team/api", "1.0", layers=1, layer_size=1024)
    dst = location(other_registry.url, "prod/api", "1.0")
    copy_image(location(registry.url, "team/api", "1.0"), dst)
    proxy = proxy_factory(registry.url)

    summary = copy_image(location(proxy.url, "team/api", "1.0"), dst, expected_digest=digest)

    assert summary.digest == digest and proxy.log == []


def test_harbor_project_policy_violation_is_reported_as_the_policy_not_a_tag_conflict(
    registry, other_registry, proxy_factory
):
    """Issue 15 item 4: Harbor answers a pull its project's vulnerability or signature policy forbids with 412
    PROJECTPOLICYVIOLATION; that is the registry's policy speaking, with its own message."""
    push_random_image(registry.url, "team/api", "1.0", layers=1, layer_size=1024)
    proxy = proxy_factory(registry.url)
    words = "current image with 2 vulnerabilities cannot be pulled due to configured policy in 'Prevent images"
    proxy.add(
        "status",
        method="GET",
        path=r"/manifests/",
        status=412,
        body=_oci_error("PROJECTPOLICYVIOLATION", words),
        times=None,
    )

    with pytest.raises(RegistryPolicyViolation) as caught:
        copy_image(location(proxy.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))

    assert not isinstance(caught.value, TagConflict)
    assert "PROJECTPOLICYVIOLATION" in caught.value.message and "vulnerabilities" in caught.value.message


@pytest.mark.parametrize(
    "host",
    ["123456789012.dkr.ecr-fips.us-east-1.amazonaws.com", "123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com"],
)
def test_ecr_fips_hosts_are_recognised_as_ecr(host):
    """Issue 15 item 11: FIPS endpoints are ecr-fips.<region>.amazonaws.com (AWS service endpoints for ECR)."""
    assert provider_name_for_host(host) == "ecr"


def test_official_docker_hub_images_are_asked_for_under_library(registry, other_registry, proxy_factory):
    """Issue 15 item 7: Docker Hub serves official images under library/ (`docker pull nginx` is library/nginx;
    distribution/reference ParseNormalizedNamed), in bucket repositories as in typed references. A dockerhub
    registry pointed at a local registry stands in for a pull-through mirror of Hub, which names them the same."""
    from ci_integrations.registry import RegistrySpec, parse_reference

    digest = push_random_image(registry.url, "library/nginx", "1.27")
    hub = proxy_factory(registry.url)
    source = RegistrySpec("dockerhub", hub.url)

    copy_image(location(source, "nginx", "1.27"), location(other_registry.url, "mirror/nginx", "1.27"))

    assert get_manifest_digest(other_registry.url, "mirror/nginx", "1.27") == digest
    assert hub.requests(path=r"^/v2/nginx/") == [] and hub.requests("GET", r"^/v2/library/nginx/manifests/")
    assert location(source, "team/app", "1").repository == "team/app"  # only one-component names are official
    assert parse_reference("nginx:1.27").repository == "library/nginx"


def test_a_budget_resized_once_the_bytes_are_known_counts_from_its_start_not_from_now():
    """Issue 15 item 12 (the gap left): a promotion's default deadline grows with the bytes to move once they are
    known, counted from the promotion's first try, so a retried copy cannot stretch the deadline each time."""
    from ci_integrations.registry.budget import Budget

    budget = Budget(60, what="first")
    time.sleep(0.3)
    budget.set_total(10, what="sized")

    assert 9.0 < budget.remaining() < 9.75 and budget.what == "sized"
