"""Attached artifacts travel with the image: referrers API (paged), cosign tags, and the referrers fallback index.

Real docker-registry 2.8 instances are the registries without a referrers API; `ReferrersApi` in front of one is
the registry with it (no OCI 1.1 distribution is packaged for this machine).
"""

from __future__ import annotations

import json

import pytest

from ci_integrations.registry import AttachmentRefused, RegistryError, copy_image, list_attachments
from tests.registry.conftest import location
from tests.support.attachments import (
    COSIGN_SIGNATURE,
    IN_TOTO,
    OCI_INDEX,
    SPDX,
    ReferrersApi,
    push_fallback_index,
    push_referrer,
    referrer_entry,
)
from tests.support.images import delete_blob, get_manifest, get_manifest_digest, push_random_image


@pytest.fixture
def with_api():
    """Start ReferrersApi fronts; each is stopped after the test."""
    fronts: list[ReferrersApi] = []

    def make(server) -> ReferrersApi:
        front = ReferrersApi(server.url)
        fronts.append(front)
        return front

    yield make
    for front in fronts:
        front.stop()


def _cosign_tags(url: str, repository: str, digest: str) -> dict[str, str]:
    prefix = digest.replace(":", "-")
    return {
        f"{prefix}.{suffix}": push_random_image(url, repository, f"{prefix}.{suffix}", layers=1, layer_size=200)
        for suffix in ("sig", "att", "sbom")
    }


def _fallback_entries(url: str, repository: str, digest: str) -> list[dict]:
    found = get_manifest(url, repository, digest.replace(":", "-"))
    assert found is not None, "no referrers fallback index at the destination"
    body = json.loads(found[0])
    assert body["mediaType"] == OCI_INDEX
    return body["manifests"]


def test_cosign_tags_and_fallback_index_referrers_travel_between_registries_without_referrers_api(
    registry, other_registry
):
    digest = push_random_image(registry.url, "team/api", "1.0")
    tags = _cosign_tags(registry.url, "team/api", digest)
    sbom = push_referrer(registry.url, "team/api", digest, artifact_type=SPDX)
    size = len(get_manifest(registry.url, "team/api", sbom)[0])
    push_fallback_index(registry.url, "team/api", digest, [referrer_entry(sbom, size, SPDX)])
    # The destination already lists a referrer of this digest in its fallback index: it must stay listed.
    elsewhere = push_referrer(other_registry.url, "prod/api", digest, artifact_type=IN_TOTO)
    push_fallback_index(other_registry.url, "prod/api", digest, [referrer_entry(elsewhere, 300, IN_TOTO)])

    summary = copy_image(
        location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"), attached="all"
    )

    assert summary.attached == 4
    landed = {a["digest"]: a for a in summary.attachments}
    assert set(landed) == {*tags.values(), sbom}
    assert landed[tags[f"{digest.replace(':', '-')}.sig"]]["kind"] == "signature"
    assert landed[sbom] == {"digest": sbom, "artifact_type": SPDX, "kind": "sbom"}
    for tag, attached_digest in tags.items():
        assert get_manifest_digest(other_registry.url, "prod/api", tag) == attached_digest
    assert get_manifest_digest(other_registry.url, "prod/api", sbom) == sbom
    entries = _fallback_entries(other_registry.url, "prod/api", digest)
    assert [e["digest"] for e in entries] == [elsewhere, sbom]
    assert entries[1]["artifactType"] == SPDX
    assert summary.attachment_warnings == []


