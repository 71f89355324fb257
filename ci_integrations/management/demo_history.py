"""A few weeks of delivery history for the demo, so the insights page has something to show after `make run`.

The rows (artifacts, promotions and their arrivals in qa, staging and prod, with a few rollbacks and failed copies)
are written directly with past timestamps: the services always record "now". Their images are not in the demo
registries, and the audit log does not list them; they are there to be measured, not promoted further.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from ci_integrations.models import Arrival, Artifact, Bucket, Integration, Promotion

# (integration, releases per week, share of prod deployments rolled back, typical hours from commit to prod)
PROFILES = [("demo-catalog", 9, 0.08, 20), ("demo-payments", 3, 0.2, 70)]
WEEKS = 5


def seed_delivery_history(*, now: datetime | None = None, seed: int = 13) -> int:
    """Write WEEKS weeks of history for each PROFILES integration (which must exist with qa, staging and prod
    buckets); returns how many prod deployments it wrote. The same seed always writes the same history."""
    now = now or timezone.now()
    rng = random.Random(seed)
    deployments = 0
    with transaction.atomic():
        for name, per_week, rollback_share, lead_hours in PROFILES:
            integration = Integration.objects.get(name=name)
            buckets = {b.env: b for b in Bucket.objects.filter(integration=integration)}
            deployments += _history_of(integration, buckets, rng, now, per_week, rollback_share, lead_hours)
    return deployments


def _history_of(integration, buckets, rng, now, per_week, rollback_share, lead_hours) -> int:
    """One integration's releases, oldest first; each lands in qa, staging and prod, some are rolled back."""
    start = now - timedelta(weeks=WEEKS)
    releases = per_week * WEEKS
    previous_in_prod: Artifact | None = None
    deployed = 0
    for number in range(releases):
        commit_at = start + timedelta(hours=number * WEEKS * 7 * 24 / releases + rng.uniform(0, 6))
        built_at = commit_at + timedelta(minutes=rng.uniform(8, 25))
        in_prod_at = commit_at + timedelta(hours=rng.lognormvariate(0, 0.6) * lead_hours)
        if in_prod_at >= now:
            break
        tag = f"1.{number // 10}.{number % 10}"
        artifact = Artifact.objects.create(
            integration=integration,
            digest="sha256:" + hashlib.sha256(f"{integration.name}:{tag}".encode()).hexdigest(),
            git_sha=hashlib.sha1(f"{integration.name}:{tag}".encode()).hexdigest(),
            branch="main",
            labels={"commit_time": commit_at.strftime("%Y-%m-%dT%H:%M:%SZ")},
            created_at=built_at,
            created_by="ci:demo",
        )
        _arrive(buckets["qa"], artifact, tag, Arrival.How.PUSH, built_at + timedelta(minutes=1))
        in_staging_at = built_at + (in_prod_at - built_at) / 3
        _promote(integration, artifact, buckets["qa"], buckets["staging"], tag, in_staging_at)
        if rng.random() < 0.1:  # a copy into prod that failed first, then succeeded on retry
            _promotion(integration, artifact, buckets["staging"], buckets["prod"], tag, in_prod_at, failed=True)
        _promote(integration, artifact, buckets["staging"], buckets["prod"], tag, in_prod_at)
        deployed += 1
        if previous_in_prod is not None and rng.random() < rollback_share:
            back_at = in_prod_at + timedelta(minutes=rng.uniform(15, 240))
            if back_at < now:
                rollback = _promotion(
                    integration, previous_in_prod, None, buckets["prod"], "rollback", back_at, kind="rollback"
                )
                _arrive(buckets["prod"], previous_in_prod, "rollback", Arrival.How.ROLLBACK, back_at, rollback)
                deployed += 1
                continue  # prod runs the previous release again
        previous_in_prod = artifact
    return deployed


def _promotion(integration, artifact, source, target, tag, done_at, *, failed=False, kind="promotion") -> Promotion:
    """A finished promotion row: requested a few minutes before `done_at`, copied in the last seconds."""
    requested_at = done_at - timedelta(minutes=12)
    return Promotion.objects.create(
        integration=integration,
        kind=kind,
        artifact=artifact,
        digest=artifact.digest,
        from_bucket=source,
        to_bucket=target,
        tag=tag,
        state=Promotion.State.FAILED if failed else Promotion.State.SUCCEEDED,
        requested_by_label="demo",
        created_at=requested_at,
        queued_at=done_at - timedelta(seconds=40),
        started_at=done_at - timedelta(seconds=30),
        finished_at=done_at,
        attempts=1,
        error="registry answered 503 Service Unavailable" if failed else "",
        result_digest="" if failed else artifact.digest,
    )


def _promote(integration, artifact, source, target, tag, at) -> None:
    """A succeeded promotion and the arrival it made."""
    promotion = _promotion(integration, artifact, source, target, tag, at)
    _arrive(target, artifact, tag, Arrival.How.PROMOTION, at, promotion)


def _arrive(bucket, artifact, tag, how, at, promotion=None) -> None:
    """An arrival at `at`, made what the bucket runs (the history is written oldest first)."""
    arrival = Arrival.objects.create(
        bucket=bucket, artifact=artifact, tag=tag, how=how, arrived_at=at, arrived_by="demo", promotion=promotion
    )
    Bucket.objects.filter(pk=bucket.pk).update(current_arrival=arrival)
