"""Copying: the job that copies a promotion's image by digest and records the outcome (services/preflight.py says
beforehand what the copy would meet).

The copy runs under the target bucket's copy lock, writes progress and a heartbeat about once a second, retries
transient registry errors a few times, and ends the promotion succeeded (with its arrival) or failed with a message
that holds no credential. Running it twice, even at once, is harmless.

Hangs are short, visible and stoppable: the whole copy has a deadline (P2P_COPY_DEADLINE, by default growing with the
bytes to move), every retry of a registry call becomes a line of the promotion's log, and a cancel of the running
promotion is seen by the heartbeat, which stops the copy; the tag is written only after a last check that the
promotion is still running (a conditional update that also makes it too late to cancel).

May import: models, registry, promotions (auto-promotion after a success), arrivals, locks, audit, webhooks,
background, emergency_stop.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait

from django.conf import settings
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from ci_integrations.models import Arrival, Promotion
from ci_integrations.registry import copy_image, resolve_manifest
from ci_integrations.registry import errors as registry_errors
from ci_integrations.registry.budget import Budget, using_budget
from ci_integrations.services.actors import Actor
from ci_integrations.services.arrivals import arrival_record, immutable_tag_holder
from ci_integrations.services.audit import audit_record
from ci_integrations.services.background import transition
from ci_integrations.services.emergency_stop import (
    emergency_stop_active,
    emergency_stop_waiting_text,
    no_emergency_stop,
)
from ci_integrations.services.evidence import promotion_evidence_attach
from ci_integrations.services.locks import artifact_locked, bucket_copy_lock
from ci_integrations.services.notifications import notify_promotion
from ci_integrations.services.promotions import log_line, promotion_log_append, promotions_auto_request
from ci_integrations.services.supply_chain import attached_mode, signature_requirement, signature_verdict

logger = logging.getLogger(__name__)

State = Promotion.State
WORKER = Actor.system("p2p-worker")
PROGRESS_EVERY = 1.0  # seconds between progress/heartbeat writes
TICK = 0.1  # how often the heartbeat thread looks for requests of the copy thread (a retry line, the tag check)
# The default copy deadline: this much for the calls of any copy, plus a second per this many bytes to move
# (5 MiB/s, far below any registry link worth using), never past the promotions queue's RQ timeout.
DEADLINE_BASE_SECONDS = 600
DEADLINE_BYTES_PER_SECOND = 5 * 1024 * 1024
DEADLINE_CAP_SECONDS = 3600 - 60


def _copy_retry_delays() -> list[float]:
    return list(getattr(settings, "P2P_COPY_RETRY_DELAYS", [2.0, 8.0]))


def copy_deadline(bytes_to_move: int | None = None) -> tuple[float, str]:
    """Seconds a promotion's copy may take in all, and how to name that limit in its error."""
    fixed = getattr(settings, "P2P_COPY_DEADLINE", None)
    if fixed:
        return float(fixed), f"the copy deadline (P2P_COPY_DEADLINE, {fixed:g} s)"
    seconds = min(DEADLINE_CAP_SECONDS, DEADLINE_BASE_SECONDS + (bytes_to_move or 0) / DEADLINE_BYTES_PER_SECOND)
    return seconds, f"the copy deadline ({seconds:.0f} s for {bytes_to_move or 0} bytes; P2P_COPY_DEADLINE sets it)"


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
                result_digest="",  # set again only when this run goes to write the tag
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
    signature = None
    if p.kind != Promotion.Kind.ROLLBACK:
        # Checked again as the copy starts: the signature seen at request time may have been removed since.
        verdict = signature_verdict(step=p.step, bucket=p.from_bucket, digest=p.digest)
        if verdict is not None and not verdict.verified:
            _finish_failed(p, f"signature: {verdict.message}")
            return
        signature = verdict.as_dict() if verdict is not None else None
    delays = _copy_retry_delays()
    summary = None
    # One budget for every attempt: the deadline bounds the promotion, not each try of it.
    seconds, what = copy_deadline()
    budget = Budget(seconds, what=what)
    for attempt in range(len(delays) + 1):
        try:
            with using_budget(budget):
                summary = _copy_with_progress(p, _source(p), p.to_bucket.location(p.tag), budget)
            break
        except registry_errors.CopyStopped:
            promotion_log_append(p.pk, "copy stopped: the promotion was cancelled; the tag was not written")
            return
        except registry_errors.RegistryError as exc:
            if exc.retryable and attempt < len(delays):
                promotion_log_append(
                    p.pk,
                    registry_errors.cut(f"transient registry error, retrying in {delays[attempt]:g}s: {exc.message}"),
                    heartbeat_at=timezone.now(),
                )
                if _wait_or_cancelled(p.pk, delays[attempt]):
                    promotion_log_append(p.pk, "copy stopped: the promotion was cancelled; the tag was not written")
                    return
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
    entry = _finish_succeeded(p, summary, signature=signature)
    if entry is not None:
        # After the commit: the statement names the audit entry, and a registry write must not hold the transaction.
        promotion_evidence_attach(promotion_id=p.pk, audit_entry_id=entry.pk)


