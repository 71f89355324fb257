"""On-demand verification of the audit chain for the dashboard's badge, and the bounded one the API answers with.

Verifying a million entries takes most of a minute, far too long for a request, so the button queues a job and
the badge shows the last result. Results live in Redis: losing them only means the badge says "not verified yet".
The job also holds the chain against every signed checkpoint in P2P_AUDIT_CHECKPOINT_DIR when there is one.

The API verifies only what follows the newest valid checkpoint (at most P2P_AUDIT_VERIFY_MAX_ENTRIES entries), and
otherwise answers with the job's last result and queues a new run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from redis.exceptions import RedisError

from ci_integrations.models import AuditEntry
from ci_integrations.services.audit import ChainReport, audit_verify, audit_verify_checkpoints, entry_hash
from ci_integrations.services.audit_checkpoints import (
    Checkpoint,
    audit_public_key,
    checkpoint_newest_valid,
    verification_keys,
)
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
    """The job: walk the whole chain (against the checkpoint directory's, if any) and remember the outcome."""
    try:
        directory = _checkpoint_directory()
        report = audit_verify_checkpoints(directory=directory) if directory else audit_verify()
        return audit_verification_remember(report)
    finally:
        _redis().delete(RUNNING_KEY)


def audit_verification_remember(report) -> dict:
    """Keep a whole-chain verification's outcome (from the job or from `manage.py verify_audit`) for the audit page's
    badge and the `p2p_audit_last_verified_timestamp_seconds` metric."""
    result = {
        "ok": report.ok,
        "entries": report.entries,
        "head": report.head,
        "broken_id": report.broken_id,
        "problem": report.problem,
        "checkpoints": report.checkpoints,
        "verified_at": timezone.now().isoformat(timespec="seconds"),
    }
    _redis().set(RESULT_KEY, json.dumps(result))
    return result


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


def _checkpoint_directory() -> Path | None:
    """P2P_AUDIT_CHECKPOINT_DIR when it is set and exists (nothing has been published to a missing one)."""
    directory = Path(settings.P2P_AUDIT_CHECKPOINT_DIR) if settings.P2P_AUDIT_CHECKPOINT_DIR else None
    return directory if directory and directory.is_dir() else None


@dataclass(frozen=True)
class BoundedVerification:
    """What the API answers: a report on the entries after `checkpoint` (None: the whole chain), or, when that is
    more than a request may walk, the last background result (`report` None without one) and whether a new run was
    queued."""

    report: ChainReport | None
    scope: str  # "since_checkpoint", "whole_chain" or "last_background_run"
    checkpoint: Checkpoint | None
    public_key: str | None
    queued: bool = False
    last_background_run: dict | None = None


def audit_verify_bounded(*, max_entries: int | None = None) -> BoundedVerification:
    """Verify the chain from the newest valid checkpoint onward, walking at most `max_entries` entries.

    The checkpoint's own entry is checked directly (still there, same hash, same count, content matching), so a
    truncation or rewrite up to the newest checkpoint is caught without a walk. Older history is the background
    job's (and `verify_audit --checkpoints`'s) to check; its last result comes with the answer.
    """
    limit = max_entries or settings.P2P_AUDIT_VERIFY_MAX_ENTRIES
    directory = _checkpoint_directory()
    checkpoint = checkpoint_newest_valid(directory, verification_keys()) if directory else None
    last_run, _ = audit_verification_status()
    public_key = audit_public_key()
    if checkpoint:
        problem = _checkpoint_entry_problem(checkpoint)
        if problem:
            report = ChainReport(False, 0, "", checkpoint.entry_id, problem, 0, checkpoint.entry_id)
            return BoundedVerification(report, "since_checkpoint", checkpoint, public_key, False, last_run)
    after = checkpoint.entry_id if checkpoint else 0
    # One more than the limit tells "too many" from "exactly the limit" without counting a long tail.
    tail = AuditEntry.objects.filter(id__gt=after).order_by("id").values_list("id", flat=True)[: limit + 1]
    if len(tail) > limit:
        try:
            queued = audit_verification_start()
        except RedisError:
            queued = False  # the answer still says what is known; the button can queue the run later
        return BoundedVerification(None, "last_background_run", checkpoint, public_key, queued, last_run)
    report = audit_verify(start=checkpoint)
    scope = "since_checkpoint" if checkpoint else "whole_chain"
    return BoundedVerification(report, scope, checkpoint, public_key, False, last_run)


def _checkpoint_entry_problem(checkpoint: Checkpoint) -> str:
    """Why the database no longer holds what `checkpoint` signed ("" when it does)."""
    entry = AuditEntry.objects.filter(id=checkpoint.entry_id).first()
    if entry is None:
        return f"it is missing, yet checkpoint {checkpoint.label} names it: the tail was truncated or it was deleted"
    if entry.hash != checkpoint.head:
        return f"its hash differs from the one checkpoint {checkpoint.label} holds: history up to it was rewritten"
    if entry_hash(entry, entry.prev_hash) != entry.hash:
        return "its content does not match its hash"
    count = AuditEntry.objects.filter(id__lte=checkpoint.entry_id).count()
    if count != checkpoint.entries:
        return (
            f"checkpoint {checkpoint.label} counted {checkpoint.entries} entries up to it, the chain has {count}: "
            "entries before it were removed or added"
        )
    return ""
