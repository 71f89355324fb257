"""Attached artifacts: the signatures, SBOMs and attestations that refer to an image, and carrying them along.

They are found two ways, and both are read, since cosign writes tags even on registries that have the API:
  - the OCI 1.1 referrers API (every page, following `Link` headers);
  - the tag schema of registries without it: cosign's `sha256-<hex>.sig`, `.att` and `.sbom` tags, and the
    referrers fallback index under `sha256-<hex>` (an OCI index of the referrers' descriptors).
Each attachment is copied like an image (its blobs, then its manifest, verified by digest). At a destination
without the referrers API, the fallback index is written, merged with what it already lists, so what was copied
stays discoverable there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .client import OCI_INDEX, OCI_MANIFEST, Manifest, RegistryClient, sha256_digest
from .client_cache import shared_client
from .errors import AttachmentRefused, RegistryError
from .refs import ImageLocation, check_reference, check_repository

log = logging.getLogger(__name__)

COSIGN_SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
COSIGN_SBOM = "application/vnd.dev.cosign.artifact.sbom.v1+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
SIGNATURE_TYPES = {
    COSIGN_SIGNATURE,
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.cncf.notary.signature",
}
SBOM_TYPES = {COSIGN_SBOM, "application/spdx+json", "application/vnd.cyclonedx+json", "text/spdx+json"}
# cosign's tag suffixes, and the artifact type each stands for.
TAG_SUFFIXES = {"sig": COSIGN_SIGNATURE, "att": DSSE_ENVELOPE, "sbom": COSIGN_SBOM}

ALL, SIGNATURES, NONE = "all", "signatures", "none"
PARALLEL_ATTACHMENTS = 4
MODES = (ALL, SIGNATURES, NONE)


@dataclass(frozen=True)
class Attachment:
    """One attached artifact: a manifest that refers to the image, by digest (a referrer) or by a cosign tag."""

    digest: str
    artifact_type: str
    media_type: str = OCI_MANIFEST
    size: int = 0
    tag: str = ""  # the cosign tag it lives under; empty for a referrer found by digest only
    descriptor: dict = field(default_factory=dict, compare=False, hash=False)  # as the referrers list gave it

    @property
    def kind(self) -> str:
        if self.artifact_type in SIGNATURE_TYPES:
            return "signature"
        if self.artifact_type in SBOM_TYPES:
            return "sbom"
        if self.artifact_type == DSSE_ENVELOPE or "in-toto" in self.artifact_type:
            return "attestation"
        return "other"

    @property
    def reference(self) -> str:
        return self.tag or self.digest

    def as_dict(self) -> dict:
        found = {"digest": self.digest, "artifact_type": self.artifact_type, "kind": self.kind}
        if self.tag:
            found["tag"] = self.tag
        return found

    def index_entry(self) -> dict:
        """The descriptor a referrers (fallback) index lists for this attachment."""
        entry = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            entry["artifactType"] = self.artifact_type
        annotations = self.descriptor.get("annotations")
        if isinstance(annotations, dict) and annotations:
            entry["annotations"] = annotations
        return entry


@dataclass
class AttachmentReport:
    """What a copy did with the attachments of one image."""

    found: list[Attachment] = field(default_factory=list)
    landed: list[Attachment] = field(default_factory=list)
    refused: list[tuple[Attachment, str]] = field(default_factory=list)
    fallback_index: bool = False  # the destination's fallback index was written

    @property
    def warnings(self) -> list[str]:
        return [
            f"{a.kind} {a.digest} ({a.artifact_type or 'no artifact type'}) did not travel: {why}"
            for a, why in self.refused
        ]


def fallback_tag(digest: str) -> str:
    """`sha256:<hex>` → `sha256-<hex>`, the tag prefix of cosign and of the referrers fallback index."""
    return digest.replace(":", "-")


def attachments_of(client: RegistryClient, repository: str, digest: str) -> list[Attachment]:
    """Every attachment of `digest` in `repository`: referrers API, cosign tags and the fallback index; one entry
    per digest (a referrer that also has a cosign tag is copied by its tag, which brings the digest along)."""
    found: dict[str, Attachment] = {}
    for entry in client.referrers(repository, digest) or []:
        attachment = _from_descriptor(entry)
        if attachment is not None:
            found.setdefault(attachment.digest, attachment)
    prefix = fallback_tag(digest)
    tags = client.tags(repository)
    cosign_tags = [t for t in tags if t.rpartition(".")[0] == prefix and t.rpartition(".")[1]]
    # The fallback index and each cosign tag's HEAD at once: one round trip, however many cosign wrote.
    with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL_ATTACHMENTS, len(cosign_tags) + 1))) as pool:
        index = pool.submit(client.get_manifest, repository, prefix) if prefix in tags else None
        heads = list(pool.map(lambda tag: client.head_manifest(repository, tag), cosign_tags))
    if index is not None and index.result().is_index:
        for entry in index.result().parsed().get("manifests") or []:
            attachment = _from_descriptor(entry)
            if attachment is not None:
                found.setdefault(attachment.digest, attachment)
    for tag, info in zip(cosign_tags, heads, strict=True):
        if info is None:
            continue  # deleted between the listing and now
        found[info.digest] = Attachment(
            digest=info.digest,
            artifact_type=TAG_SUFFIXES.get(tag.rpartition(".")[2], f"cosign .{tag.rpartition('.')[2]}"),
            media_type=info.media_type,
            size=info.size,
            tag=tag,
        )
    return list(found.values())


def selected(attachments: list[Attachment], mode: str) -> list[Attachment]:
    """The attachments that `mode` (all, signatures or none) lets travel."""
    if mode not in MODES:
        raise ValueError(f"attached must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == NONE:
        return []
    return [a for a in attachments if mode == ALL or a.kind == "signature"]


def copy_attachments(
    *,
    source: RegistryClient,
    source_repository: str,
    destination: RegistryClient,
    destination_repository: str,
    digest: str,
    mode: str,
    copy_one: Callable[[str], None],
    require_signatures: bool = False,
) -> AttachmentReport:
    """Copy what `mode` selects of the attachments of `digest`, each with `copy_one(reference)`.

    A refused attachment becomes a warning, unless it is a signature and `require_signatures` is set: then
    AttachmentRefused, since an admission policy that needs the signature would refuse the image anyway.
    """
    report = AttachmentReport(found=selected(attachments_of(source, source_repository, digest), mode))

    def one(attachment: Attachment) -> str | None:
        try:
            copy_one(attachment.reference)
        except RegistryError as exc:
            log.warning("attachment %s of %s was refused: %s", attachment.digest, digest, exc.message)
            return exc.message
        return None

    # In parallel: each attachment is a few small round trips, and an image may carry several.
    with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL_ATTACHMENTS, len(report.found)))) as pool:
        outcomes = list(pool.map(one, report.found))
    for attachment, refusal in zip(report.found, outcomes, strict=True):
        if refusal is None:
            report.landed.append(attachment)
        else:
            report.refused.append((attachment, refusal))
    by_digest = [a for a in report.landed if not a.tag]
    if by_digest and destination.referrers(destination_repository, digest) is None:
        report.fallback_index = write_fallback_index(destination, destination_repository, digest, by_digest)
    if require_signatures:
        refused = [a for a, _ in report.refused if a.kind == "signature"]
        if refused:
            raise AttachmentRefused(
                "the destination refused the signature the step requires: " + "; ".join(report.warnings)
            )
    return report


def write_fallback_index(client: RegistryClient, repository: str, digest: str, attachments: list[Attachment]) -> bool:
    """Merge `attachments` into the referrers fallback index of `digest` (tag `sha256-<hex>`); True if written."""
    tag = fallback_tag(digest)
    existing = client.get_manifest(repository, tag, missing_ok=True)
    entries = []
    if existing is not None and existing.is_index:
        entries = [e for e in existing.parsed().get("manifests") or [] if isinstance(e, dict)]
    listed = {e.get("digest") for e in entries}
    added = [a.index_entry() for a in attachments if a.digest not in listed]
    if not added:
        return False
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries + added}).encode()
    client.put_manifest(repository, tag, Manifest(raw=body, media_type=OCI_INDEX, digest=sha256_digest(body)))
    return True


def _from_descriptor(entry) -> Attachment | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
        return None
    try:
        size = int(entry.get("size") or 0)
    except (TypeError, ValueError):
        size = 0
    return Attachment(
        digest=entry["digest"],
        artifact_type=str(entry.get("artifactType") or ""),
        media_type=str(entry.get("mediaType") or OCI_MANIFEST),
        size=size,
        descriptor=entry,
    )


def list_attachments(location: ImageLocation, mode: str = ALL) -> list[Attachment]:
    """The attachments at `location` (an ImageLocation whose reference is a digest) that `mode` selects: what a
    promotion's preflight counts."""
    check_repository(location.repository)
    check_reference(location.reference)
    return selected(attachments_of(shared_client(location.registry), location.repository, location.reference), mode)