def test_every_page_of_the_referrers_api_is_followed(registry, other_registry, with_api):
    source = with_api(registry)
    digest = push_random_image(source.url, "team/api", "1.0")
    referrers = [push_referrer(source.url, "team/api", digest, artifact_type=f"{SPDX}.{i}") for i in range(5)]

    summary = copy_image(
        location(source.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"), attached="all"
    )

    assert sorted(a["digest"] for a in summary.attachments) == sorted(referrers)
    assert len(source.proxy.requests("GET", r"/referrers/.*page=")) == 2  # 5 referrers, 2 a page: 3 pages
    for referrer in referrers:
        assert get_manifest_digest(other_registry.url, "prod/api", referrer) == referrer
    # The destination has no referrers API: the fallback index makes them discoverable there.
    assert sorted(e["digest"] for e in _fallback_entries(other_registry.url, "prod/api", digest)) == sorted(referrers)


def test_a_destination_with_referrers_api_gets_no_fallback_index(registry, other_registry, with_api):
    source, destination = with_api(registry), with_api(other_registry)
    digest = push_random_image(source.url, "team/api", "1.0")
    signature = push_referrer(source.url, "team/api", digest, artifact_type=COSIGN_SIGNATURE)

    summary = copy_image(
        location(source.url, "team/api", "1.0"), location(destination.url, "prod/api", "1.0"), attached="all"
    )

    assert [a["digest"] for a in summary.attachments] == [signature]
    assert [e["digest"] for e in destination.referrers[("prod/api", digest)]] == [signature]
    assert get_manifest(other_registry.url, "prod/api", digest.replace(":", "-")) is None


def test_attached_signatures_copies_only_signatures_and_none_copies_nothing(registry, other_registry):
    digest = push_random_image(registry.url, "team/api", "1.0")
    tags = _cosign_tags(registry.url, "team/api", digest)
    prefix = digest.replace(":", "-")

    only = copy_image(
        location(registry.url, "team/api", "1.0"),
        location(other_registry.url, "prod/api", "1.0"),
        attached="signatures",
    )
    nothing = copy_image(
        location(registry.url, "team/api", "1.0"), location(other_registry.url, "other/api", "1.0"), attached="none"
    )

    assert [a["digest"] for a in only.attachments] == [tags[f"{prefix}.sig"]]
    assert get_manifest_digest(other_registry.url, "prod/api", f"{prefix}.att") is None
    assert nothing.attached == 0
    assert get_manifest_digest(other_registry.url, "other/api", f"{prefix}.sig") is None


def test_a_refused_attachment_is_a_warning_naming_it_and_the_image_still_lands(registry, other_registry, proxy_factory):
    digest = push_random_image(registry.url, "team/api", "1.0")
    sbom = push_referrer(registry.url, "team/api", digest, artifact_type=SPDX)
    size = len(get_manifest(registry.url, "team/api", sbom)[0])
    push_fallback_index(registry.url, "team/api", digest, [referrer_entry(sbom, size, SPDX)])
    destination = proxy_factory(other_registry.url)
    # ECR answers 405 to some OCI 1.1 artifact manifests.
    destination.add("status", method="PUT", path=f"/manifests/{sbom}", status=405, times=None)

    summary = copy_image(
        location(registry.url, "team/api", "1.0"), location(destination.url, "prod/api", "1.0"), attached="all"
    )

    assert summary.digest == digest
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    assert summary.attached == 0
    assert len(summary.attachment_warnings) == 1
    assert sbom in summary.attachment_warnings[0] and SPDX in summary.attachment_warnings[0]


def test_a_refused_signature_fails_the_copy_when_signatures_are_required(registry, other_registry, proxy_factory):
    digest = push_random_image(registry.url, "team/api", "1.0")
    signature = push_random_image(registry.url, "team/api", digest.replace(":", "-") + ".sig", layers=1)
    destination = proxy_factory(other_registry.url)
    destination.add("status", method="PUT", path=r"/manifests/sha256-.*\.sig$", status=405, times=None)

    with pytest.raises(AttachmentRefused) as refused:
        copy_image(
            location(registry.url, "team/api", "1.0"),
            location(destination.url, "prod/api", "1.0"),
            attached="all",
            require_signatures=True,
        )

    assert signature in refused.value.message


def test_list_attachments_counts_what_a_mode_selects(registry):
    digest = push_random_image(registry.url, "team/api", "1.0")
    _cosign_tags(registry.url, "team/api", digest)
    here = location(registry.url, "team/api", digest)

    assert len(list_attachments(here, "all")) == 3
    assert [a.kind for a in list_attachments(here, "signatures")] == ["signature"]
    assert list_attachments(here, "none") == []


def test_attachments_copied_alongside_the_image_never_land_when_the_image_does_not(registry, other_registry):
    digest = push_random_image(registry.url, "team/api", "1.0", layers=2, layer_size=64 * 1024)
    tags = _cosign_tags(registry.url, "team/api", digest)
    layer = json.loads(get_manifest(registry.url, "team/api", digest)[0])["layers"][0]["digest"]
    delete_blob(registry.url, "team/api", layer)  # the image cannot be copied; its attachments still can

    with pytest.raises(RegistryError):
        copy_image(
            location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"), attached="all"
        )

    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") is None
    for tag in tags:
        assert get_manifest_digest(other_registry.url, "prod/api", tag) is None, f"{tag} refers to a missing image"
