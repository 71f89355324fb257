"""Attached artifacts for tests: OCI 1.1 referrers pushed by digest, cosign-style tags, and a referrers API.

docker-registry 2.8 has no referrers API. `ReferrersApi` puts one in front of a real registry: it notes every
manifest PUT that names a `subject` and answers `GET /v2/<repo>/referrers/<digest>` from those notes, a few
descriptors per page with `Link: <…>; rel="next"`, as a registry implementing OCI distribution 1.1 does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading

from tests.registry.fault_proxy import FaultProxy
from tests.support.images import push_blob, put_manifest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
COSIGN_SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
SPDX = "application/spdx+json"
IN_TOTO = "application/vnd.in-toto+json"
DSSE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"


def artifact_manifest(
    registry_url: str,
    repository: str,
    *,
    artifact_type: str,
    payload: bytes,
    layer_type: str = "application/octet-stream",
    subject: tuple[str, int] | None = None,
    layer_annotations: dict | None = None,
) -> bytes:
    """Push an artifact's blobs (the empty config and one payload layer) and return its manifest's bytes."""
    config = b"{}"
    config_digest = push_blob(registry_url, repository, config)
    layer_digest = push_blob(registry_url, repository, payload)
    layer = {"mediaType": layer_type, "digest": layer_digest, "size": len(payload)}
    if layer_annotations:
        layer["annotations"] = layer_annotations
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [layer],
    }
    if subject is not None:
        manifest["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": subject[1]}
    return json.dumps(manifest, indent=2).encode()


def push_referrer(
    registry_url: str,
    repository: str,
    subject: str,
    *,
    artifact_type: str = COSIGN_SIGNATURE,
    payload: bytes | None = None,
    subject_size: int = 1000,
) -> str:
    """Push an OCI 1.1 referrer of `subject` by digest; returns its digest."""
    body = artifact_manifest(
        registry_url,
        repository,
        artifact_type=artifact_type,
        payload=payload if payload is not None else json.dumps({"about": subject, "type": artifact_type}).encode(),
        subject=(subject, subject_size),
    )
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    return put_manifest(registry_url, repository, digest, body, OCI_MANIFEST)


def push_fallback_index(registry_url: str, repository: str, subject: str, entries: list[dict]) -> str:
    """The referrers fallback index under `sha256-<hex>`, as an OCI 1.1 client writes it on an older registry."""
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return put_manifest(registry_url, repository, subject.replace(":", "-"), body, OCI_INDEX)


def referrer_entry(digest: str, size: int, artifact_type: str) -> dict:
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": size, "artifactType": artifact_type}


class ReferrersApi:
    """A referrers API in front of a real registry (see the module docstring); `url` is where clients go."""

    MANIFEST_PUT = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/?]+)$")
    REFERRERS = re.compile(r"^/v2/(?P<repo>.+)/referrers/(?P<digest>[a-z0-9]+:[a-f0-9]+)(\?page=(?P<page>\d+))?$")

    def __init__(self, upstream_url: str, *, page_size: int = 2):
        self.page_size = page_size
        self.referrers: dict[tuple[str, str], list[dict]] = {}
        self._lock = threading.Lock()
        self.proxy = FaultProxy(upstream_url, intercept=self._intercept)
        self.url = self.proxy.url

    def stop(self) -> None:
        self.proxy.stop()

    def _intercept(self, method: str, path: str, headers: dict, body: bytes):
        if method == "PUT" and (match := self.MANIFEST_PUT.match(path)):
            self._note(match["repo"], body)
            return None  # the registry stores it as usual
        if method == "GET" and (match := self.REFERRERS.match(path)):
            return self._page(match["repo"], match["digest"], int(match["page"] or 0))
        return None

    def _note(self, repository: str, body: bytes) -> None:
        try:
            manifest = json.loads(body)
        except ValueError:
            return
        subject = manifest.get("subject") if isinstance(manifest, dict) else None
        if not isinstance(subject, dict):
            return
        entry = {
            "mediaType": manifest.get("mediaType", OCI_MANIFEST),
            "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
            "size": len(body),
            "artifactType": manifest.get("artifactType") or manifest.get("config", {}).get("mediaType", ""),
        }
        with self._lock:
            listed = self.referrers.setdefault((repository, subject["digest"]), [])
            if entry["digest"] not in {e["digest"] for e in listed}:
                listed.append(entry)

    def _page(self, repository: str, digest: str, page: int):
        with self._lock:
            listed = list(self.referrers.get((repository, digest), []))
        chunk = listed[page * self.page_size : (page + 1) * self.page_size]
        headers = {"Content-Type": OCI_INDEX}
        if (page + 1) * self.page_size < len(listed):
            headers["Link"] = f'</v2/{repository}/referrers/{digest}?page={page + 1}>; rel="next"'
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": chunk}).encode()
        return 200, headers, body


def attach_vuln_attestation(url: str, repository: str, digest: str, trivy: dict) -> None:
    """cosign attest --type vuln: a `.att` tag whose layer is a DSSE envelope around an in-toto statement."""
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://cosign.sigstore.dev/attestation/vuln/v1",
        "subject": [{"name": repository, "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicate": {"scanner": {"uri": "pkg:github/aquasecurity/trivy", "result": trivy}},
    }
    envelope = json.dumps(
        {
            "payloadType": "application/vnd.in-toto+json",
            "payload": base64.b64encode(json.dumps(statement).encode()).decode(),
            "signatures": [],
        }
    ).encode()
    config = b"{}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": EMPTY_CONFIG, "digest": push_blob(url, repository, config), "size": 2},
        "layers": [{"mediaType": DSSE_ENVELOPE, "digest": push_blob(url, repository, envelope), "size": len(envelope)}],
    }
    put_manifest(url, repository, digest.replace(":", "-") + ".att", json.dumps(manifest).encode(), OCI_MANIFEST)
