"""Prometheus metrics, counted from PostgreSQL (and the queue lengths from Redis) at scrape time.

Why at scrape time rather than counters kept in memory: the portal runs as several gunicorn workers and RQ work
horses that are forked per job and die with it, on several machines. An in-process counter would see one
process's share and be lost on every restart; prometheus_client's multiprocess mode fixes the first only within one
machine (it sums files in a shared directory), not across replicas behind one load balancer. The rows are the truth
every process already writes, so counting them gives every scrape, on any replica, the same complete figures, and
restarts lose nothing. A scrape is five queries and one Redis round trip. So that it does not grow with the history,
promotions that ended for good (succeeded, rejected, cancelled: never to change again) and the copy summaries of the
audit log (which never changes) are added up once per process every five minutes (five more queries then), and each
scrape adds only the promotions and entries that came later, or promotions still open or failed at that moment,
found through the primary key.

What each metric counts, and what it cannot:

- `p2p_promotions_total{integration,env,state}`: promotions (and rollbacks) that ended `succeeded`, `rejected` or
  `cancelled` (final for good, counted from the promotion rows), and every time one `failed` (counted from the
  audit log's `promotion.failed` entries, because a failed promotion can be retried and leave that state: counted
  from the rows, the series would go down, which Prometheus reads as a counter reset).
- `p2p_promotions_open{integration,env,state}`: promotions pending approval, queued or running now (a gauge).
- `p2p_promotion_duration_seconds{phase}`: finished (succeeded or failed) promotions; phase `total` from request to
  final state, `copy` from the copy's start to its end.
- `p2p_pending_approvals{env}` and `p2p_pending_approval_oldest_timestamp_seconds{env}`.
- `p2p_queue_depth{queue}`: jobs waiting in each RQ queue (absent when Redis does not answer).
- `p2p_reconciler_requeued_total`: running promotions and imports the reconciler put back on a queue, as the audit
  log records them (`promotion.requeued`, `artifact.import_requeued`).
- `p2p_audit_entries_total`: the id of the newest audit entry. Entries are never deleted and ids come from one
  sequence, so it grows by one per entry; a rolled-back append can skip an id.
- `p2p_audit_last_verified_timestamp_seconds`: when the chain was last verified intact (the dashboard's Verify
  button, whose result is kept in Redis); absent when it never was.
- `p2p_webhook_deliveries_total{result}`: deliveries `delivered`, `given_up` (retries ran out) or `pending`.
- `p2p_copy_bytes_total{mode}`: layer bytes of succeeded promotions and imports that were `copied` (sent), `mounted`
  (taken by a cross-repository mount) or `skipped` (already at the destination), from the copy summary each
  `promotion.succeeded` and `artifact.imported` audit entry records (entries written before the summary had mounted
  and skipped bytes add only copied ones).

PostgreSQL only (JSON operators, width_bucket, arrays), like production.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ci_integrations.models import AuditEntry, Bucket, Integration, Promotion, WebhookDelivery
from ci_integrations.services.audit_verification import RESULT_KEY
from ci_integrations.services.background import get_queue
from ci_integrations.services.imports import IMPORTED
from ci_integrations.services.rows import table

# Seconds: a promotion's copy takes from well under a second (a mount) to many minutes (gigabytes across clouds),
# and the whole request waits for people, so hours and a day end the scale.
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400)
REQUEUED_ACTIONS = ("promotion.requeued", "artifact.import_requeued")


# Promotions in these states never change again, so their counts and durations are added up once (per process, every
# SETTLED_REFRESH seconds) and each scrape only adds the promotions that came later or were still open then. A failed
# promotion can be retried, so it is never settled.
SETTLED = (Promotion.State.SUCCEEDED, Promotion.State.REJECTED, Promotion.State.CANCELLED)
SETTLED_REFRESH = 300
# A promotion is settled only once its row is this old: an insert still uncommitted at the refresh (and so unseen)
# would otherwise be missed for good.
SETTLED_AFTER = timedelta(minutes=10)


@dataclass
class PromotionTotals:
    """Counts per (target bucket, state) and, per phase, duration bucket counts (not cumulative), sum and count."""

    counts: dict[tuple[int, str], int] = field(default_factory=dict)
    durations: dict[str, list[float]] = field(default_factory=dict)

    def add(self, other: PromotionTotals) -> PromotionTotals:
        """These totals plus `other`'s, as new totals."""
        total = PromotionTotals(dict(self.counts), {phase: list(v) for phase, v in self.durations.items()})
        for key, count in other.counts.items():
            total.counts[key] = total.counts.get(key, 0) + count
        for phase, values in other.durations.items():
            mine = total.durations.setdefault(phase, [0.0] * len(values))
            total.durations[phase] = [a + b for a, b in zip(mine, values, strict=True)]
        return total


