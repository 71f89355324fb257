"""The `make run` demo: two local registries and small images built from random bytes, with no network.

`python -m ci_integrations.demo registry PORT DATA_DIR` writes a registry config under DATA_DIR and runs Debian's
docker-registry on 127.0.0.1:PORT (the Procfile starts two). `push_demo_image` builds an image in a registry with
plain HTTP: random layers, a config and an OCI manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zlib

import requests

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REGISTRY_BINARY = os.environ.get("P2P_REGISTRY_BINARY", "/usr/bin/docker-registry")


def registry_config(port: int, data_dir: str) -> str:
    """A minimal distribution config (JSON is valid YAML): filesystem storage, deletes allowed, loopback only."""
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": os.path.abspath(data_dir)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": hashlib.sha256(f"demo-{port}".encode()).hexdigest()},
    }
    return json.dumps(config, indent=2)


def serve_registry(port: int, data_dir: str) -> None:
    """Write the config and replace this process with docker-registry (so honcho can stop it directly).

    Its log goes to DATA_DIR/registry.log.
    """
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "config.yml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(registry_config(port, data_dir))
    # The registry logs every 404 of a blob HEAD as an error; keep that out of the `make run` console.
    log = os.open(os.path.join(data_dir, "registry.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.execv(REGISTRY_BINARY, [REGISTRY_BINARY, "serve", path])


def wait_for_registry(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(f"{url}/v2/", timeout=2).status_code in (200, 401):
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no registry answered at {url} within {timeout:g}s")
        time.sleep(0.2)


def _push_blob(url: str, repository: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if requests.head(f"{url}/v2/{repository}/blobs/{digest}", timeout=30).status_code == 200:
        return digest
    start = requests.post(f"{url}/v2/{repository}/blobs/uploads/", timeout=30)
    start.raise_for_status()
    location = requests.compat.urljoin(start.url, start.headers["Location"])
    separator = "&" if "?" in location else "?"
    requests.put(
        f"{location}{separator}digest={digest}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=60,
    ).raise_for_status()
    return digest


def push_demo_image(url: str, repository: str, tag: str, *, layers: int = 3, layer_size: int = 256 * 1024) -> str:
    """Push a small single-platform OCI image of random layers under `tag` to an anonymous registry; its digest."""
    descriptors = []
    for _ in range(layers):
        # A gzip stream that stores (does not compress) random bytes: a valid layer, cheap to make.
        compressor = zlib.compressobj(0, zlib.DEFLATED, 31)
        data = compressor.compress(os.urandom(layer_size)) + compressor.flush()
        descriptors.append({"mediaType": OCI_LAYER, "digest": _push_blob(url, repository, data), "size": len(data)})
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]},
        "config": {"Labels": {"org.opencontainers.image.version": tag}},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": _push_blob(url, repository, config_bytes),
            "size": len(config_bytes),
        },
        "layers": descriptors,
    }
    body = json.dumps(manifest, indent=2).encode()
    requests.put(
        f"{url}/v2/{repository}/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST}, timeout=60
    ).raise_for_status()
    return "sha256:" + hashlib.sha256(body).hexdigest()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "registry":
        sys.exit("usage: python -m ci_integrations.demo registry PORT DATA_DIR")
    serve_registry(int(sys.argv[2]), sys.argv[3])
