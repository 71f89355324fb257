"""Build test images directly in a registry with plain `requests`: random layers, a config, a manifest or an index.

Nothing comes from the network. Layers are valid gzip streams (stored, not compressed) of random bytes, so tools
that sniff compression (skopeo) treat them like real layers. Works against anonymous, htpasswd (Basic) and token
(Bearer) registries; `auth` is a (user, password) tuple.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

_TYPES = {
    "oci": (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_INDEX),
    "docker": (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST),
}
_sessions: dict[tuple, requests.Session] = {}


def _types(media: str) -> tuple[str, str, str, str]:
    try:
        return _TYPES[media]
    except KeyError:
        raise ValueError(f"media must be 'oci' or 'docker', not {media!r}") from None


def _session(auth: tuple | None) -> requests.Session:
    key = tuple(auth) if auth else None
    session = _sessions.get(key)
    if session is None:
        session = _sessions[key] = requests.Session()
        session.headers["Accept-Encoding"] = "identity"
    return session


_tokens: dict[tuple, str] = {}


def _request(method: str, url: str, *, auth: tuple | None, scope: str, **kwargs) -> requests.Response:
    """One request with Basic or Bearer auth as the registry's challenge asks (token cached per scope)."""
    session = _session(auth)
    headers = dict(kwargs.pop("headers", {}) or {})
    token = _tokens.get((url.split("/v2/")[0], scope, auth))
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif auth:
        headers["Authorization"] = requests.auth._basic_auth_str(*auth)
    response = session.request(method, url, headers=headers, timeout=60, **kwargs)
    challenge = response.headers.get("WWW-Authenticate", "")
    if response.status_code == 401 and challenge.lower().startswith("bearer"):
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        token_response = session.get(
            params["realm"],
            params={"service": params.get("service", ""), "scope": scope},
            auth=auth,
            timeout=30,
        )
        token_response.raise_for_status()
        body = token_response.json()
        token = body.get("token") or body.get("access_token")
        _tokens[(url.split("/v2/")[0], scope, auth)] = token
        headers["Authorization"] = f"Bearer {token}"
        data = kwargs.get("data")
        if data is not None and not isinstance(data, bytes | str):
            raise RuntimeError("cannot replay a streamed body after an auth challenge; push small data first")
        response = session.request(method, url, headers=headers, timeout=60, **kwargs)
    return response


def _check(response: requests.Response, what: str) -> requests.Response:
    if response.status_code >= 400:
        raise RuntimeError(f"{what}: HTTP {response.status_code} {response.text[:500]}")
    return response


