"""The signature check against real registries: cosign's format, cosign's own signature, and the bad cases."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

from ci_integrations.registry import copy_image
from ci_integrations.registry.signatures import (
    MAX_PAYLOAD_BYTES,
    NO_ACCEPTED_KEY,
    OTHER_DIGEST,
    SignatureRequirement,
    TrustedKey,
    verify_image_signature,
)
from tests.registry.conftest import location
from tests.support.cosign import (
    COSIGN_FIXTURE_DIGEST,
    COSIGN_FIXTURE_PAYLOAD,
    COSIGN_FIXTURE_PUBLIC_KEY,
    COSIGN_FIXTURE_SIGNATURE,
    OCI_MANIFEST,
    generate_key_pair,
    load_encrypted_key,
    push_signature,
    sign,
    sign_image,
    simple_signing_payload,
)
from tests.support.images import get_manifest_digest, push_random_image


@pytest.fixture(scope="module")
def keys():
    return generate_key_pair()


def _verify(url: str, repository: str, digest: str, *pems: str, name: str = "prod-signing"):
    requirement = SignatureRequirement(keys=tuple(TrustedKey(pem=pem, name=name) for pem in pems))
    return verify_image_signature(location(url, repository, digest), requirement)


def test_the_encrypted_key_reads_back_to_the_key_that_signs(keys):
    assert keys.private_pem.startswith(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    key = load_encrypted_key(keys.private_pem, keys.password)
    with pytest.raises(Exception):  # noqa: B017 - nacl's CryptoError: a wrong password cannot open the box
        load_encrypted_key(keys.private_pem, b"wrong password")
    payload = simple_signing_payload("example/app", "sha256:" + "a" * 64)
    assert TrustedKey(keys.public_pem).verifies(__import__("base64").b64decode(sign(key, payload)), payload)


def test_an_image_signed_with_an_accepted_key_verifies_and_names_the_key(registry, keys):
    digest = push_random_image(registry.url, "team/api", "1.0")
    signature = sign_image(registry.url, "team/api", digest, keys)

    verdict = _verify(registry.url, "team/api", digest, keys.public_pem)

    key_id = TrustedKey(keys.public_pem).key_id
    assert verdict.verified
    assert verdict.message == f"signed by key {key_id[:11]}… (prod-signing)"
    assert verdict.key_id == key_id and verdict.signature == signature


def test_a_signature_cosign_itself_made_verifies_under_its_public_key(registry):
    push_signature(
        registry.url,
        "fixture/app",
        COSIGN_FIXTURE_DIGEST,
        payload=COSIGN_FIXTURE_PAYLOAD,
        signature=COSIGN_FIXTURE_SIGNATURE,
    )

    verdict = _verify(registry.url, "fixture/app", COSIGN_FIXTURE_DIGEST, COSIGN_FIXTURE_PUBLIC_KEY, name="cosign")

    assert verdict.verified, verdict.message


def test_a_signature_by_another_key_is_no_signature_by_an_accepted_key(registry, keys):
    digest = push_random_image(registry.url, "team/api", "1.0")
    sign_image(registry.url, "team/api", digest, generate_key_pair())

    verdict = _verify(registry.url, "team/api", digest, keys.public_pem)

    assert not verdict.verified
    assert verdict.message.startswith(NO_ACCEPTED_KEY)


def test_an_unsigned_image_has_no_signature_by_an_accepted_key(registry, keys):
    digest = push_random_image(registry.url, "team/api", "1.0")

    verdict = _verify(registry.url, "team/api", digest, keys.public_pem)

    assert verdict.message == f"{NO_ACCEPTED_KEY} (the image has no signature)"


def test_a_valid_signature_of_another_digest_is_named_as_such(registry, keys):
    digest = push_random_image(registry.url, "team/api", "1.0")
    other = push_random_image(registry.url, "team/api", "2.0")
    payload = simple_signing_payload("team/api", other)  # signed, but for the other image
    push_signature(registry.url, "team/api", digest, payload=payload, signature=sign(keys.signer(), payload))

    verdict = _verify(registry.url, "team/api", digest, keys.public_pem)

    assert not verdict.verified and verdict.message == OTHER_DIGEST


def test_a_tampered_payload_does_not_verify(registry, keys):
    digest = push_random_image(registry.url, "team/api", "1.0")
    payload = simple_signing_payload("team/api", digest)
    signature = sign(keys.signer(), payload)
    push_signature(
        registry.url, "team/api", digest, payload=payload.replace(b"team/api", b"evil/api"), signature=signature
    )

    verdict = _verify(registry.url, "team/api", digest, keys.public_pem)

    assert not verdict.verified and verdict.message.startswith(NO_ACCEPTED_KEY)


def test_a_signature_that_is_not_base64_is_named_and_refused(registry, keys):
    digest = push_random_image(registry.url, "team/api", "1.0")
    payload = simple_signing_payload("team/api", digest)
    push_signature(registry.url, "team/api", digest, payload=payload, signature="not*base64!")

    verdict = _verify(registry.url, "team/api", digest, keys.public_pem)

    assert not verdict.verified
    assert "not valid base64" in verdict.message


def test_a_payload_declared_enormous_is_not_fetched(registry, keys, proxy_factory):
    digest = push_random_image(registry.url, "team/api", "1.0")
    payload = simple_signing_payload("team/api", digest)
    push_signature(
        registry.url, "team/api", digest, payload=payload, signature=sign(keys.signer(), payload), payload_size=1 << 30
    )
    proxy = proxy_factory(registry.url)

    verdict = _verify(proxy.url, "team/api", digest, keys.public_pem)

    assert not verdict.verified and f"over the {MAX_PAYLOAD_BYTES}-byte limit" in verdict.message
    assert proxy.requests("GET", "/blobs/") == []


def test_an_enormous_signature_manifest_is_cut_off_not_read_whole(registry, keys, proxy_factory):
    digest = push_random_image(registry.url, "team/api", "1.0")
    sign_image(registry.url, "team/api", digest, keys)
    proxy = proxy_factory(registry.url)
    proxy.flood(method="GET", path=r"/manifests/sha256:", status=200, content_type=OCI_MANIFEST, size=64 << 20)

    verdict = _verify(proxy.url, "team/api", digest, keys.public_pem)

    assert not verdict.verified and verdict.message.startswith(NO_ACCEPTED_KEY)
    (flooded,) = proxy.wait_for("GET", r"/manifests/sha256:")
    assert flooded.bytes_down < 16 << 20  # the client hung up after the manifest cap, not after 64 MiB


def test_the_signature_still_verifies_after_the_portal_copies_it(registry, other_registry, keys):
    digest = push_random_image(registry.url, "team/api", "1.0")
    sign_image(registry.url, "team/api", digest, keys)

    copy_image(location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"))
    assert not _verify(other_registry.url, "prod/api", digest, keys.public_pem).verified  # attached=none by default
    copy_image(
        location(registry.url, "team/api", "1.0"), location(other_registry.url, "prod/api", "1.0"), attached="all"
    )

    assert _verify(other_registry.url, "prod/api", digest, keys.public_pem).verified


def test_skopeo_carries_the_signature_and_it_still_verifies(registry, other_registry, keys):
    """skopeo (which cannot sign here) is a second, independent mover of cosign signatures."""
    digest = push_random_image(registry.url, "team/api", "1.0")
    sign_image(registry.url, "team/api", digest, keys)
    with tempfile.TemporaryDirectory() as config:
        registries_d = os.path.join(config, "registries.d")
        os.makedirs(registries_d)
        with open(os.path.join(registries_d, "default.yaml"), "w", encoding="utf-8") as handle:
            handle.write("default-docker:\n  use-sigstore-attachments: true\n")
        subprocess.run(
            [
                "skopeo",
                "--registries.d",
                registries_d,
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--preserve-digests",
                f"docker://{registry.host}/team/api@{digest}",
                f"docker://{other_registry.host}/skopeo/api:1.0",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    assert get_manifest_digest(other_registry.url, "skopeo/api", "1.0") == digest
    verdict = _verify(other_registry.url, "skopeo/api", digest, keys.public_pem)
    assert verdict.verified, verdict.message