def _wait_or_cancelled(pk: int, seconds: float) -> bool:
    """Sleep between two attempts, looking every second whether the promotion was cancelled meanwhile."""
    end = time.monotonic() + seconds
    while True:
        if not Promotion.objects.filter(pk=pk, state=State.RUNNING).exists():
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(PROGRESS_EVERY, left))


class _CopyTalk:
    """What the copy threads ask of the heartbeat thread, which alone touches the database (a thread of its own
    would need a connection of its own, and could not see a test's transaction): retry lines for the log, the
    latest progress, and the last check before the tag is written."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latest = None
        self.lines: list[str] = []
        self.publish_asked = threading.Event()
        self.publish_answered = threading.Event()
        self.publish_allowed = False

    def progress(self, snapshot) -> None:
        with self.lock:
            self.latest = snapshot

    def notify(self, line: str) -> None:
        with self.lock:
            self.lines.append(line)

    @contextlib.contextmanager
    def publish_gate(self):
        self.publish_asked.set()
        self.publish_answered.wait()
        if not self.publish_allowed:
            raise registry_errors.CopyStopped("the promotion was cancelled before its tag was written")
        yield


def _copy_with_progress(p: Promotion, src, dst, budget: Budget):
    """Run copy_image in a helper thread; this thread writes progress, retry lines and the heartbeat, stops the copy
    when the promotion is cancelled, and answers the copy's last check before it writes the tag."""
    talk = _CopyTalk()
    roles = [(_host(p.to_bucket.registry.url), p.to_bucket.env)]
    if p.from_bucket_id:
        roles.append((_host(p.from_bucket.registry.url), p.from_bucket.env))

    def write() -> None:
        with talk.lock:
            snap, lines, talk.lines = talk.latest, talk.lines, []
        if snap is not None and budget.deadline is not None and not getattr(budget, "sized", False):
            budget.sized = True  # the deadline grows with what there is to move, once that is known
            seconds, what = copy_deadline(snap.bytes_total)
            if not settings.P2P_COPY_DEADLINE:
                # Counted from the promotion's first try (the budget's start), not from this one.
                budget.set_total(seconds, what=what)
        fields = {"heartbeat_at": timezone.now()}
        if snap is not None:
            fields.update(
                blobs_total=snap.blobs_total,
                blobs_done=snap.blobs_done,
                bytes_total=snap.bytes_total,
                bytes_done=snap.bytes_done,
            )
        if lines:
            text = "".join(log_line(registry_errors.cut(_with_role(line, roles))) for line in lines)
            fields["log"] = Concat(F("log"), Value(text))
        if not Promotion.objects.filter(pk=p.pk, state=State.RUNNING).update(**fields):
            budget.stop("cancelled")  # no longer running: someone cancelled it

    def answer_publish() -> None:
        # One conditional UPDATE: still running, so the tag may be written, and from now on a cancel is refused.
        talk.publish_allowed = bool(
            Promotion.objects.filter(pk=p.pk, state=State.RUNNING).update(result_digest=p.digest)
        )
        if not talk.publish_allowed:
            budget.stop("cancelled")
        talk.publish_answered.set()

    promotion_log_append(p.pk, registry_errors.cut(f"copying {src} → {dst}"))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"promotion-{p.pk}") as pool:
        future = pool.submit(
            contextvars.copy_context().run,  # the copy runs under this thread's budget (deadline, stop switch)
            copy_image,
            src,
            dst,
            progress=talk.progress,
            parallelism=settings.P2P_COPY_PARALLELISM,
            expected_digest=p.digest,
            attached=attached_mode(step=p.step, bucket=p.to_bucket),
            require_signatures=p.kind != Promotion.Kind.ROLLBACK and signature_requirement(p.step) is not None,
            notify=talk.notify,
            publish_gate=talk.publish_gate,
        )
        last_write = time.monotonic()
        while not futures_wait([future], timeout=TICK).done:
            if talk.publish_asked.is_set() and not talk.publish_answered.is_set():
                answer_publish()
            if time.monotonic() - last_write >= PROGRESS_EVERY:
                write()
                last_write = time.monotonic()
        if talk.publish_asked.is_set() and not talk.publish_answered.is_set():
            answer_publish()  # cannot happen (the copy waits for the answer), but never leave it waiting
    write()  # the final numbers and lines, however short the copy was
    return future.result()


