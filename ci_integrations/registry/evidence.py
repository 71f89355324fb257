"""Signed attestations written next to an image, in cosign's `.att` format, so `cosign verify-attestation` and
admission controllers (sigstore policy-controller, Kyverno) read them.

An attestation is an in-toto Statement wrapped in a DSSE envelope (https://github.com/secure-systems-lab/dsse): the
signature covers PAE(payloadType, payload), never the JSON around it. cosign keeps the envelopes of an image as the
layers of one manifest under the tag `sha256-<hex>.att`, each layer annotated with its `predicateType`; a new one
is appended to what is there, so attestations that travelled with the image stay.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

from .client import OCI_MANIFEST, Manifest, sha256_digest
from .client_cache import shared_client
from .referrers import fallback_tag
from .refs import ImageLocation, check_reference, check_repository

IN_TOTO_STATEMENT = "https://in-toto.io/Statement/v1"
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
DSSE_LAYER = "application/vnd.dsse.envelope.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
PREDICATE_ANNOTATION = "predicateType"
MAX_ATTESTATION_LAYERS = 256  # an image promoted through many environments collects one per promotion


def dsse_pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def dsse_envelope(statement: dict, sign: Callable[[bytes], bytes], *, keyid: str = "") -> bytes:
    """The statement as a signed DSSE envelope (bytes of its JSON)."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    signature = base64.b64encode(sign(dsse_pae(IN_TOTO_PAYLOAD_TYPE, payload))).decode()
    return json.dumps(
        {
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": keyid, "sig": signature}],
        }
    ).encode()


def envelope_statement(envelope: bytes, verify: Callable[[bytes, bytes], bool]) -> dict | None:
    """The statement of a DSSE envelope when `verify(signature, pae)` accepts one of its signatures, else None."""
    try:
        body = json.loads(envelope)
        payload = base64.b64decode(body["payload"], validate=True)
        signatures = [base64.b64decode(s["sig"], validate=True) for s in body["signatures"]]
    except (ValueError, KeyError, TypeError):
        return None
    pae = dsse_pae(str(body.get("payloadType")), payload)
    if not any(verify(signature, pae) for signature in signatures):
        return None
    try:
        statement = json.loads(payload)
    except ValueError:
        return None
    return statement if isinstance(statement, dict) else None


def attach_attestation(location: ImageLocation, envelope: bytes, *, predicate_type: str) -> str:
    """Append `envelope` to the `.att` manifest of the image `location` (a digest) names; returns that manifest's
    digest. The layer is written first and the manifest last, so a reader never sees a layer that is not there."""
    check_repository(location.repository)
    check_reference(location.reference)
    client = shared_client(location.registry)
    repository, tag = location.repository, fallback_tag(location.reference) + ".att"
    layers: list[dict] = []
    existing = client.get_manifest(repository, tag, missing_ok=True)
    if existing is not None and not existing.is_index:
        layers = [x for x in existing.parsed().get("layers") or [] if isinstance(x, dict)][-MAX_ATTESTATION_LAYERS:]
    layer_digest = client.push_blob(repository, envelope)
    if not any(x.get("digest") == layer_digest for x in layers):
        layers.append(
            {
                "mediaType": DSSE_LAYER,
                "digest": layer_digest,
                "size": len(envelope),
                "annotations": {PREDICATE_ANNOTATION: predicate_type},
            }
        )
    # cosign's config for its attachment images: the layers as diff ids, nothing else.
    config = json.dumps(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in layers]},
        }
    ).encode()
    config_digest = client.push_blob(repository, config)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": layers,
        }
    ).encode()
    return client.put_manifest(repository, tag, Manifest(raw=body, media_type=OCI_MANIFEST, digest=sha256_digest(body)))
