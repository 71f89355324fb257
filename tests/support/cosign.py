"""A signer of the tests' own that writes cosign's formats exactly, so the verifier meets what cosign makes.

- The key pair: ECDSA P-256; the private key encrypted as cosign stores it (PEM `ENCRYPTED SIGSTORE PRIVATE KEY`
  around JSON: scrypt key derivation, NaCl secretbox over the PKCS#8 DER key), and read back from that form to sign.
- The payload: cosign's simple-signing JSON, compact, in cosign's key order.
- The signature: base64 of the DER ECDSA signature over the payload's exact bytes, in the layer annotation
  `dev.cosignproject.cosign/signature` of the `sha256-<hex>.sig` manifest (a second signature appends a layer).

`COSIGN_FIXTURE` is a signature cosign itself made, published with containers/image's test fixtures
(signature/fixtures/cosign.pub and dir-img-cosign-valid/signature-1): public data, used to check the verifier.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass

import nacl.secret
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.images import get_manifest, push_blob, put_manifest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PEM_TYPE = "ENCRYPTED SIGSTORE PRIVATE KEY"
SCRYPT = {"N": 32768, "r": 8, "p": 1}  # cosign's own parameters are N=65536; they travel in the file


@dataclass(frozen=True)
class CosignKeyPair:
    private_pem: bytes  # encrypted, in cosign's format
    public_pem: str
    password: bytes

    def signer(self) -> ec.EllipticCurvePrivateKey:
        return load_encrypted_key(self.private_pem, self.password)


def generate_key_pair(password: bytes = b"test-password") -> CosignKeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    salt = os.urandom(32)
    secret = _derive(password, salt, SCRYPT)
    nonce = os.urandom(nacl.secret.SecretBox.NONCE_SIZE)
    ciphertext = nacl.secret.SecretBox(secret).encrypt(der, nonce).ciphertext
    document = {
        "kdf": {"name": "scrypt", "params": SCRYPT, "salt": base64.b64encode(salt).decode()},
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    body = base64.encodebytes(json.dumps(document).encode()).decode()
    private_pem = f"-----BEGIN {PEM_TYPE}-----\n{body}-----END {PEM_TYPE}-----\n".encode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return CosignKeyPair(private_pem=private_pem, public_pem=public_pem, password=password)


def load_encrypted_key(pem: bytes, password: bytes) -> ec.EllipticCurvePrivateKey:
    """Read a cosign-encrypted private key (what `cosign generate-key-pair` writes)."""
    text = pem.decode()
    begin, end = f"-----BEGIN {PEM_TYPE}-----", f"-----END {PEM_TYPE}-----"
    document = json.loads(base64.b64decode(text.split(begin, 1)[1].split(end, 1)[0]))
    assert document["kdf"]["name"] == "scrypt" and document["cipher"]["name"] == "nacl/secretbox"
    secret = _derive(password, base64.b64decode(document["kdf"]["salt"]), document["kdf"]["params"])
    der = nacl.secret.SecretBox(secret).decrypt(
        base64.b64decode(document["ciphertext"]), base64.b64decode(document["cipher"]["nonce"])
    )
    return serialization.load_der_private_key(der, password=None)


def _derive(password: bytes, salt: bytes, params: dict) -> bytes:
    n, r, p = params["N"], params["r"], params["p"]
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=32)


def simple_signing_payload(docker_reference: str, digest: str) -> bytes:
    """cosign's payload, byte for byte as cosign writes it."""
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": docker_reference},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        },
        separators=(",", ":"),
    ).encode()


def sign(key: ec.EllipticCurvePrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def push_signature(
    registry_url: str, repository: str, digest: str, *, payload: bytes, signature: str, payload_size: int | None = None
) -> str:
    """Add one signature layer to the image's `sha256-<hex>.sig` manifest (creating it); returns its digest."""
    tag = digest.replace(":", "-") + ".sig"
    layer_digest = push_blob(registry_url, repository, payload)
    layer = {
        "mediaType": SIMPLE_SIGNING,
        "size": len(payload) if payload_size is None else payload_size,
        "digest": layer_digest,
        "annotations": {SIGNATURE_ANNOTATION: signature},
    }
    existing = get_manifest(registry_url, repository, tag)
    layers = json.loads(existing[0])["layers"] if existing else []
    layers.append(layer)
    config = json.dumps(
        {
            "architecture": "",
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [entry["digest"] for entry in layers]},
            "config": {},
        },
        separators=(",", ":"),
    ).encode()
    config_digest = push_blob(registry_url, repository, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": config_digest},
        "layers": layers,
    }
    return put_manifest(registry_url, repository, tag, json.dumps(manifest).encode(), OCI_MANIFEST)


def sign_image(registry_url: str, repository: str, digest: str, keys: CosignKeyPair) -> str:
    """Sign `digest` as `cosign sign --key` does and push the signature; returns the .sig manifest's digest."""
    payload = simple_signing_payload(f"{registry_url.split('://', 1)[-1]}/{repository}", digest)
    return push_signature(registry_url, repository, digest, payload=payload, signature=sign(keys.signer(), payload))


# A signature made by cosign (see the module docstring).
COSIGN_FIXTURE_PUBLIC_KEY = """-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEFNLqFhf4fiN6o/glAuYnq2jYUeL0
vRuLu/z39pmbVwS9ff5AYnlwaP9sxREajdLY9ynM6G1sy6AAmb7Z63TsLg==
-----END PUBLIC KEY-----
"""
COSIGN_FIXTURE_DIGEST = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"
COSIGN_FIXTURE_PAYLOAD = (
    b'{"critical":{"identity":{"docker-reference":"192.168.64.2:5000/cosign-signed-single-sample"},'
    b'"image":{"docker-manifest-digest":"sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"},'
    b'"type":"cosign container image signature"},"optional":null}'
)
COSIGN_FIXTURE_SIGNATURE = (
    "MEYCIQDmtamqYPjMg81nqeBhptrPls44aA/r7PwLmspINJY4MwIhANKRpqe2E9UCBtGFdPoz/8jAbaQm4uP4h+IpwKTE6ClR"
)
