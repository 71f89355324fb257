"""Keyless signatures: a sigstore bundle attached as cosign 3 attaches it, verified offline by the `sigstore` library
against a trusted root file, and the certificate's issuer and subject matched against globs.

The trust anchors are the tests' own (tests/support/sigstore_bundle.py): every signature in the bundle is real.
"""

from __future__ import annotations

import base64
import json

import pytest

from ci_integrations.registry import copy_image
from ci_integrations.registry.keyless import KeylessIdentity
from ci_integrations.registry.signatures import (
    NO_ACCEPTED_KEY,
    OTHER_DIGEST,
    SignatureRequirement,
    verify_image_signature,
)
from tests.registry.conftest import location
from tests.support.images import push_random_image
from tests.support.sigstore_bundle import GITHUB_ISSUER, OfflineSigstore, attach_bundle, image_statement

WORKFLOW = "https://github.com/acme/checkout/.github/workflows/release.yml@refs/heads/main"


@pytest.fixture(scope="module")
def sigstore():
    return OfflineSigstore()


@pytest.fixture
def trusted_root(sigstore, tmp_path) -> str:
    return sigstore.write_trusted_root(tmp_path / "trusted_root.json")


def _requirement(trusted_root: str, subject: str = "https://github.com/acme/*", issuer: str = GITHUB_ISSUER):
    return SignatureRequirement(keyless=(KeylessIdentity(issuer=issuer, subject=subject),), trusted_root=trusted_root)


def _signed(registry, sigstore, *, statement_digest: str | None = None, subject: str = WORKFLOW) -> str:
    digest = push_random_image(registry.url, "team/api", "1.0")
    statement = image_statement("team/api", statement_digest or digest)
    attach_bundle(
        registry.url, "team/api", digest, sigstore.bundle(subject=subject, issuer=GITHUB_ISSUER, statement=statement)
    )
    return digest


def test_a_keyless_signature_by_an_accepted_identity_verifies_offline_and_names_it(registry, sigstore, trusted_root):
    digest = _signed(registry, sigstore)

    verdict = verify_image_signature(location(registry.url, "team/api", digest), _requirement(trusted_root))

    assert verdict.verified, verdict.message
    assert verdict.message == f"signed keyless by {WORKFLOW} ({GITHUB_ISSUER})"
    assert verdict.as_dict()["identity"] == f"{WORKFLOW} ({GITHUB_ISSUER})"


def test_a_subject_or_issuer_outside_the_globs_is_no_accepted_signature(registry, sigstore, trusted_root):
    digest = _signed(registry, sigstore, subject="https://github.com/mallory/checkout/.github/workflows/x.yml@main")
    where = location(registry.url, "team/api", digest)

    assert not verify_image_signature(where, _requirement(trusted_root)).verified
    other_issuer = _requirement(trusted_root, subject="*", issuer="https://gitlab.com")
    verdict = verify_image_signature(where, other_issuer)
    assert not verdict.verified and verdict.message.startswith(NO_ACCEPTED_KEY)


def test_a_bundle_from_another_sigstore_does_not_verify_against_our_trusted_root(registry, trusted_root):
    digest = _signed(registry, OfflineSigstore())  # same formats, other trust anchors

    verdict = verify_image_signature(location(registry.url, "team/api", digest), _requirement(trusted_root))

    assert not verdict.verified and "keyless" in verdict.message


def test_a_keyless_signature_of_another_digest_is_named_as_such(registry, sigstore, trusted_root):
    digest = _signed(registry, sigstore, statement_digest="sha256:" + "ab" * 32)

    verdict = verify_image_signature(location(registry.url, "team/api", digest), _requirement(trusted_root))

    assert not verdict.verified and verdict.message == OTHER_DIGEST


def test_a_tampered_envelope_does_not_verify(registry, sigstore, trusted_root):
    digest = push_random_image(registry.url, "team/api", "1.0")
    bundle = sigstore.bundle(subject=WORKFLOW, issuer=GITHUB_ISSUER, statement=image_statement("team/api", digest))
    other = image_statement("team/api", digest) | {"predicate": {"tampered": True}}
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(other).encode()).decode()
    attach_bundle(registry.url, "team/api", digest, bundle)

    assert not verify_image_signature(location(registry.url, "team/api", digest), _requirement(trusted_root)).verified


def test_the_keyless_signature_travels_with_a_promotion_and_still_verifies(
    registry, other_registry, sigstore, trusted_root
):
    digest = _signed(registry, sigstore)
    copy_image(
        location(registry.url, "team/api", "1.0"),
        location(other_registry.url, "prod/api", "1.0"),
        attached="signatures",
    )

    assert verify_image_signature(location(other_registry.url, "prod/api", digest), _requirement(trusted_root)).verified


def test_an_unreadable_trusted_root_says_so(registry, sigstore, tmp_path):
    digest = _signed(registry, sigstore)
    broken = tmp_path / "root.json"
    broken.write_text("{not json")

    verdict = verify_image_signature(location(registry.url, "team/api", digest), _requirement(str(broken)))

    assert not verdict.verified and "trusted root" in verdict.message
