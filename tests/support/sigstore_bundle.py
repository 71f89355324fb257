"""A sigstore of the tests' own, offline: a CA, a certificate-transparency log and a transparency log whose keys
live only in memory, the trusted root naming them, and keyless signatures as cosign 3 attaches them (a sigstore
bundle v0.3 referrer holding a DSSE envelope of an in-toto statement about the image).

Every signature is real (the CA's over the certificate, the CT log's SCT over the precertificate, the log's
signed entry timestamp and checkpoint), so the `sigstore` library verifies the bundle exactly as it verifies one
from the public-good instance; only the trust anchors are ours. Formats: RFC 6962 (SCTs), Rekor's `dsse` entry
and SET, C2SP signed notes (checkpoints), the sigstore bundle and trusted-root JSON.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import rfc8785
from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from tests.support.attachments import push_fallback_index, push_referrer, referrer_entry
from tests.support.images import get_manifest

BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
IN_TOTO = "application/vnd.in-toto+json"
COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
LOG_ORIGIN = "log.p2p.test"
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _spki(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _log_entry(key, url: str) -> dict:
    return {
        "baseUrl": url,
        "hashAlgorithm": "SHA2_256",
        "logId": {"keyId": _b64(hashlib.sha256(_spki(key)).digest())},
        "publicKey": {
            "rawBytes": _b64(_spki(key)),
            "keyDetails": "PKIX_ECDSA_P256_SHA_256",
            "validFor": {"start": "2020-01-01T00:00:00Z"},
        },
    }


@dataclass
class OfflineSigstore:
    """The three keys of a sigstore instance, and when its signatures are made."""

    when: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    ca_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    ct_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    log_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2p test fulcio")])
        self.ca_name = name
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(1)
            .not_valid_before(self.when - timedelta(days=1))
            .not_valid_after(self.when + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )

    def trusted_root(self) -> dict:
        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [_log_entry(self.log_key, f"https://{LOG_ORIGIN}")],
            "ctlogs": [_log_entry(self.ct_key, "https://ct.p2p.test")],
            "certificateAuthorities": [
                {
                    "subject": {"commonName": "p2p test fulcio", "organization": "p2p tests"},
                    "uri": "https://fulcio.p2p.test",
                    "certChain": {
                        "certificates": [{"rawBytes": _b64(self.ca.public_bytes(serialization.Encoding.DER))}]
                    },
                    "validFor": {"start": "2020-01-01T00:00:00Z"},
                }
            ],
        }

    def write_trusted_root(self, path: Path) -> str:
        path.write_text(json.dumps(self.trusted_root()))
        return str(path)

    def certificate(self, key, *, subject: str, issuer: str) -> x509.Certificate:
        """A Fulcio-style short-lived certificate for `subject` (a SAN URI) from OIDC `issuer`, with its SCT."""
        issuer_v2 = b"\x0c" + bytes([len(issuer)]) + issuer.encode()  # DER UTF8String (issuers are short)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.when - timedelta(minutes=5))
            .not_valid_after(self.when + timedelta(minutes=10))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(subject)]), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), False)
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8"), issuer_v2), False)
        )
        # RFC 6962 3.2: the SCT signs the certificate's TBS as it is without the SCT list extension.
        tbs = builder.sign(self.ca_key, hashes.SHA256()).tbs_certificate_bytes
        millis = int(self.when.timestamp() * 1000)
        signed = (
            struct.pack("!BBQH", 0, 0, millis, 1)  # v1, certificate_timestamp, timestamp, precert_entry
            + hashlib.sha256(_spki(self.ca_key)).digest()
            + len(tbs).to_bytes(3, "big")
            + tbs
            + b"\x00\x00"  # no extensions
        )
        signature = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (
            b"\x00"
            + hashlib.sha256(_spki(self.ct_key)).digest()
            + struct.pack("!QH", millis, 0)
            + struct.pack("!BBH", 4, 3, len(signature))  # sha256, ecdsa
            + signature
        )
        sct_list = struct.pack("!HH", len(sct) + 2, len(sct)) + sct
        extension = x509.UnrecognizedExtension(
            ExtensionOID.PRECERT_SIGNED_CERTIFICATE_TIMESTAMPS, asn1.encode_der(sct_list)
        )
        return builder.add_extension(extension, critical=False).sign(self.ca_key, hashes.SHA256())

    def bundle(self, *, subject: str, issuer: str, statement: dict) -> dict:
        """A sigstore bundle v0.3: the statement signed as DSSE by a fresh key certified for `subject`, logged."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.certificate(key, subject=subject, issuer=issuer)
        payload = json.dumps(statement).encode()
        pae = b"DSSEv1 %d %s %d %s" % (len(IN_TOTO), IN_TOTO.encode(), len(payload), payload)
        signature = key.sign(pae, ec.ECDSA(hashes.SHA256()))
        envelope = {"payload": _b64(payload), "payloadType": IN_TOTO, "signatures": [{"sig": _b64(signature)}]}
        pem = cert.public_bytes(serialization.Encoding.PEM)
        body = rfc8785.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": {
                    "envelopeHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(json.dumps(envelope).encode()).hexdigest(),
                    },
                    "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
                    "signatures": [{"signature": _b64(signature), "verifier": _b64(pem)}],
                },
            }
        )
        log_id = hashlib.sha256(_spki(self.log_key)).digest()
        integrated = int(self.when.timestamp())
        leaf = hashlib.sha256(b"\x00" + body).digest()  # a log of one entry: its root is the leaf's hash
        note = f"{LOG_ORIGIN}\n1\n{_b64(leaf)}\n"
        note_signature = self.log_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        promise = rfc8785.dumps(
            {"body": _b64(body), "integratedTime": integrated, "logID": log_id.hex(), "logIndex": 0}
        )
        return {
            "mediaType": BUNDLE_TYPE,
            "verificationMaterial": {
                "certificate": {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))},
                "tlogEntries": [
                    {
                        "logIndex": "0",
                        "logId": {"keyId": _b64(log_id)},
                        "kindVersion": {"kind": "dsse", "version": "0.0.1"},
                        "integratedTime": str(integrated),
                        "canonicalizedBody": _b64(body),
                        "inclusionPromise": {
                            "signedEntryTimestamp": _b64(self.log_key.sign(promise, ec.ECDSA(hashes.SHA256())))
                        },
                        "inclusionProof": {
                            "logIndex": "0",
                            "rootHash": _b64(leaf),
                            "treeSize": "1",
                            "hashes": [],
                            "checkpoint": {
                                "envelope": note + f"\n— {LOG_ORIGIN} {_b64(log_id[:4] + note_signature)}\n"
                            },
                        },
                    }
                ],
            },
            "dsseEnvelope": envelope,
        }


def image_statement(repository: str, digest: str) -> dict:
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": repository, "digest": {"sha256": digest.removeprefix("sha256:")}}],
        "predicateType": COSIGN_SIGN_PREDICATE,
        "predicate": {},
    }


def attach_bundle(registry_url: str, repository: str, digest: str, bundle: dict) -> str:
    """Attach the bundle as cosign 3 does (a referrer of artifact type bundle v0.3), listed in the fallback index
    since docker-registry has no referrers API; returns the referrer's digest."""
    referrer = push_referrer(
        registry_url, repository, digest, artifact_type=BUNDLE_TYPE, payload=json.dumps(bundle).encode()
    )
    listed = get_manifest(registry_url, repository, digest.replace(":", "-"))
    entries = json.loads(listed[0])["manifests"] if listed else []
    size = len(get_manifest(registry_url, repository, referrer)[0])
    push_fallback_index(registry_url, repository, digest, [*entries, referrer_entry(referrer, size, BUNDLE_TYPE)])
    return referrer
