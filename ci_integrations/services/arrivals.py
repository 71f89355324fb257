"""Arrivals: an artifact landing in a bucket under a tag, and the immutable-tag rule that guards it.

May import: models, audit, locks, rows.
"""

from __future__ import annotations

from django.db import connection, transaction

from ci_integrations.models import Arrival, Artifact, Bucket
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.errors import InvalidInput
from ci_integrations.services.locks import bucket_locked
from ci_integrations.services.rows import insert, table


def immutable_tag_conflict(bucket: Bucket, latest: Arrival | None, digest: str) -> Arrival | None:
    """The immutable-tag rule: in an immutable_tags bucket, a tag that holds one digest never takes another.

    Given the newest arrival of the tag (with its artifact), the arrival that stands in the way of `digest`, or None.
    """
    if bucket.immutable_tags and latest is not None and latest.artifact.digest != digest:
        return latest
    return None


def immutable_tag_holder(bucket: Bucket, tag: str, digest: str) -> Arrival | None:
    """immutable_tag_conflict for `tag` as the bucket holds it now (a query only for immutable_tags buckets)."""
    if not bucket.immutable_tags or not tag:
        return None
    latest = Arrival.objects.filter(bucket=bucket, tag=tag).select_related("artifact").newest()
    return immutable_tag_conflict(bucket, latest, digest)


def arrival_record(
    *, bucket: Bucket, artifact: Artifact, tag: str, how: str, actor: Actor, promotion=None, attachments=None
) -> Arrival:
    """Record that `artifact` landed in `bucket` under `tag` (with the `attachments` that landed with it), and make
    it what the bucket runs. Audited."""
    if how not in Arrival.How.values:
        raise InvalidInput(f"unknown arrival kind {how!r}")
    with transaction.atomic():
        locked = bucket_locked(bucket.pk)
        arrival, previous = arrival_insert(
            locked=locked,
            bucket=bucket,
            artifact=artifact,
            tag=tag,
            how=how,
            actor=actor,
            promotion=promotion,
            attachments=attachments,
        )
        audit_record(**arrival_audit(arrival=arrival, previous=previous, actor=actor))
    return arrival


def arrival_insert(
    *,
    locked: Bucket,
    bucket: Bucket,
    artifact: Artifact,
    tag: str,
    how: str,
    actor: Actor,
    promotion=None,
    attachments=None,
) -> tuple[Arrival, int | None]:
    """The arrival row and the bucket's pointer to it; the caller holds the bucket row lock (`locked`) and writes
    the audit entry (arrival_audit) last in its transaction. Returns the arrival and the previous arrival's id."""
    previous = locked.current_arrival_id
    arrival = Arrival(
        bucket=bucket,
        artifact=artifact,
        tag=tag,
        how=how,
        promotion=promotion,
        arrived_by=actor.label,
        attachments=list(attachments or []),
    )
    insert([arrival])
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table(Bucket)} SET current_arrival_id = %s WHERE id = %s", [arrival.pk, locked.pk])
    locked.current_arrival = arrival
    bucket.current_arrival = arrival
    return arrival, previous


def arrival_audit(*, arrival: Arrival, previous: int | None, actor: Actor) -> dict:
    """The `arrival.recorded` audit entry, as audit_record keyword arguments."""
    return {
        "actor": actor,
        "action": "arrival.recorded",
        "obj": arrival,
        "before": {"current_arrival": previous},
        "after": {
            "arrival": arrival.pk,
            "digest": arrival.artifact.digest,
            "tag": arrival.tag,
            "how": arrival.how,
            "promotion": arrival.promotion_id,
            **({"attachments": arrival.attachments} if arrival.attachments else {}),
        },
    }