def _promotion_totals(where: str, params: list) -> PromotionTotals:
    """Counts and durations of the promotions matching `where`, in one grouped scan. A duration's bucket is found
    once per row (width_bucket), not once per bound."""
    finished = f"state IN ('{Promotion.State.SUCCEEDED}', '{Promotion.State.FAILED}') AND finished_at IS NOT NULL"
    bounds = "ARRAY[" + ", ".join(f"{b}" for b in DURATION_BUCKETS) + "]::float8[]"
    phases = []
    for phase, start in (("total", "created_at"), ("copy", "started_at")):
        phases.append(
            f"SELECT to_bucket_id, state, '{phase}' AS phase, "
            f"CASE WHEN {finished} THEN EXTRACT(EPOCH FROM finished_at - {start})::float8 END AS seconds "
            f"FROM {table(Promotion)} WHERE {where}"
        )
    sql = (
        "SELECT to_bucket_id, state, phase, width_bucket(seconds, " + bounds + "), COUNT(*), SUM(seconds), "
        f"COUNT(seconds) FROM ({phases[0]} UNION ALL {phases[1]}) rows GROUP BY 1, 2, 3, 4"
    )
    totals = PromotionTotals()
    with connection.cursor() as cursor:
        cursor.execute(sql, params + params)
        found = cursor.fetchall()
    for bucket_id, state, phase, slot, rows, seconds, timed in found:
        if phase == "total":
            totals.counts[bucket_id, state] = totals.counts.get((bucket_id, state), 0) + rows
        if not timed:
            continue
        # width_bucket: 0 below the first bound, i for [bound i-1, bound i), len(bounds) at or above the last. A
        # Prometheus bucket is "at most le", and the durations are real numbers, so the difference at a bound's exact
        # value is a matter of microseconds.
        values = totals.durations.setdefault(phase, [0.0] * (len(DURATION_BUCKETS) + 3))
        values[slot] += timed
        values[-2] += float(seconds or 0)
        values[-1] += timed
    return totals


COPY_MODES = {"copied": "bytes_transferred", "mounted": "bytes_mounted", "skipped": "bytes_skipped"}
COPY_ACTIONS = ("promotion.succeeded", IMPORTED)  # the audit entries that carry a copy summary


def _copy_bytes(where: str, params: list) -> dict[str, int]:
    """Bytes per copy mode, summed over the `promotion.succeeded` and `artifact.imported` audit entries matching
    `where` (audit entries never change, so a sum up to an id stays right)."""
    sums = []
    for key in COPY_MODES.values():
        value = f"after -> 'copy' -> '{key}'"
        # Only numbers are summed: an entry is whatever its writer recorded, and one odd value must not fail the scrape.
        sums.append(f"COALESCE(SUM(CASE WHEN jsonb_typeof({value}) = 'number' THEN ({value})::numeric END), 0)")
    sql = f"SELECT {', '.join(sums)} FROM {table(AuditEntry)} WHERE action IN (%s, %s) AND {where}"
    with connection.cursor() as cursor:
        cursor.execute(sql, [*COPY_ACTIONS, *params])
        row = cursor.fetchone()
    return {mode: int(total) for mode, total in zip(COPY_MODES, row, strict=True)}


@dataclass
class _Settled:
    upto_id: int  # every promotion up to this id is in `totals` or in `unsettled`
    totals: PromotionTotals
    unsettled: list[int]
    audit_upto_id: int  # copy bytes of the audit entries up to this id are in `copy_bytes`
    copy_bytes: dict[str, int]
    at: float


_settled: _Settled | None = None
_settled_lock = threading.Lock()


