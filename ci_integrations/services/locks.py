"""The locks that serialise state changes, in the one order every transaction takes them.

1. The bucket's copy lock (a PostgreSQL session advisory lock), held by a copy job for the whole copy and outside any
   transaction: two copies into one bucket never interleave.
2. The artifact row (`artifact_locked`): every check for "another open promotion of this artifact" holds it, so
   requests, retries, finishing copies and auto-promoting check reports of one artifact queue behind each other.
3. The bucket row (`bucket_locked`): it orders arrivals into the bucket, so `current_arrival` always points at the
   newest.
4. The audit append lock (services/audit.py), always last: it is held until COMMIT and serialises every audited
   change, so services write their audit entries as the last statements of a transaction.

Taking them in another order deadlocks against a transaction that follows this one.

May import: models, rows.
"""

from __future__ import annotations

import contextlib
import logging

from django.db import connection

from ci_integrations.models import Artifact, Bucket
from ci_integrations.services.rows import columns, fetch_one, for_update, table

logger = logging.getLogger(__name__)

# Keys for pg_advisory_lock(namespace, bucket id): one copy into a bucket at a time.
BUCKET_COPY_LOCK_NAMESPACE = 0x50325042  # "P2PB"


@contextlib.contextmanager
def bucket_copy_lock(bucket_id: int):
    """Hold a session advisory lock on the target bucket while copying into it.

    A session lock (not a transaction lock) so no transaction stays open during a long copy; if the worker dies,
    PostgreSQL drops the lock with its connection. SQLite runs one writer at a time and needs none.
    """
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [BUCKET_COPY_LOCK_NAMESPACE, bucket_id])
    try:
        yield
    finally:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [BUCKET_COPY_LOCK_NAMESPACE, bucket_id])
        except Exception:  # noqa: BLE001 - a broken connection has released it already
            logger.warning("could not release the copy lock of bucket %s", bucket_id, exc_info=True)


def bucket_copy_lock_free(bucket_id: int) -> bool:
    """Whether no copy into the bucket holds its lock now; if so, it is held until the caller's transaction ends,
    so no copy starts meanwhile."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [BUCKET_COPY_LOCK_NAMESPACE, bucket_id])
        return bool(cursor.fetchone()[0])


def artifact_locked(artifact_id: int) -> Artifact:
    """The artifact row, locked until the transaction ends (not its integration, which would serialise every request
    of the integration)."""
    return Artifact.objects.select_for_update(of=("self",)).select_related("integration").get(pk=artifact_id)


def bucket_locked(bucket_id: int) -> Bucket:
    """The bucket row, locked until the transaction ends: it orders arrivals into the bucket.

    Plain SQL, since every CI registration that writes takes it (see services/rows.py).
    """
    sql = f"SELECT {columns(Bucket, 'b')} FROM {table(Bucket)} b WHERE b.id = %s{for_update()}"
    return fetch_one(sql, [bucket_id], [(Bucket, "b")])[0]
