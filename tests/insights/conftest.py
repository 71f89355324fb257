"""A delivery history with known timestamps: two integrations, their prod and staging buckets, and arrivals by
promotion, rollback and push written as rows (the figures only read rows, so no registry is involved)."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from ci_integrations.insights import dora_window
from ci_integrations.models import Arrival, Artifact, Bucket, Integration, Registry

# The history is laid out relative to today, so the API (which always measures up to now) sees it too. The days are
# numbered as if the 7-day window ending today ran from the 9th to the 15th of a month. Each moment is computed when
# it is asked for, so a suite that runs past midnight still puts the history where its figures are measured.


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A moment on "day" `day` (9 is the first day of the 7-day window, 15 is today), UTC."""
    return dora_window(7, timezone.now())[0] + timedelta(days=day - 9, hours=hour, minutes=minute)


@dataclass
class History:
    """Integrations with buckets per environment, and helpers that write arrivals at given moments."""

    registry: Registry
    integrations: dict[str, Integration] = field(default_factory=dict)
    buckets: dict[tuple[str, str], Bucket] = field(default_factory=dict)

    def integration(self, name: str) -> Integration:
        if name not in self.integrations:
            integration = Integration.objects.create(name=name)
            self.integrations[name] = integration
            for position, env in enumerate(["staging", "prod"]):
                self.buckets[name, env] = Bucket.objects.create(
                    integration=integration, env=env, position=position, registry=self.registry, repository=name
                )
        return self.integrations[name]

    def artifact(self, name: str, *, created_at: datetime, commit_time: str | None = None) -> Artifact:
        labels = {"commit_time": commit_time} if commit_time else {}
        return Artifact.objects.create(
            integration=self.integration(name),
            digest="sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
            created_at=created_at,
            labels=labels,
        )

    def arrive(self, artifact: Artifact, env: str, when: datetime, how: str = Arrival.How.PROMOTION) -> Arrival:
        bucket = self.buckets[artifact.integration.name, env]
        return Arrival.objects.create(bucket=bucket, artifact=artifact, tag="t", how=how, arrived_at=when)


@pytest.fixture
def history(db) -> History:
    return History(registry=Registry.objects.create(name=f"r-{uuid.uuid4().hex[:8]}", url="http://127.0.0.1:5999"))


@pytest.fixture
def known_week(history) -> History:
    """shop: three promotions and one rollback into prod; cart: one promotion, rolled back two hours later.

    Expected (the 7 days to today): 6 deployments, 2 rollbacks, 2 failed deployments; lead times 2 h, 54 h (from the
    commit time), 1 h and 24 h; restores 30 min and 2 h.
    """
    a1 = history.artifact("shop", created_at=at(10, 8))
    history.arrive(a1, "staging", at(10, 9))  # staging is another environment: never counted for prod
    history.arrive(a1, "prod", at(10, 10))  # lead 2 h
    a2 = history.artifact("shop", created_at=at(9, 10), commit_time=at(9, 4).strftime("%Y-%m-%dT%H:%M:%SZ"))
    history.arrive(a2, "prod", at(11, 10))  # lead 54 h from the commit time
    history.arrive(a1, "prod", at(11, 10, 30), Arrival.How.ROLLBACK)  # a2 failed; restored in 30 min
    a3 = history.artifact("shop", created_at=at(12, 9))
    history.arrive(a3, "prod", at(12, 10))  # lead 1 h
    old = history.artifact("shop", created_at=at(1, 9))
    history.arrive(old, "prod", at(1, 10))  # before the window
    c1 = history.artifact("cart", created_at=at(13, 9))
    history.arrive(c1, "prod", at(14, 9))  # lead 24 h
    history.arrive(c1, "prod", at(14, 11), Arrival.How.ROLLBACK)  # c1 failed; restored in 2 h
    pushed = history.artifact("cart", created_at=at(14, 12))
    history.arrive(pushed, "prod", at(14, 13), Arrival.How.PUSH)  # a push is not a deployment
    return history