def _settled_totals() -> _Settled:
    """The settled promotions' totals and copy bytes, added up again when older than SETTLED_REFRESH (five queries
    then)."""
    global _settled
    with _settled_lock:
        if _settled is not None and time.monotonic() - _settled.at < SETTLED_REFRESH:
            return _settled
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT COALESCE(MAX(id), 0) FROM {table(Promotion)} WHERE created_at < %s",
                [timezone.now() - SETTLED_AFTER],
            )
            upto = cursor.fetchone()[0]
            states = list(SETTLED)
            cursor.execute(
                f"SELECT id FROM {table(Promotion)} WHERE id <= %s AND NOT (state = ANY(%s))", [upto, states]
            )
            unsettled = [row[0] for row in cursor.fetchall()]
            cursor.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table(AuditEntry)}")
            audit_upto = cursor.fetchone()[0]
        totals = _promotion_totals("id <= %s AND state = ANY(%s)", [upto, states])
        copy_bytes = _copy_bytes("id <= %s", [audit_upto])
        _settled = _Settled(upto, totals, unsettled, audit_upto, copy_bytes, at=time.monotonic())
        return _settled


def settled_forget() -> None:
    """Drop the settled totals (tests, and after restoring a database), so the next scrape adds them up afresh."""
    global _settled
    with _settled_lock:
        _settled = None


