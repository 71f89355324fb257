"""On-demand verification of the audit chain for the dashboard's badge.

Verifying a million entries takes most of a minute, far too long for a request, so the button queues a job and
the badge shows the last result. Results live in Redis: losing them only means the badge says "not verified yet".
"""

from __future__ import annotations

import json

from django.utils import timezone

from ci_integrations.models import AuditEntry
from ci_integrations.services.audit import audit_verify
from ci_integrations.services.background import VERIFY_AUDIT, get_queue

RESULT_KEY = "p2p:audit:last-verification"
RUNNING_KEY = "p2p:audit:verification-running"
RUNNING_FOR_AT_MOST = 3600  # seconds; a worker that died mid-run does not block the button for longer


def _redis():
    return get_queue(VERIFY_AUDIT.queue).connection


def audit_verification_start() -> bool:
    """Queue a verification unless one is already queued or running; True when this call queued it."""
    if not _redis().set(RUNNING_KEY, timezone.now().isoformat(), nx=True, ex=RUNNING_FOR_AT_MOST):
        return False
    VERIFY_AUDIT.enqueue_now(job_id=VERIFY_AUDIT.new_job_id("chain"), job_timeout=RUNNING_FOR_AT_MOST)
    return True


def audit_verification_run() -> dict:
    """The job: walk the whole chain and remember the outcome."""
    try:
        report = audit_verify()
        result = {
            "ok": report.ok,
            "entries": report.entries,
            "head": report.head,
            "broken_id": report.broken_id,
            "problem": report.problem,
            "verified_at": timezone.now().isoformat(timespec="seconds"),
        }
        _redis().set(RESULT_KEY, json.dumps(result))
        return result
    finally:
        _redis().delete(RUNNING_KEY)


def audit_verification_status() -> tuple[dict | None, bool]:
    """The last result (or None) and whether a verification is queued or running now.

    A result whose head entry is not in this database's chain (the database was reset, or another portal shares
    this Redis database) says nothing about this chain, so it is not shown.
    """
    try:
        redis = _redis()
        raw, running = redis.get(RESULT_KEY), redis.exists(RUNNING_KEY)
    except Exception:  # noqa: BLE001 - the badge must render even when Redis is down
        return None, False
    result = json.loads(raw) if raw else None
    if result and not _describes_this_chain(result):
        result = None
    return result, bool(running)


def _describes_this_chain(result: dict) -> bool:
    if not result.get("entries"):
        return not AuditEntry.objects.exists()
    return AuditEntry.objects.filter(hash=result.get("head")).exists()