def gzip_stored(data: bytes) -> bytes:
    """A valid gzip stream that stores `data` uncompressed (fast, and sniffed as gzip)."""
    compressor = zlib.compressobj(0, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


def random_layer(size: int) -> bytes:
    """About `size` bytes of gzip-wrapped random data (a few bytes of gzip framing on top)."""
    return gzip_stored(os.urandom(max(size - 30, 1)))


def push_blob(
    registry_url: str, repository: str, data: bytes, *, auth: tuple | None = None, digest: str | None = None
) -> str:
    """Upload one blob monolithically (POST then PUT ?digest=); returns its digest."""
    digest = digest or "sha256:" + hashlib.sha256(data).hexdigest()
    scope = f"repository:{repository}:pull,push"
    head = _request("HEAD", f"{registry_url}/v2/{repository}/blobs/{digest}", auth=auth, scope=scope)
    if head.status_code == 200:
        return digest
    start = _check(
        _request("POST", f"{registry_url}/v2/{repository}/blobs/uploads/", auth=auth, scope=scope), "start upload"
    )
    location = requests.compat.urljoin(start.url, start.headers["Location"])
    separator = "&" if "?" in location else "?"
    _check(
        _request(
            "PUT",
            f"{location}{separator}digest={digest}",
            auth=auth,
            scope=scope,
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        ),
        "upload blob",
    )
    return digest


def push_blob_stream(
    registry_url: str, repository: str, chunks: Iterable[bytes], *, auth: tuple | None = None
) -> tuple[str, int]:
    """Upload a blob of unknown digest from an iterable, chunked PATCH then PUT; returns (digest, size).

    For big benchmark layers: nothing is held in memory. (Anonymous or Basic registries only.)
    """
    scope = f"repository:{repository}:pull,push"
    start = _check(
        _request("POST", f"{registry_url}/v2/{repository}/blobs/uploads/", auth=auth, scope=scope), "start upload"
    )
    location = requests.compat.urljoin(start.url, start.headers["Location"])
    hasher = hashlib.sha256()
    size = 0

    def body() -> Iterator[bytes]:
        nonlocal size
        for chunk in chunks:
            hasher.update(chunk)
            size += len(chunk)
            yield chunk

    patched = _check(
        _session(auth).patch(
            location,
            data=body(),
            headers={"Content-Type": "application/octet-stream", "Authorization": _auth_header(auth)},
            timeout=600,
        ),
        "upload chunk",
    )
    location = requests.compat.urljoin(patched.url, patched.headers["Location"])
    digest = "sha256:" + hasher.hexdigest()
    separator = "&" if "?" in location else "?"
    _check(_request("PUT", f"{location}{separator}digest={digest}", auth=auth, scope=scope), "finish upload")
    return digest, size


def _auth_header(auth: tuple | None) -> str | None:
    return requests.auth._basic_auth_str(*auth) if auth else None


def random_layer_stream(size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """`size` random bytes as a gzip-stored stream, generated chunk by chunk."""
    compressor = zlib.compressobj(0, zlib.DEFLATED, 31)
    left = size
    while left > 0:
        piece = os.urandom(min(chunk, left))
        left -= len(piece)
        out = compressor.compress(piece)
        if out:
            yield out
    yield compressor.flush()


def put_manifest(
    registry_url: str, repository: str, reference: str, body: bytes, media_type: str, *, auth: tuple | None = None
) -> str:
    """PUT a manifest's exact bytes; returns its digest."""
    scope = f"repository:{repository}:pull,push"
    _check(
        _request(
            "PUT",
            f"{registry_url}/v2/{repository}/manifests/{reference}",
            auth=auth,
            scope=scope,
            data=body,
            headers={"Content-Type": media_type},
        ),
        f"put manifest {repository}:{reference}",
    )
    return "sha256:" + hashlib.sha256(body).hexdigest()


def image_manifest(
    registry_url: str,
    repository: str,
    *,
    layers: int = 2,
    layer_size: int = 4096,
    media: str = "oci",
    auth: tuple | None = None,
    config_extra: dict | None = None,
    platform: str = "linux/amd64",
) -> tuple[bytes, str]:
    """Push random layers and a config; return (manifest bytes, media type) without pushing the manifest."""
    manifest_type, config_type, layer_type, _ = _types(media)
    os_name, _, arch = platform.partition("/")
    layer_descriptors = []
    for _ in range(layers):
        data = random_layer(layer_size)
        digest = push_blob(registry_url, repository, data, auth=auth)
        layer_descriptors.append({"mediaType": layer_type, "digest": digest, "size": len(data)})
    config = {
        "architecture": arch or "amd64",
        "os": os_name or "linux",
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descriptors]},
        "config": {"Labels": {"p2p.test": os.urandom(4).hex()}},
    }
    config.update(config_extra or {})
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_digest = push_blob(registry_url, repository, config_bytes, auth=auth)
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": len(config_bytes)},
        "layers": layer_descriptors,
    }
    # Indented on purpose: a client that re-serialises the manifest would change its digest.
    return json.dumps(manifest, indent=3).encode(), manifest_type


def push_random_image(
    registry_url: str,
    repository: str,
    tag: str,
    *,
    layers: int = 2,
    layer_size: int = 4096,
    media: str = "oci",
    auth: tuple | None = None,
    config_extra: dict | None = None,
    platform: str = "linux/amd64",
) -> str:
    """Push a single-platform image under `tag` (or by digest when tag is None); returns the manifest digest."""
    body, media_type = image_manifest(
        registry_url,
        repository,
        layers=layers,
        layer_size=layer_size,
        media=media,
        auth=auth,
        config_extra=config_extra,
        platform=platform,
    )
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    return put_manifest(registry_url, repository, tag or digest, body, media_type, auth=auth)