def _promotion_figures() -> tuple[PromotionTotals, dict[int, tuple[str, str]], dict[str, object]]:
    """All promotions' totals, each bucket's (integration, env), and the oldest pending approval per env."""
    settled = _settled_totals()
    recent = _promotion_totals("id > %s OR id = ANY(%s)", [settled.upto_id, settled.unsettled])
    sql = (
        f"SELECT b.id, i.name, b.env, (SELECT MIN(p.created_at) FROM {table(Promotion)} p "
        f"WHERE p.to_bucket_id = b.id AND p.state = %s) FROM {table(Bucket)} b "
        f"JOIN {table(Integration)} i ON i.id = b.integration_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [Promotion.State.PENDING_APPROVAL])
        rows = cursor.fetchall()
    names = {bucket_id: (integration, env) for bucket_id, integration, env, _ in rows}
    oldest: dict[str, object] = {}
    for _, _, env, first in rows:
        if first is not None and (env not in oldest or first < oldest[env]):
            oldest[env] = first
    return settled.totals.add(recent), names, oldest


def _failure_rows() -> list[tuple]:
    """(integration, env, failures) from the audit log: each failure once, whether or not it was retried later."""
    sql = (
        f"SELECT integration, environment, COUNT(*) FROM {table(AuditEntry)} WHERE action = %s "
        "GROUP BY integration, environment"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, ["promotion.failed"])
        return cursor.fetchall()


def _audit_and_webhook_row() -> tuple:
    """(newest audit id, requeues recorded, deliveries delivered, given up, pending) in one statement."""
    placeholders = ", ".join(["%s"] * len(REQUEUED_ACTIONS))
    deliveries = table(WebhookDelivery)
    sql = (
        f"SELECT (SELECT MAX(id) FROM {table(AuditEntry)}), "
        f"(SELECT COUNT(*) FROM {table(AuditEntry)} WHERE action IN ({placeholders})), "
        f"(SELECT COUNT(*) FROM {deliveries} WHERE delivered_at IS NOT NULL), "
        f"(SELECT COUNT(*) FROM {deliveries} WHERE delivered_at IS NULL AND given_up_at IS NOT NULL), "
        f"(SELECT COUNT(*) FROM {deliveries} WHERE delivered_at IS NULL AND given_up_at IS NULL)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, list(REQUEUED_ACTIONS))
        return cursor.fetchone()


def _redis_figures() -> tuple[dict[str, int], float | None] | None:
    """Jobs waiting per queue and the time of the last intact verification, in one round trip; None when Redis does
    not answer (the database's figures are still worth a scrape)."""
    names = list(settings.RQ_QUEUES)
    try:
        queues = [get_queue(name) for name in names]
        pipe = queues[0].connection.pipeline()
        for queue in queues:
            pipe.llen(queue.key)
        pipe.get(RESULT_KEY)
        *lengths, raw = pipe.execute()
    except Exception:  # noqa: BLE001 - any Redis failure: leave its metrics out, keep the rest
        return None
    verified = None
    if raw:
        result = json.loads(raw)
        if result.get("ok") and result.get("verified_at"):
            verified = datetime.fromisoformat(result["verified_at"]).timestamp()
    return dict(zip(names, lengths, strict=True)), verified


class PortalCollector(Collector):
    """Every p2p_* metric, computed afresh on each scrape."""

    def collect(self):
        """Yield the metric families: five queries and one Redis round trip (five more every SETTLED_REFRESH)."""
        labels = ["integration", "env", "state"]
        promotions = CounterMetricFamily(
            "p2p_promotions", "Promotions and rollbacks that ended, by outcome.", labels=labels
        )
        open_now = GaugeMetricFamily("p2p_promotions_open", "Promotions pending, queued or running now.", labels=labels)
        pending = GaugeMetricFamily("p2p_pending_approvals", "Promotions waiting for approval.", labels=["env"])
        oldest = GaugeMetricFamily(
            "p2p_pending_approval_oldest_timestamp_seconds",
            "When the oldest promotion still waiting for approval was requested.",
            labels=["env"],
        )
        totals, names, oldest_by_env = _promotion_figures()
        waiting: dict[str, int] = {}
        for (bucket_id, state), count in sorted(totals.counts.items()):
            if bucket_id not in names:
                continue  # a bucket deleted since the settled totals were added up
            integration, env = names[bucket_id]
            if state in Promotion.OPEN:
                open_now.add_metric([integration, env, state], count)
            elif state != Promotion.State.FAILED:
                promotions.add_metric([integration, env, state], count)
            if state == Promotion.State.PENDING_APPROVAL:
                waiting[env] = waiting.get(env, 0) + count
        for integration, env, count in _failure_rows():
            promotions.add_metric([integration, env, Promotion.State.FAILED], count)
        for env, count in sorted(waiting.items()):
            pending.add_metric([env], count)
        for env, first in sorted(oldest_by_env.items()):
            oldest.add_metric([env], first.timestamp())
        yield promotions
        yield open_now
        yield pending
        yield oldest

        durations = HistogramMetricFamily(
            "p2p_promotion_duration_seconds",
            "Finished promotions: from request to final state (phase=total) and the copy alone (phase=copy).",
            labels=["phase"],
        )
        for phase in ("total", "copy"):
            values = totals.durations.get(phase, [0.0] * (len(DURATION_BUCKETS) + 3))
            # values[0] is below the first bound, values[i] below bound i; Prometheus buckets are cumulative.
            cumulative, buckets = 0.0, []
            for index, bound in enumerate(DURATION_BUCKETS):
                cumulative += values[index]
                buckets.append((f"{bound:g}", cumulative))
            buckets.append(("+Inf", values[-1]))
            durations.add_metric([phase], buckets=buckets, sum_value=values[-2])
        yield durations

        settled = _settled_totals()
        recent = _copy_bytes("id > %s", [settled.audit_upto_id])
        copy_bytes = CounterMetricFamily(
            "p2p_copy_bytes", "Layer bytes of succeeded promotions: sent, mounted or already there.", labels=["mode"]
        )
        for mode in COPY_MODES:
            copy_bytes.add_metric([mode], settled.copy_bytes[mode] + recent[mode])
        yield copy_bytes

        newest, requeued, delivered, given_up, open_ = _audit_and_webhook_row()
        yield CounterMetricFamily(
            "p2p_reconciler_requeued", "Running promotions and imports the reconciler re-enqueued.", value=requeued
        )
        yield CounterMetricFamily(
            "p2p_audit_entries", "Audit entries appended (the newest entry's id).", value=newest or 0
        )
        deliveries = CounterMetricFamily("p2p_webhook_deliveries", "Webhook deliveries by outcome.", labels=["result"])
        for result, count in (("delivered", delivered), ("given_up", given_up), ("pending", open_)):
            deliveries.add_metric([result], count)
        yield deliveries

        redis = _redis_figures()
        if redis is not None:
            lengths, verified = redis
            depth = GaugeMetricFamily("p2p_queue_depth", "Jobs waiting in each RQ queue.", labels=["queue"])
            for name, length in lengths.items():
                depth.add_metric([name], length)
            yield depth
            if verified is not None:
                yield GaugeMetricFamily(
                    "p2p_audit_last_verified_timestamp_seconds",
                    "When the audit chain was last verified intact.",
                    value=verified,
                )
