"""What travels with an image and what a step demands of it: the `attached` option and the signature gate.

`attached` (all, signatures, none) is set on a workflow step or a bucket; the step's wins, then the destination
bucket's, and all is the default. `require_signature` on a step names the public keys (PEM, optionally named) and
the keyless identities (issuer and subject globs) whose cosign signature the image must carry, checked at request
time (a policy condition) and again when the copy runs.

May import: models, registry, encryption.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from ci_integrations.encryption import CredentialsUnreadable
from ci_integrations.models import Attached, Bucket, WorkflowStep
from ci_integrations.registry import RegistryError
from ci_integrations.registry.keyless import KeylessIdentity
from ci_integrations.registry.signatures import (
    SignatureRequirement,
    SignatureVerdict,
    TrustedKey,
    UnreadableKey,
    verify_image_signature,
)

REQUIREMENT_KEYS = {"keys", "keyless"}


def attached_mode(*, step: WorkflowStep | None, bucket: Bucket | None) -> str:
    """Which attachments travel: the step's setting, else the destination bucket's, else all."""
    return (step.attached if step else "") or (bucket.attached if bucket else "") or Attached.ALL


def signature_requirement(step: WorkflowStep | None) -> SignatureRequirement | None:
    """The step's accepted keys, or None when it requires no signature."""
    spec = step.require_signature if step is not None else None
    if not spec:
        return None
    return SignatureRequirement(
        keys=tuple(TrustedKey(pem=k["pem"], name=k.get("name", "")) for k in spec.get("keys", [])),
        keyless=tuple(KeylessIdentity(issuer=k["issuer"], subject=k["subject"]) for k in spec.get("keyless", [])),
        trusted_root=settings.P2P_SIGSTORE_TRUSTED_ROOT,
    )


def signature_verdict(*, step: WorkflowStep | None, bucket: Bucket, digest: str) -> SignatureVerdict | None:
    """Whether the image `digest` in `bucket` carries a signature the step accepts; None when none is required.

    Never raises for registry trouble: a signature that cannot be checked is a signature not verified.
    """
    requirement = signature_requirement(step)
    if requirement is None:
        return None
    try:
        return verify_image_signature(bucket.location(digest), requirement)
    except CredentialsUnreadable as exc:
        return SignatureVerdict(False, f"could not be checked: registry {bucket.registry.name!r}: {exc}")
    except RegistryError as exc:
        return SignatureVerdict(False, f"could not be checked: {exc.message}")


def require_signature_parse(value: Any, problem) -> dict:
    """A step's `require_signature` from the config file, normalised to {"keys": [{"name", "pem"}], "keyless":
    [{"issuer", "subject"}]}; each problem goes to `problem(suffix, message)`. A key is a PEM string, or a mapping
    {name, pem}; a keyless identity is {issuer, subject}, both globs, and needs P2P_SIGSTORE_TRUSTED_ROOT."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problem("", "must be a mapping with keys and/or keyless")
        return {}
    for key in sorted(set(value) - REQUIREMENT_KEYS):
        problem(f".{key}", "unknown key (expected: keys, keyless)")
    found = {"keys": _keys_parse(value["keys"], problem) if "keys" in value else []}
    if "keyless" in value:
        found["keyless"] = _keyless_parse(value["keyless"], problem)
    if not found["keys"] and not found.get("keyless"):
        if "keys" not in value and "keyless" not in value:
            problem(".keys", "must be a list of one or more PEM public keys (or give keyless identities)")
        return {}
    return found


def _keys_parse(keys: Any, problem) -> list[dict]:
    if not isinstance(keys, list) or not keys:
        problem(".keys", "must be a list of one or more PEM public keys")
        return []
    found = []
    for index, entry in enumerate(keys):
        name, pem = ("", entry) if isinstance(entry, str) else (None, None)
        if isinstance(entry, dict):
            name, pem = entry.get("name", ""), entry.get("pem")
        if not isinstance(pem, str) or not isinstance(name, str):
            problem(f".keys[{index}]", "must be a PEM string or a mapping with name and pem")
            continue
        try:
            TrustedKey(pem=pem, name=name).public_key  # noqa: B018 - reading it is the check
        except UnreadableKey as exc:
            problem(f".keys[{index}]", str(exc))
            continue
        found.append({"name": name, "pem": pem})
    return found


def _keyless_parse(entries: Any, problem) -> list[dict]:
    if not settings.P2P_SIGSTORE_TRUSTED_ROOT:
        problem(
            ".keyless", "keyless signatures need a sigstore trusted root: set P2P_SIGSTORE_TRUSTED_ROOT to its file"
        )
        return []
    if not isinstance(entries, list) or not entries:
        problem(".keyless", "must be a list of one or more {issuer, subject}")
        return []
    found = []
    for index, entry in enumerate(entries):
        if (
            not isinstance(entry, dict)
            or set(entry) != {"issuer", "subject"}
            or not all(isinstance(entry[k], str) and entry[k].strip() for k in ("issuer", "subject"))
        ):
            problem(f".keyless[{index}]", "must be {issuer, subject}: two non-empty texts (globs such as acme/*)")
            continue
        found.append({"issuer": entry["issuer"], "subject": entry["subject"]})
    return found


def require_signature_export(spec: dict) -> dict:
    """The config file's form of a stored requirement (a bare PEM for an unnamed key)."""
    exported: dict = {"keys": [k if k.get("name") else k["pem"] for k in spec.get("keys", [])]}
    if spec.get("keyless"):
        exported["keyless"] = spec["keyless"]
    if not exported["keys"]:
        del exported["keys"]
    return exported
