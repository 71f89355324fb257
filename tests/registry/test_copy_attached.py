"""Optional copy of attached artifacts (signatures, SBOMs, attestations) next to the image."""

from __future__ import annotations

from ci_integrations.registry import copy_image
from tests.registry.conftest import location
from tests.support.images import get_manifest_digest, push_random_image


def _attach(registry_url: str, digest: str) -> dict[str, str]:
    # The cosign-style tag scheme docker-registry 2.8 needs (it has no referrers API).
    prefix = digest.replace(":", "-")
    return {
        f"{prefix}.sig": push_random_image(registry_url, "team/api", f"{prefix}.sig", layers=1, layer_size=300),
        f"{prefix}.att": push_random_image(registry_url, "team/api", f"{prefix}.att", layers=1, layer_size=300),
    }


def test_attached_signatures_and_attestations_follow_the_image_when_asked(registry, other_registry):
    digest = push_random_image(registry.url, "team/api", "1.0")
    attached = _attach(registry.url, digest)
    push_random_image(registry.url, "team/api", "sha256-unrelated.sig", layers=1, layer_size=300)

    summary = copy_image(
        location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"), copy_attached=True
    )

    assert summary.attached == 2
    for tag, attached_digest in attached.items():
        assert get_manifest_digest(other_registry.url, "prod/api", tag) == attached_digest
    assert get_manifest_digest(other_registry.url, "prod/api", "sha256-unrelated.sig") is None


def test_attached_artifacts_stay_behind_by_default(registry, other_registry):
    digest = push_random_image(registry.url, "team/api", "1.0")
    attached = _attach(registry.url, digest)

    summary = copy_image(location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))

    assert summary.attached == 0
    assert all(get_manifest_digest(other_registry.url, "prod/api", tag) is None for tag in attached)
