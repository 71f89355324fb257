"""Idempotency-Key for POST endpoints: one stored response per token and key, kept 24 hours.

- same key, same body: the stored response is replayed (with `Idempotent-Replayed: true`);
- same key, another body: 422;
- same key while the first request still runs: 409.

The claim is a row insert that commits before the operation runs, so of two concurrent requests exactly one wins the
unique constraint. Responses that a retry could change (409 conflicts, 429, 5xx) are not kept: the key is released so
the client may retry with it. Nor are responses that carry secrets (push credentials): the table is plain JSON, shown
in the admin, and a repeated request may simply be answered afresh. A claim abandoned by a crashed process is taken
over after IN_FLIGHT_TIMEOUT.

The request fingerprint is an HMAC under SECRET_KEY, not a bare hash: bodies can hold source credentials, and a fast
unkeyed hash of a mostly known body would let anyone reading the table test password guesses offline.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from ci_integrations.api.errors import IdempotencyInFlight, IdempotencyMismatch
from ci_integrations.models import ApiToken, IdempotencyRecord

HEADER = "Idempotency-Key"
KEEP_FOR = timedelta(hours=24)
IN_FLIGHT_TIMEOUT = timedelta(minutes=5)
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"  # printable ASCII without spaces; the schema states the same pattern
KEY_RE = re.compile(KEY_PATTERN.replace("$", r"\Z"))
UNSTORED_STATUSES = {409, 429}


def _fingerprint(request) -> str:
    body = json.dumps(request.data, cls=DjangoJSONEncoder, sort_keys=True, separators=(",", ":"))
    message = f"{request.method} {request.path}\n{body}"
    return salted_hmac("p2p.idempotency.fingerprint", message, algorithm="sha256").hexdigest()


def idempotency_claim(request, token: ApiToken) -> IdempotencyRecord | Response | None:
    """The fresh claim for this request, a stored Response to replay, or None when no key was sent.

    Raises 422 for a reused key with another body, 409 while the first request is in flight.
    """
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not KEY_RE.match(key):
        raise ValidationError({HEADER: "must be 1 to 255 printable ASCII characters without spaces"})
    fingerprint = _fingerprint(request)
    now = timezone.now()
    # Expired records of this token go on its next keyed request, so the table stays the size of one day's keys.
    IdempotencyRecord.objects.filter(token=token, created_at__lt=now - KEEP_FOR).delete()
    try:
        with transaction.atomic():
            return IdempotencyRecord.objects.create(token=token, key=key, request_fingerprint=fingerprint)
    except IntegrityError:
        pass
    record = IdempotencyRecord.objects.filter(token=token, key=key).first()
    if record is None:  # released between our insert and read: try once more
        return idempotency_claim(request, token)
    if record.request_fingerprint != fingerprint:
        raise IdempotencyMismatch()
    if record.response_status is None:
        abandoned = IdempotencyRecord.objects.filter(
            pk=record.pk, response_status__isnull=True, created_at__lt=now - IN_FLIGHT_TIMEOUT
        ).update(created_at=now)
        if abandoned:
            return record
        raise IdempotencyInFlight()
    response = Response(record.response_body, status=record.response_status)
    response["Idempotent-Replayed"] = "true"
    return response


def idempotency_store(record: IdempotencyRecord, response, *, keep: bool = True) -> None:
    """Keep the response for replay, or release the key when a retry could legitimately answer differently or the
    response must not be stored (keep=False: it carries secrets)."""
    if not keep or response.status_code >= 500 or response.status_code in UNSTORED_STATUSES:
        IdempotencyRecord.objects.filter(pk=record.pk).delete()
        return
    # The renderer's own encoder, so a replay is byte-for-byte what the first response said (dates included).
    body = json.loads(json.dumps(getattr(response, "data", None), cls=JSONEncoder))
    IdempotencyRecord.objects.filter(pk=record.pk).update(response_status=response.status_code, response_body=body)