def push_index(
    registry_url: str,
    repository: str,
    tag: str,
    *,
    platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64"),
    media: str = "oci",
    layers: int = 2,
    layer_size: int = 4096,
    auth: tuple | None = None,
) -> str:
    """Push one image per platform (by digest) and an index (OCI) or manifest list (Docker) over them under `tag`."""
    manifest_type, _, _, index_type = _types(media)
    children = []
    for platform in platforms:
        body, media_type = image_manifest(
            registry_url, repository, layers=layers, layer_size=layer_size, media=media, auth=auth, platform=platform
        )
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        put_manifest(registry_url, repository, digest, body, media_type, auth=auth)
        os_name, _, arch = platform.partition("/")
        children.append(
            {
                "mediaType": manifest_type,
                "digest": digest,
                "size": len(body),
                "platform": {"architecture": arch, "os": os_name},
            }
        )
    index = {"schemaVersion": 2, "mediaType": index_type, "manifests": children}
    return put_manifest(registry_url, repository, tag, json.dumps(index, indent=3).encode(), index_type, auth=auth)


def get_manifest(
    registry_url: str, repository: str, reference: str, auth: tuple | None = None
) -> tuple[bytes, str] | None:
    """The manifest's raw bytes and Content-Type, or None when absent."""
    response = _request(
        "GET",
        f"{registry_url}/v2/{repository}/manifests/{reference}",
        auth=auth,
        scope=f"repository:{repository}:pull",
        headers={"Accept": MANIFEST_ACCEPT},
    )
    if response.status_code == 404:
        return None
    _check(response, f"get manifest {repository}:{reference}")
    return response.content, response.headers.get("Content-Type", "")


def get_manifest_digest(registry_url: str, repository: str, reference: str, auth: tuple | None = None) -> str | None:
    """sha256 of the manifest bytes the registry serves for `reference`, or None when absent."""
    found = get_manifest(registry_url, repository, reference, auth=auth)
    return None if found is None else "sha256:" + hashlib.sha256(found[0]).hexdigest()


def blob_exists(registry_url: str, repository: str, digest: str, auth: tuple | None = None) -> bool:
    response = _request(
        "HEAD",
        f"{registry_url}/v2/{repository}/blobs/{digest}",
        auth=auth,
        scope=f"repository:{repository}:pull",
    )
    return response.status_code == 200


def delete_blob(registry_url: str, repository: str, digest: str, auth: tuple | None = None) -> None:
    """Unlink a blob from a repository (the registry needs storage.delete.enabled, which start_registry sets)."""
    response = _request(
        "DELETE",
        f"{registry_url}/v2/{repository}/blobs/{digest}",
        auth=auth,
        scope=f"repository:{repository}:*",
    )
    if response.status_code not in (202, 404):
        _check(response, f"delete blob {digest}")


def manifest_of_size(size: int) -> bytes:
    """A valid OCI image manifest padded (in an annotation) to exactly `size` bytes."""
    body = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "a" * 64, "size": 2},
        "layers": [],
        "annotations": {"pad": ""},
    }
    bare = len(json.dumps(body, separators=(",", ":")).encode())
    body["annotations"]["pad"] = "x" * (size - bare)
    raw = json.dumps(body, separators=(",", ":")).encode()
    assert len(raw) == size
    return raw


def push_with_token(registry_url: str, repository: str, tag: str, token: str) -> int:
    """Push a one-layer image sending only `Authorization: Bearer <token>`, the way a CI job handed a ready token
    does (no token service of its own). Returns the status of the first step the registry refuses, else the
    manifest PUT's status (201)."""
    headers = {"Authorization": f"Bearer {token}"}
    blobs = []
    for data in (random_layer(512), b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}'):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        start = requests.post(f"{registry_url}/v2/{repository}/blobs/uploads/", headers=headers, timeout=10)
        if start.status_code != 202:
            return start.status_code
        location = start.headers["Location"]
        if location.startswith("/"):
            location = registry_url + location
        separator = "&" if "?" in location else "?"
        put = requests.put(
            f"{location}{separator}digest={digest}",
            data=data,
            headers={**headers, "Content-Type": "application/octet-stream"},
            timeout=10,
        )
        if put.status_code != 201:
            return put.status_code
        blobs.append({"digest": digest, "size": len(data)})
    layer, config = blobs
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **config},
        "layers": [{"mediaType": OCI_LAYER, **layer}],
    }
    answer = requests.put(
        f"{registry_url}/v2/{repository}/manifests/{tag}",
        data=json.dumps(manifest).encode(),
        headers={**headers, "Content-Type": OCI_MANIFEST},
        timeout=10,
    )
    return answer.status_code
