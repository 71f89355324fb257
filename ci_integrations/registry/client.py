"""An OCI Distribution client for one registry endpoint: manifests as raw bytes, blobs as streams.

Every method names the scopes it needs so the bearer token covers them; the transport does auth, redirects and
retries. Manifests are never parsed-and-reserialised on the way through: `Manifest.raw` is what gets pushed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin

import requests

from .auth import Authenticator, repository_scope
from .bodies import read_capped, read_up_to, response_error
from .destinations import Guard
from .errors import DigestMismatch, IndexTooLarge, NotFound, ProtocolError, cut
from .transport import RetryableFailure, RetryPolicy, Timeouts, Transport

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
IMAGE_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
# OCI distribution guidance: registries and clients should accept manifests up to at least 4 MiB; larger ones are
# refused before they are read, so a hostile registry cannot make a worker hold an arbitrarily large body.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# Real indexes name a handful of platforms plus their attestations. An index is copied child by child, so a hostile
# one naming thousands (or one child thousands of times) would otherwise cost a fetch and memory for each.
MAX_INDEX_CHILDREN = 1000
SCHEMA1_TYPES = {
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
}


@dataclass(frozen=True)
class Endpoint:
    """Where a registry answers: `base_url` like https://host[:port]; verify is requests' TLS setting."""

    base_url: str
    verify: bool | str = True

    @property
    def host(self) -> str:
        return self.base_url.split("://", 1)[1].rstrip("/")


