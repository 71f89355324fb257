"""Typed registry errors. Callers branch on the class; `.retryable` says whether trying later may help.

Messages keep the registry's own words (from the OCI error JSON) but never carry credentials or tokens, and never
grow past MAX_MESSAGE_LENGTH characters: a hostile registry cannot fill a log line, a row or an audit entry.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict

MAX_MESSAGE_LENGTH = 2000
CUT_MARK = " (cut)"


def cut(text: str, limit: int = MAX_MESSAGE_LENGTH) -> str:
    """`text` capped at `limit` characters, ending in " (cut)" when something was cut off.

    The result is never longer than `limit`, so it fits a column or field of that size.
    """
    if len(text) <= limit:
        return text
    if limit <= len(CUT_MARK):
        return text[:limit]
    return text[: limit - len(CUT_MARK)] + CUT_MARK


class RegistryError(Exception):
    """Base of every error the registry package raises."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        # Redacted before it is cut: cutting first could leave a secret's prefix that redact() no longer recognises.
        message = cut(redact(message))
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class InvalidReference(RegistryError, ValueError):
    """A malformed image reference, repository, tag or digest."""


class AuthenticationError(RegistryError):
    """401: no or wrong credentials, or a token the registry refuses."""


class AccessDenied(RegistryError):
    """403 / DENIED: the credentials are fine but may not do this."""


class NotFound(RegistryError):
    """404 / MANIFEST_UNKNOWN / NAME_UNKNOWN / BLOB_UNKNOWN."""


class DigestMismatch(RegistryError):
    """Bytes do not hash to the digest they were served or stored under."""


class ImageMismatch(DigestMismatch):
    """The source image is not the one the caller expected (expected_digest differs)."""


class TagConflict(RegistryError):
    """The destination tag holds a different digest and the registry refuses to move it (immutable tags)."""

    def __init__(self, message: str, *, existing_digest: str | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.existing_digest = existing_digest


class AttachmentRefused(RegistryError):
    """The destination refused a signature that the step requires to travel with the image."""


class TransientError(RegistryError):
    """5xx, 429, connection resets and timeouts; raised once the retries are spent."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class DeadlineExceeded(RegistryError):
    """The work ran out of time (a web request's budget, a promotion's deadline): retrying within it cannot help.

    `host` names the registry that did not answer in time, when one did not."""

    def __init__(self, message: str, *, host: str = "", **kwargs):
        super().__init__(message, **kwargs)
        self.host = host


class CopyStopped(RegistryError):
    """Someone asked the work to stop (a cancelled promotion); nothing after the stop was written."""


class RegistryPolicyViolation(RegistryError):
    """The registry's own policy refuses the image (Harbor's 412 PROJECTPOLICYVIOLATION: a vulnerability or signature
    policy of the project); the message carries the registry's words."""