def _host(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def _with_role(line: str, roles: list[tuple[str, str]]) -> str:
    """A retry line named by the environment whose registry it is ("prod registry 127.0.0.1:5002 did not …")."""
    for host, env in roles:
        if host and line.startswith(host):
            return f"{env} registry {line}"
    return f"registry {line}"


def _finish_succeeded(p: Promotion, summary, *, signature: dict | None = None):
    """Record the success; returns its `promotion.succeeded` audit entry (None when a concurrent run did)."""
    with transaction.atomic():
        if Promotion.objects.select_for_update().filter(pk=p.pk, state=State.RUNNING).only("pk").first() is None:
            return None  # recorded by a concurrent run already
        # The artifact before the bucket and the audit chain, as promotion_request takes them: the auto-promotion
        # below requests with this lock, and taking it only after the audit lock deadlocks against a request of
        # this artifact that holds it and waits for its own audit entry.
        artifact_locked(p.artifact_id)
        details = summary.as_dict()
        moved = f"{summary.blobs_copied} copied, {summary.blobs_mounted} mounted, {summary.blobs_skipped} present"
        lines = [f"copied {summary.digest} ({moved}, {summary.bytes_transferred} bytes, {summary.seconds:.2f}s)"]
        if summary.attachments:
            kinds = ", ".join(sorted({a["kind"] for a in summary.attachments}))
            lines.append(f"{len(summary.attachments)} attachment(s) travelled ({kinds})")
        lines.extend(f"warning: {w}" for w in summary.attachment_warnings)
        if signature:
            lines.append(f"signature: {signature['message']}")
        transition(
            Promotion.objects.filter(pk=p.pk, state=State.RUNNING),
            state=State.SUCCEEDED,
            finished_at=timezone.now(),
            heartbeat_at=timezone.now(),
            result_digest=summary.digest,
            error="",
            blobs_done=F("blobs_total"),
            bytes_done=F("bytes_total"),
            attachments=summary.attachments,
            warnings=summary.attachment_warnings,
            signature=signature or {},
            log=Concat(F("log"), Value("".join(log_line(registry_errors.cut(line)) for line in lines))),
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
            attachments=summary.attachments,
        )
        entry = audit_record(
            actor=WORKER,
            action="promotion.succeeded",
            obj=current,
            before={"state": State.RUNNING},
            after={
                "state": State.SUCCEEDED,
                "result_digest": summary.digest,
                "copy": details,
                "attachments": summary.attachments,
                **({"warnings": summary.attachment_warnings} if summary.attachment_warnings else {}),
                **({"signature": signature} if signature else {}),
            },
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
    return entry


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