@dataclass(frozen=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """A manifest exactly as the registry served it."""

    raw: bytes
    media_type: str
    digest: str

    @property
    def info(self) -> ManifestInfo:
        return ManifestInfo(self.digest, self.media_type, len(self.raw))

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def parsed(self) -> dict[str, Any]:
        try:
            body = json.loads(self.raw)
        except ValueError:
            raise ProtocolError(f"manifest {self.digest} is not valid JSON") from None
        if not isinstance(body, dict):
            raise ProtocolError(f"manifest {self.digest} is not a JSON object")
        return body

    def children(self) -> list[Descriptor]:
        """The distinct manifests an index or manifest list points at, in order; a digest named twice counts once.

        Raises IndexTooLarge past MAX_INDEX_CHILDREN distinct manifests.
        """
        entries = self.parsed().get("manifests") or []
        if not isinstance(entries, list):
            raise ProtocolError(f"manifest {self.digest} has a malformed manifests list")
        distinct: dict[str, Descriptor] = {}
        for entry in entries:
            descriptor = _descriptor(entry, self.digest)
            distinct.setdefault(descriptor.digest, descriptor)
            if len(distinct) > MAX_INDEX_CHILDREN:
                raise IndexTooLarge(
                    f"index {self.digest} names more than {MAX_INDEX_CHILDREN} distinct manifests; refusing to copy it"
                )
        return list(distinct.values())

    def blobs(self) -> list[Descriptor]:
        """Config and layers of an image manifest (empty for an index)."""
        body = self.parsed()
        found = []
        if isinstance(body.get("config"), dict):
            found.append(_descriptor(body["config"], self.digest))
        found.extend(_descriptor(layer, self.digest) for layer in body.get("layers") or [])
        return found

    def subject(self) -> str | None:
        subject = self.parsed().get("subject")
        return subject.get("digest") if isinstance(subject, dict) else None


def _descriptor(raw: Any, owner: str) -> Descriptor:
    try:
        return Descriptor(media_type=raw.get("mediaType", ""), digest=raw["digest"], size=int(raw["size"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ProtocolError(f"manifest {owner} has a malformed descriptor") from None


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def hasher_for(digest: str):
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha512"):
        raise ProtocolError(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def digest_of(data: bytes, like: str = "sha256:") -> str:
    hasher = hasher_for(like)
    hasher.update(data)
    return f"{hasher.name}:{hasher.hexdigest()}"


class RegistryClient:
    """Talks the OCI Distribution API to one endpoint with one identity."""

    def __init__(
        self,
        endpoint: Endpoint,
        authenticator: Authenticator | None = None,
        *,
        policy: RetryPolicy | None = None,
        timeouts: Timeouts | None = None,
        pool_size: int = 16,
        guard: Guard | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.transport = Transport(
            endpoint.base_url,
            authenticator or Authenticator(endpoint.host),
            policy=policy,
            timeouts=timeouts,
            pool_size=pool_size,
            verify=endpoint.verify,
            guard=guard,
        )

    @property
    def host(self) -> str:
        return self.endpoint.host

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- base ----------------------------------------------------------------------------------------------------

    # --- manifests -----------------------------------------------------------------------------------------------

    def head_manifest(self, repository: str, reference: str) -> ManifestInfo | None:
        """HEAD a manifest; None when absent.

        Falls back to GET (and hashes the bytes) when the registry does not answer HEAD (405, 501), omits the digest,
        size or media type, or answers 404 for a tag: some registries (Nexus, older Harbor) only answer GET for
        tags. A 404 for a digest is trusted, so checking many child manifests stays one request each.
        """
        response = self.transport.request(
            "HEAD",
            f"/v2/{repository}/manifests/{reference}",
            scopes=(repository_scope(repository, "pull"),),
            headers={"Accept": MANIFEST_ACCEPT},
            allow=(404, 405, 501),
            what=f"HEAD manifest {repository}:{reference}",
        )
        response.close()
        by_digest = ":" in reference
        if response.status_code == 404 and by_digest:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        media_type = _media_type(response.headers.get("Content-Type"))
        length = response.headers.get("Content-Length")
        if response.status_code != 200 or not digest or media_type in GENERIC_TYPES or not (length or "").isdigit():
            manifest = self.get_manifest(repository, reference, missing_ok=True)
            return manifest.info if manifest else None
        if by_digest and digest != reference:
            raise DigestMismatch(f"{self.host}/{repository}@{reference} answered digest {digest}")
        return ManifestInfo(digest=digest, media_type=media_type, size=int(length))

    def get_manifest(self, repository: str, reference: str, *, missing_ok: bool = False) -> Manifest | None:
        response = self.transport.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scopes=(repository_scope(repository, "pull"),),
            headers={"Accept": MANIFEST_ACCEPT},
            allow=(404,) if missing_ok else (),
            what=f"GET manifest {repository}:{reference}",
            max_bytes=MAX_MANIFEST_BYTES,
        )
        if response.status_code == 404:
            response.close()
            return None
        raw = response.content
        media_type = _media_type(response.headers.get("Content-Type"))
        # The manifest's own mediaType field, when it has one, is what it is: some registries serve a generic or a
        # different Content-Type, and the spec requires a push to send Content-Type equal to that field.
        declared = _declared_media_type(raw)
        if media_type in SCHEMA1_TYPES or declared in SCHEMA1_TYPES:
            raise ProtocolError(f"{repository}:{reference} is a Docker schema 1 manifest, which is not supported")
        if declared:
            media_type = declared
        if ":" in reference:
            digest = digest_of(raw, reference)
            if digest != reference:
                raise DigestMismatch(f"manifest {repository}@{reference} served bytes hashing to {digest}")
        else:
            digest = sha256_digest(raw)
            header = response.headers.get("Docker-Content-Digest")
            if header and header.startswith("sha256:") and header != digest:
                raise DigestMismatch(f"manifest {repository}:{reference} hashes to {digest}, not {header}")
        return Manifest(raw=raw, media_type=media_type, digest=digest)

    def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> str:
        """PUT the manifest's original bytes; returns the digest the registry reports (or ours if it says none)."""
        response = self.transport.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scopes=(repository_scope(repository, "pull", "push"),),
            headers={"Content-Type": manifest.media_type},
            data=manifest.raw,
            ok=(200, 201, 202, 204),
            what=f"PUT manifest {repository}:{reference}",
        )
        return response.headers.get("Docker-Content-Digest") or manifest.digest

    def tags(self, repository: str) -> list[str]:
        """Every tag, following `Link: <…>; rel="next"` pages (relative or absolute)."""
        tags: list[str] = []
        path: str | None = f"/v2/{repository}/tags/list?n=1000"
        seen: set[str] = set()
        while path:
            response = self.transport.request(
                "GET", path, scopes=(repository_scope(repository, "pull"),), allow=(404,), what=f"tags of {repository}"
            )
            if response.status_code == 404:
                return tags
            seen.add(response.url)
            try:
                page = response.json().get("tags") or []
            except (ValueError, AttributeError):
                raise ProtocolError(f"tags of {repository}: the registry did not answer a JSON tag list") from None
            tags.extend(page)
            link = response.links.get("next", {}).get("url")
            path = urljoin(response.url, link) if link else None
            if path is not None and path in seen:
                # A next link back to a page already read would never end.
                raise ProtocolError(f"tags of {repository}: the registry's next-page links go round in a loop")
        return tags

    def referrers(self, repository: str, digest: str) -> list[dict] | None:
        """The referrers API's descriptors for `digest` (artifactType and annotations kept), every page followed
        through `Link: <…>; rel="next"`; None when the registry does not implement the API."""
        entries: list[dict] = []
        path: str | None = f"/v2/{repository}/referrers/{digest}"
        seen: set[str] = set()
        while path:
            response = self.transport.request(
                "GET",
                path,
                scopes=(repository_scope(repository, "pull"),),
                headers={"Accept": OCI_INDEX},
                allow=(400, 404, 405),
                what=f"referrers of {repository}@{digest}",
                max_bytes=MAX_MANIFEST_BYTES,
            )
            if response.status_code != 200 or _media_type(response.headers.get("Content-Type")) != OCI_INDEX:
                response.close()
                if not seen:
                    return None
                raise ProtocolError(f"referrers of {repository}@{digest}: a next page is not an OCI index")
            seen.add(response.url)
            page = Manifest(response.content, OCI_INDEX, sha256_digest(response.content))
            page.children()  # validates every descriptor, and caps their number
            entries.extend(page.parsed().get("manifests") or [])
            if len(entries) > MAX_INDEX_CHILDREN:
                raise IndexTooLarge(f"{repository}@{digest} has more than {MAX_INDEX_CHILDREN} referrers")
            link = response.links.get("next", {}).get("url")
            path = urljoin(response.url, link) if link else None
            if path is not None and path in seen:
                raise ProtocolError(f"referrers of {repository}@{digest}: the next-page links go round in a loop")
        return entries

    # --- blobs ---------------------------------------------------------------------------------------------------

    def head_blob(self, repository: str, digest: str) -> int | None:
        """The blob's size if the repository has it, else None."""
        response = self.transport.request(
            "HEAD",
            f"/v2/{repository}/blobs/{digest}",
            scopes=(repository_scope(repository, "pull"),),
            allow=(404,),
            what=f"HEAD blob {repository}@{digest}",
        )
        if response.status_code == 404:
            return None
        length = response.headers.get("Content-Length")
        return int(length) if length and length.isdigit() else -1

    def open_blob(self, repository: str, digest: str, *, offset: int = 0) -> requests.Response:
        """Start a streaming GET of a blob (redirects to storage followed without our credentials).

        With `offset`, asks for the bytes from there on (`Range: bytes=<offset>-`); the answer is 206 when the server
        honoured that, or 200 with the whole blob when it did not: the caller checks which. One attempt only: the
        caller retries the whole transfer.
        """
        url = self.transport.url(f"/v2/{repository}/blobs/{digest}")
        headers = {"Range": f"bytes={offset}-"} if offset else None
        response = self.transport.send_once(
            "GET", url, scopes=(repository_scope(repository, "pull"),), headers=headers, transfer=True
        )
        if response.status_code != 200 and not (offset and response.status_code == 206):
            raise response_error(response, what=f"GET blob {repository}@{digest}")
        return response

    def read_blob(self, repository: str, digest: str, *, limit: int, what: str = "blob") -> bytes:
        """A small blob's bytes (a config, a signature payload, an SBOM), streamed and refused past `limit` bytes,
        checked against its digest."""
        hasher = hasher_for(digest)
        response = self.open_blob(repository, digest)
        try:
            body, longer = read_up_to(response, limit, decode=False)
        finally:
            response.close()
        if longer:
            raise ProtocolError(f"{what} {digest} is over the {limit}-byte limit")
        hasher.update(body)
        if f"{hasher.name}:{hasher.hexdigest()}" != digest:
            raise DigestMismatch(f"{what} {digest} does not match its digest")
        return body

    def start_upload(
        self, repository: str, *, mount: str | None = None, from_repository: str | None = None, retry: bool = True
    ) -> tuple[bool, str | None]:
        """POST an upload session, optionally as a cross-repository mount (asked once with retry=False).

        Returns (True, None) when the mount succeeded (201), else (False, upload URL).
        """
        path = f"/v2/{repository}/blobs/uploads/"
        scopes = [repository_scope(repository, "pull", "push")]
        if mount and from_repository:
            path += f"?mount={quote(mount, safe=':')}&from={quote(from_repository, safe='/')}"
            scopes.append(repository_scope(from_repository, "pull"))
        response = self.transport.request(
            "POST",
            path,
            scopes=tuple(scopes),
            headers={"Content-Length": "0"},
            ok=(201, 202),
            what=f"start upload to {repository}",
            policy=None if retry else RetryPolicy(attempts=1),
        )
        response.close()
        if response.status_code == 201 and mount:
            return True, None
        location = response.headers.get("Location")
        if not location:
            raise ProtocolError(f"{self.host} started an upload without a Location")
        return False, urljoin(response.url, location)

    def cancel_upload(self, location: str, repository: str) -> None:
        try:
            response = self.transport.send_once(
                "DELETE", location, scopes=(repository_scope(repository, "pull", "push"),)
            )
            read_capped(response)
            response.close()
        except Exception:  # best effort: an abandoned session is purged by the registry anyway
            pass

    def patch_upload(self, location: str, repository: str, body, *, start: int, length: int) -> requests.Response:
        """PATCH one chunk of `length` bytes at offset `start` (`Content-Range: <start>-<end>`, the distribution
        spec's form); one attempt, streamed, answer unread. A 202 carries the next Location."""
        return self.transport.send_once(
            "PATCH",
            location,
            scopes=(repository_scope(repository, "pull", "push"),),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(length),
                "Content-Range": f"{start}-{start + length - 1}",
            },
            data=body,
            replayable=False,
            follow_redirects=False,
            transfer=True,
        )

    def upload_offset(self, location: str, repository: str) -> tuple[int, str]:
        """How many bytes the registry holds of an upload session, and the Location to go on with (GET on the
        session: 204 with `Range: 0-<last byte>`). NotFound when the session is gone."""
        response = self.transport.request(
            "GET",
            location,
            scopes=(repository_scope(repository, "pull", "push"),),
            ok=(204, 200),
            what=f"status of an upload to {repository}",
        )
        held = (response.headers.get("Range") or "").removeprefix("bytes=").partition("-")[2].strip()
        # distribution answers "0-0" both for nothing and for one byte; one byte never happens in whole chunks.
        offset = int(held) + 1 if held.isdigit() and int(held) > 0 else 0
        return offset, urljoin(response.url, response.headers.get("Location") or location)

    def finish_upload(self, location: str, repository: str, digest: str, body, length: int) -> requests.Response:
        """Monolithic PUT <location>&digest=… with a streamed body of known length; one attempt (not replayable).

        The answer is streamed: read its body with `read_capped`.
        """
        separator = "&" if "?" in location else "?"
        url = f"{location}{separator}digest={quote(digest, safe=':')}"
        return self.transport.send_once(
            "PUT",
            url,
            scopes=(repository_scope(repository, "pull", "push"),),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            data=body,
            replayable=False,
            follow_redirects=False,
            transfer=True,
        )

    def push_blob(self, repository: str, data: bytes) -> str:
        """Upload a small blob held in memory (an attestation, its config) unless it is there; returns its digest."""
        digest = sha256_digest(data)
        if self.head_blob(repository, digest) is not None:
            return digest
        _, location = self.start_upload(repository)
        response = self.finish_upload(location, repository, digest, data, len(data))
        if response.status_code not in (201, 204):
            raise response_error(response, what=f"PUT blob {repository}@{digest}")
        read_capped(response)
        response.close()
        return digest


def accept_upload_answer(response: requests.Response, digest: str, *, ok: tuple[int, ...] = (201, 204)) -> None:
    """Check the registry's answer to the last request of a blob upload (the PUT with the digest, or a PATCH).

    A lost session or bytes mangled on the way (NotFound, DigestMismatch) are worth a new upload (RetryableFailure);
    any other refusal is raised; a stored digest other than ours is a ProtocolError.
    """
    if response.status_code not in ok:
        error = response_error(response, what=f"upload {digest}")
        if isinstance(error, DigestMismatch | NotFound):
            raise RetryableFailure(error)
        raise error
    stored = response.headers.get("Docker-Content-Digest")
    read_capped(response)  # an empty body, read so the connection is reused
    response.close()
    if response.status_code in (201, 204) and stored and stored != digest:
        raise ProtocolError(f"registry stored {digest} as {cut(stored, 200)}")


GENERIC_TYPES = {"", "application/json", "text/plain", "application/octet-stream"}


def _media_type(content_type: str | None) -> str:
    """The media type without parameters (`; charset=utf-8`), lower case as media types compare."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _declared_media_type(raw: bytes) -> str | None:
    try:
        declared = json.loads(raw).get("mediaType")
    except (ValueError, AttributeError):
        return None
    return declared if isinstance(declared, str) and declared else None