class RateLimited(TransientError):
    """429 with the registry's rate-limit headers, and the window resets later than the work can wait: trying again
    before `reset_at` (Unix time) only spends more of the limit."""

    retryable = False

    def __init__(self, message: str, *, reset_at: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.reset_at = reset_at


class PersistentServerError(RegistryError):
    """A server error that came back the same (status and body) try after try: trying more would only repeat it."""


class LayerTooLarge(RegistryError):
    """A layer is over a limit the destination registry documents (GHCR's 10 GB per layer, ECR's 52,000 MiB, ACR
    import's 2 GiB from public registries, or the registry's `max_layer_bytes`); found before any byte moved."""


class ProtocolError(RegistryError):
    """The registry answered something this client cannot use (bad JSON, unsupported media type, missing header)."""


class DestinationRefused(RegistryError):
    """The client refused to connect: the destination guard said no (an internal address, say), or a token realm is
    neither https nor on the registry's own host. Not retryable: asking again gets the same answer."""


class CannotScope(RegistryError):
    """The registry (as configured) cannot issue credentials limited to one repository; the message says what to
    configure. Handing out the registry-wide credentials instead would let one bucket's holder write every other."""


class IndexTooLarge(ProtocolError):
    """An image index (with the indexes nested in it) names more distinct manifests than the client will copy."""


# The registry's own words inside a message; the rest of the message (what was asked, the status) stays readable.
MAX_DETAIL_LENGTH = 1000
_NOT_FOUND_CODES = {"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN", "BLOB_UPLOAD_UNKNOWN", "NOT_FOUND"}
_SECRET_PATTERNS = [
    # Authorization headers and bearer tokens, JWT-looking strings, password/token query or form fields.
    (re.compile(r"(?i)(authorization:?\s*)(basic|bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1\2 [redacted]"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{16,}"), r"\1 [redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (
        re.compile(r"(?i)((?:password|passwd|secret|token|access_token|refresh_token|signature|sig)=)[^&\s\"']+"),
        r"\1[redacted]",
    ),
    (re.compile(r"(?i)(https?://)[^/@\s:]+:[^/@\s]+@"), r"\1[redacted]@"),
    # Quoted keys, as in a credentials dict or JSON body quoted by an exception: 'password': 'hunter2'.
    (
        re.compile(
            r"(?i)([\"'](?:password|passwd|secret|client_secret|token|access_token|refresh_token)[\"']\s*:\s*)"
            r"([\"'])(?:(?!\2).)*\2"
        ),
        r"\1\2[redacted]\2",
    ),
]


# Secrets this process has used (passwords, tokens, the Authorization values built from them). Patterns miss a secret
# that a registry or proxy echoes in an unexpected shape (a short Basic value inside JSON, a bare password), so every
# value the registry package sends is remembered here and cut out of any text that passes through redact().
_KNOWN_SECRETS: OrderedDict[str, None] = OrderedDict()
_KNOWN_SECRETS_LOCK = threading.Lock()
MAX_KNOWN_SECRETS = 512
# Shorter values cannot be cut out without mangling ordinary words; the patterns above still apply to them.
MIN_KNOWN_SECRET_LENGTH = 6


def remember_secret(*values: str | None) -> None:
    """Mark values as secret for this process: redact() removes them wherever they occur."""
    with _KNOWN_SECRETS_LOCK:
        for value in values:
            if not isinstance(value, str) or len(value) < MIN_KNOWN_SECRET_LENGTH:
                continue
            _KNOWN_SECRETS[value] = None
            _KNOWN_SECRETS.move_to_end(value)
        while len(_KNOWN_SECRETS) > MAX_KNOWN_SECRETS:
            _KNOWN_SECRETS.popitem(last=False)


def redact(text: str) -> str:
    """Remove anything that looks like a credential, and every secret this process has used, from text meant for logs
    and users."""
    with _KNOWN_SECRETS_LOCK:
        known = sorted(_KNOWN_SECRETS, key=len, reverse=True)  # a longer secret may contain a shorter one
    for value in known:
        if value in text:
            text = text.replace(value, "[redacted]")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def registry_errors(body: bytes | str | None) -> list[dict]:
    """The `errors` list of an OCI error body, or [] when the body is not one."""
    if not body:
        return []
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    errors = parsed.get("errors") if isinstance(parsed, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def error_for_response(
    status: int,
    body: bytes | str | None,
    *,
    what: str,
    retry_after: float | None = None,
    content_type: str | None = None,
) -> RegistryError:
    """Map an HTTP status and OCI error JSON to a typed error, keeping the registry's codes and messages.

    A body that is not OCI error JSON is never quoted (an HTML page from an internal host, a proxy's error page):
    the message names only the status and the body's content type.
    """
    errors = registry_errors(body)
    code = str(errors[0].get("code", "")).upper() if errors else ""
    detail = cut(
        " ".join(
            "; ".join(
                filter(None, (f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors))
            ).split()
        ),
        MAX_DETAIL_LENGTH,
    )
    if not detail and body:
        media_type = (content_type or "").split(";", 1)[0].strip().lower()
        detail = f"{cut(media_type, 100) or 'untyped'} body, not registry error JSON"
    message = f"{what}: HTTP {status}" + (f" ({detail})" if detail else "")
    kwargs = {"status": status, "code": code or None}
    if status == 401 or code == "UNAUTHORIZED":
        return AuthenticationError(message, **kwargs)
    if status == 403 or code == "DENIED":
        return AccessDenied(message, **kwargs)
    if status == 412 and code == "PROJECTPOLICYVIOLATION":
        return RegistryPolicyViolation(message, **kwargs)
    if status == 429 or code == "TOOMANYREQUESTS":
        return TransientError(message, retry_after=retry_after, **kwargs)
    if status >= 500:
        return TransientError(message, retry_after=retry_after, **kwargs)
    if code == "DIGEST_INVALID":
        return DigestMismatch(message, **kwargs)
    if status == 404 or code in _NOT_FOUND_CODES:
        return NotFound(message, **kwargs)
    if status in (409, 412) or (code in ("TAG_INVALID",) and _mentions_immutability(detail)):
        return TagConflict(message, **kwargs)
    if code == "NAME_INVALID":
        return InvalidReference(message, **kwargs)
    return ProtocolError(message, **kwargs)


def _mentions_immutability(detail: str) -> bool:
    return bool(re.search(r"(?i)immutab|already exists|cannot be overwritten|overwrit", detail))
