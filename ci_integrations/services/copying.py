"""Copying: the preflight of a promotion, and the job that copies its image by digest and records the outcome.

The copy runs under the target bucket's copy lock, writes progress and a heartbeat about once a second, retries
transient registry errors a few times, and ends the promotion succeeded (with its arrival) or failed with a message
that holds no credential. Running it twice, even at once, is harmless.

May import: models, registry, promotions (auto-promotion after a success), arrivals, locks, audit, webhooks,
background, emergency_stop.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from django.conf import settings
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from ci_integrations.encryption import CredentialsUnreadable
from ci_integrations.models import Arrival, Artifact, Promotion
from ci_integrations.registry import check_access, copy_image, plan_copy, resolve_manifest
from ci_integrations.registry import errors as registry_errors
from ci_integrations.services.actors import Actor
from ci_integrations.services.arrivals import arrival_record, immutable_tag_holder
from ci_integrations.services.audit import audit_record
from ci_integrations.services.background import transition
from ci_integrations.services.emergency_stop import (
    emergency_stop_active,
    emergency_stop_waiting_text,
    no_emergency_stop,
)
from ci_integrations.services.locks import artifact_locked, bucket_copy_lock
from ci_integrations.services.notifications import notify_promotion
from ci_integrations.services.policy import promotion_evaluate
from ci_integrations.services.promotions import log_line, promotion_log_append, promotions_auto_request

logger = logging.getLogger(__name__)

State = Promotion.State
WORKER = Actor.system("p2p-worker")
PROGRESS_EVERY = 1.0  # seconds between progress/heartbeat writes


def _copy_retry_delays() -> list[float]:
    return list(getattr(settings, "P2P_COPY_RETRY_DELAYS", [2.0, 8.0]))


# ---- preflight -------------------------------------------------------------------------------------------------


def promotion_preflight(*, artifact: Artifact, to_env: str) -> dict:
    """What a copy would meet: source readable, target writable, tag conflict, bytes to move. Never raises for
    registry trouble; each problem becomes an entry in `errors`."""
    ev = promotion_evaluate(artifact=artifact, to_env=to_env, actor=Actor.system("preflight"))
    result = {
        "source_readable": None,
        "target_writable": None,
        "tag_conflict": None,
        "tag": ev.tag,
        "blobs_total": None,
        "bytes_total": None,
        "bytes_to_move": None,
        "errors": [],
    }
    if ev.from_bucket is None or ev.to_bucket is None:
        result["errors"].append("no workflow step with both buckets leads into " + to_env)
        return result
    locations = {}
    for key, bucket, reference, push in (
        ("source_readable", ev.from_bucket, artifact.digest, False),
        ("target_writable", ev.to_bucket, ev.tag or artifact.digest, True),
    ):
        side = "source" if key == "source_readable" else "target"
        try:
            # Building the location reads the registry's stored credentials, which fails when they were encrypted
            # under a key no longer in P2P_FERNET_KEYS.
            locations[key] = bucket.location(reference)
            check_access(locations[key], push=push)
            result[key] = True
        except CredentialsUnreadable as exc:
            result[key] = False
            result["errors"].append(f"{side}: registry {bucket.registry.name!r}: {exc}")
        except registry_errors.RegistryError as exc:
            result[key] = False
            result["errors"].append(f"{side}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - a preflight reports, it never fails the page
            result[key] = False
            result["errors"].append(registry_errors.redact(f"{key}: {exc}"))
    if len(locations) < 2:
        return result
    try:
        plan = plan_copy(locations["source_readable"], locations["target_writable"])
        result.update(
            tag_conflict=plan.tag_conflict_digest,
            blobs_total=plan.blobs_total,
            bytes_total=plan.bytes_total,
            bytes_to_move=plan.bytes_to_move,
        )
    except registry_errors.RegistryError as exc:
        result["errors"].append(f"plan: {exc.message}")
    except Exception as exc:  # noqa: BLE001
        result["errors"].append(registry_errors.redact(f"plan: {exc}"))
    return result


# ---- the copy job ----------------------------------------------------------------------------------------------


def promotion_execute(*, promotion_id: int) -> None:
    """The copy job: claim the promotion, copy the image by digest into the target bucket, record the outcome.

    Safe to run twice, even at once: the claim is a conditional update, copies into one bucket are serialised, and
    an image already there with the same digest counts as copied. While the emergency stop is pulled nothing is
    claimed: the promotion goes back to approved and waits for the scheduler.
    """
    p = Promotion.objects.filter(pk=promotion_id).only("state", "to_bucket_id").first()
    if p is None or p.state not in Promotion.RUNNABLE:
        return
    with bucket_copy_lock(p.to_bucket_id):
        now = timezone.now()
        with transaction.atomic():
            claimed = transition(
                Promotion.objects.filter(no_emergency_stop(), pk=promotion_id, state__in=Promotion.RUNNABLE),
                state=State.RUNNING,
                attempts=F("attempts") + 1,
                started_at=now,
                heartbeat_at=now,
                finished_at=None,
                log=Concat(F("log"), Value(log_line("copy started"))),
            )
            if not claimed:
                _hold_if_stopped(promotion_id)
                return  # another worker, a cancel or the reconciler got there first, or the stop holds it
            p = Promotion.objects.select_related(
                "to_bucket__registry", "from_bucket__registry", "artifact", "integration"
            ).get(pk=promotion_id)
            audit_record(
                actor=WORKER,
                action="promotion.started",
                obj=p,
                before={"state": State.QUEUED},
                after={"state": State.RUNNING, "attempt": p.attempts, "job_id": p.job_id},
            )
        _run(p)


def _hold_if_stopped(promotion_id: int) -> None:
    """A queued promotion the stop kept from starting waits, approved, until the scheduler queues it again."""
    stop = emergency_stop_active()
    if stop is not None:
        transition(
            Promotion.objects.filter(pk=promotion_id, state__in=Promotion.RUNNABLE),
            state=State.APPROVED,
            waiting_for=emergency_stop_waiting_text(stop),
            log=Concat(F("log"), Value(log_line("held by the emergency stop"))),
        )


def _source(p: Promotion):
    """Copy by digest; a rollback copies from the target's own repository, or from the source bucket when the
    digest is no longer there."""
    if p.kind == Promotion.Kind.ROLLBACK:
        own = p.to_bucket.location(p.digest)
        try:
            resolve_manifest(own)
            return own
        except registry_errors.NotFound:
            if p.from_bucket_id:
                return p.from_bucket.location(p.digest)
            return own
    return p.from_bucket.location(p.digest)


def _run(p: Promotion) -> None:
    # Checked again under the bucket lock: another promotion may have taken the tag since this one was requested.
    holder = immutable_tag_holder(p.to_bucket, p.tag, p.digest)
    if holder is not None:
        _finish_failed(p, f"tag {p.tag!r} is immutable in {p.to_bucket.env} and already holds {holder.artifact.digest}")
        return
    delays = _copy_retry_delays()
    summary = None
    for attempt in range(len(delays) + 1):
        try:
            summary = _copy_with_progress(p, _source(p), p.to_bucket.location(p.tag))
            break
        except registry_errors.RegistryError as exc:
            if exc.retryable and attempt < len(delays):
                promotion_log_append(
                    p.pk,
                    registry_errors.cut(f"transient registry error, retrying in {delays[attempt]:g}s: {exc.message}"),
                    heartbeat_at=timezone.now(),
                )
                time.sleep(delays[attempt])
                continue
            _finish_failed(p, exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - whatever broke, the promotion must not stay running
            trace = "".join(traceback.format_exception(exc))
            logger.error("promotion %s: copy crashed\n%s", p.pk, registry_errors.redact(trace))
            _finish_failed(p, f"unexpected error: {exc.__class__.__name__}: {exc}")
            return
    if summary.digest != p.digest:
        _finish_failed(p, f"the destination holds {summary.digest}, not {p.digest}")
        return
    _finish_succeeded(p, summary)


def _copy_with_progress(p: Promotion, src, dst):
    """Run copy_image in a helper thread; this thread writes progress and the heartbeat about once a second.

    The progress callback may be called from several copy threads, so it only stores the latest numbers.
    """
    latest = {}
    lock = threading.Lock()

    def progress(snapshot) -> None:
        with lock:
            latest["p"] = snapshot

    def write() -> None:
        with lock:
            snap = latest.get("p")
        fields = {"heartbeat_at": timezone.now()}
        if snap is not None:
            fields.update(
                blobs_total=snap.blobs_total,
                blobs_done=snap.blobs_done,
                bytes_total=snap.bytes_total,
                bytes_done=snap.bytes_done,
            )
        Promotion.objects.filter(pk=p.pk, state=State.RUNNING).update(**fields)

    promotion_log_append(p.pk, registry_errors.cut(f"copying {src} → {dst}"))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"promotion-{p.pk}") as pool:
        future = pool.submit(
            copy_image, src, dst, progress=progress, parallelism=settings.P2P_COPY_PARALLELISM, expected_digest=p.digest
        )
        while True:
            try:
                summary = future.result(timeout=PROGRESS_EVERY)
                break
            except FutureTimeout:
                write()
    write()  # the final numbers, however short the copy was
    return summary


def _finish_succeeded(p: Promotion, summary) -> None:
    with transaction.atomic():
        if Promotion.objects.select_for_update().filter(pk=p.pk, state=State.RUNNING).only("pk").first() is None:
            return  # recorded by a concurrent run already
        # The artifact before the bucket and the audit chain, as promotion_request takes them: the auto-promotion
        # below requests with this lock, and taking it only after the audit lock deadlocks against a request of
        # this artifact that holds it and waits for its own audit entry.
        artifact_locked(p.artifact_id)
        details = summary.as_dict()
        moved = f"{summary.blobs_copied} copied, {summary.blobs_mounted} mounted, {summary.blobs_skipped} present"
        transition(
            Promotion.objects.filter(pk=p.pk, state=State.RUNNING),
            state=State.SUCCEEDED,
            finished_at=timezone.now(),
            heartbeat_at=timezone.now(),
            result_digest=summary.digest,
            error="",
            blobs_done=F("blobs_total"),
            bytes_done=F("bytes_total"),
            log=Concat(
                F("log"),
                Value(
                    log_line(
                        f"copied {summary.digest} ({moved}, {summary.bytes_transferred} bytes, {summary.seconds:.2f}s)"
                    )
                ),
            ),
        )
        current = Promotion.objects.select_related("to_bucket", "from_bucket", "artifact", "integration").get(pk=p.pk)
        rollback = current.kind == Promotion.Kind.ROLLBACK
        arrival_record(
            bucket=current.to_bucket,
            artifact=current.artifact,
            tag=current.tag,
            how=Arrival.How.ROLLBACK if rollback else Arrival.How.PROMOTION,
            actor=WORKER,
            promotion=current,
        )
        audit_record(
            actor=WORKER,
            action="promotion.succeeded",
            obj=current,
            before={"state": State.RUNNING},
            after={"state": State.SUCCEEDED, "result_digest": summary.digest, "copy": details},
        )
        if rollback:
            audit_record(
                actor=WORKER,
                action="bucket.rolled_back",
                obj=current.to_bucket,
                after={"digest": current.digest, "tag": current.tag, "promotion": current.pk},
                reason=current.reason,
            )
        notify_promotion(promotion=current, event="rolled_back" if rollback else "succeeded", actor=WORKER)
        if not rollback:
            # The next step counts as asked for by whoever asked for this one.
            cause = current.on_behalf_of if current.on_behalf_of_id else current.requested_by
            promotions_auto_request(artifact=current.artifact, from_bucket=current.to_bucket, cause=cause)


def _finish_failed(p: Promotion, message: str) -> None:
    # The error and log are shown on the promotion page and sent to webhooks: no credential may reach them, and no
    # registry or crash may fill the row (redacted before it is cut, so no secret's prefix is left behind).
    message = registry_errors.cut(registry_errors.redact(message))
    with transaction.atomic():
        won = transition(
            Promotion.objects.filter(pk=p.pk, state=State.RUNNING),
            state=State.FAILED,
            finished_at=timezone.now(),
            error=message,
            log=Concat(F("log"), Value(log_line(registry_errors.cut(f"failed: {message}")))),
        )
        if not won:
            return  # recorded by a concurrent run already
        current = Promotion.objects.select_related("to_bucket", "from_bucket", "integration").get(pk=p.pk)
        audit_record(
            actor=WORKER,
            action="promotion.failed",
            obj=current,
            before={"state": State.RUNNING},
            after={"state": State.FAILED, "error": message, "attempt": current.attempts},
        )
        notify_promotion(promotion=current, event="failed", actor=WORKER)
