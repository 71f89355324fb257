"""Prometheus metrics, counted from PostgreSQL (and the queue lengths from Redis) at scrape time.

Why at scrape time rather than counters kept in memory: the portal runs as several gunicorn workers and RQ work
horses that are forked per job and die with it, on several machines. An in-process counter would see one
process's share and be lost on every restart; prometheus_client's multiprocess mode fixes the first only within one
machine (it sums files in a shared directory), not across replicas behind one load balancer. The rows are the truth
every process already writes, so counting them gives every scrape, on any replica, the same complete figures, and
restarts lose nothing. The cost is a few grouped queries per scrape (four, plus one Redis round trip), over the
promotion and webhook delivery tables and index lookups of a few actions in the audit log.

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
"""

from __future__ import annotations

import json
from datetime import datetime

from django.conf import settings
from django.db import connection
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ci_integrations.models import AuditEntry, Bucket, Integration, Promotion, WebhookDelivery
from ci_integrations.services.audit_verification import RESULT_KEY
from ci_integrations.services.background import get_queue
from ci_integrations.services.rows import table

# Seconds: a promotion's copy takes from well under a second (a mount) to many minutes (gigabytes across clouds),
# and the whole request waits for people, so hours and a day end the scale.
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400)
REQUEUED_ACTIONS = ("promotion.requeued", "artifact.import_requeued")


def _promotion_rows() -> list[tuple]:
    """(integration, env, state, count, oldest created_at) for every combination that has promotions."""
    sql = (
        f"SELECT i.name, b.env, p.state, COUNT(*), MIN(p.created_at) FROM {table(Promotion)} p "
        f"JOIN {table(Bucket)} b ON b.id = p.to_bucket_id JOIN {table(Integration)} i ON i.id = p.integration_id "
        "GROUP BY i.name, b.env, p.state"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def _failure_rows() -> list[tuple]:
    """(integration, env, failures) from the audit log: each failure once, whether or not it was retried later."""
    sql = (
        f"SELECT integration, environment, COUNT(*) FROM {table(AuditEntry)} WHERE action = %s "
        "GROUP BY integration, environment"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, ["promotion.failed"])
        return cursor.fetchall()


def _duration_row() -> tuple:
    """For phase total then copy: a count per bucket bound, then the sum and the count, in one scan."""
    finished = (Promotion.State.SUCCEEDED, Promotion.State.FAILED)
    parts, params = [], []
    for start in ("created_at", "started_at"):
        seconds = f"EXTRACT(EPOCH FROM finished_at - {start})"
        for bound in DURATION_BUCKETS:
            parts.append(f"COUNT(*) FILTER (WHERE {seconds} <= %s)")
            params.append(bound)
        parts += [f"COALESCE(SUM({seconds}), 0)", f"COUNT({seconds})"]
    sql = f"SELECT {', '.join(parts)} FROM {table(Promotion)} WHERE state IN (%s, %s) AND finished_at IS NOT NULL"
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *finished])
        return cursor.fetchone()


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
        """Yield the metric families, from four queries and one Redis round trip."""
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
        waiting: dict[str, list] = {}
        for integration, env, state, count, first in _promotion_rows():
            if state in Promotion.OPEN:
                open_now.add_metric([integration, env, state], count)
            elif state != Promotion.State.FAILED:
                promotions.add_metric([integration, env, state], count)
            if state == Promotion.State.PENDING_APPROVAL:
                entry = waiting.setdefault(env, [0, first])
                entry[0] += count
                entry[1] = min(entry[1], first)
        for env, (count, first) in sorted(waiting.items()):
            pending.add_metric([env], count)
            oldest.add_metric([env], first.timestamp())
        for integration, env, count in _failure_rows():
            promotions.add_metric([integration, env, Promotion.State.FAILED], count)
        yield promotions
        yield open_now
        yield pending
        yield oldest

        durations = HistogramMetricFamily(
            "p2p_promotion_duration_seconds",
            "Finished promotions: from request to final state (phase=total) and the copy alone (phase=copy).",
            labels=["phase"],
        )
        row = list(_duration_row())
        width = len(DURATION_BUCKETS) + 2
        for index, phase in enumerate(("total", "copy")):
            part = row[index * width : (index + 1) * width]
            counts, total_seconds, count = part[: len(DURATION_BUCKETS)], part[-2], part[-1]
            buckets = [(f"{bound:g}", n) for bound, n in zip(DURATION_BUCKETS, counts, strict=True)]
            durations.add_metric([phase], buckets=[*buckets, ("+Inf", count)], sum_value=float(total_seconds))
        yield durations

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
