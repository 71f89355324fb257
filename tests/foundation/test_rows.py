"""services/rows.py: plain-SQL reads and inserts give exactly what the ORM gives."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone

from ci_integrations.models import ApiToken, Artifact, AuditEntry, Bucket, Integration, Registry
from ci_integrations.services.rows import columns, fetch, fetch_one, insert, insert_unless_exists, table

pytestmark = pytest.mark.django_db


def field_values(obj) -> dict:
    return {field.attname: getattr(obj, field.attname) for field in type(obj)._meta.concrete_fields}


@pytest.fixture
def stored():
    registry = Registry.objects.create(
        name="rows-reg", url="http://127.0.0.1:5999", options={"retry_attempts": 2, "nested": {"a": [1, "x"]}}
    )
    integration = Integration.objects.create(name="rows-int")
    bucket = Bucket.objects.create(integration=integration, env="dev", registry=registry, repository="rows/app")
    artifact = Artifact.objects.create(
        integration=integration,
        digest="sha256:" + "a" * 64,
        size=123,
        git_sha="abc",
        labels={"team": "payments", "ünïcode": "✓"},
    )
    user = User.objects.create_user("rows-user")
    token = ApiToken.objects.create(
        key_id="ROWS00000001",
        name="rows",
        kind=ApiToken.Kind.PERSONAL,
        user=user,
        scopes=["read", "artifacts:write"],
        secret_hash="0" * 64,
        pepper_id="p",
        expires_at=timezone.now() + timedelta(days=3),
    )
    return registry, bucket, artifact, user, token


def test_rows_read_back_every_field_as_the_orm_does(stored):
    registry, bucket, artifact, user, token = stored

    (read_bucket, read_registry), *rest = fetch(
        f"SELECT {columns(Bucket, 'b')}, {columns(Registry, 'r')} FROM {table(Bucket)} b "
        f"JOIN {table(Registry)} r ON r.id = b.registry_id WHERE b.id = %s",
        [bucket.pk],
        [(Bucket, "b"), (Registry, "r")],
    )
    read_artifact, read_token = (
        fetch_one(
            f"SELECT {columns(Artifact, 'x')} FROM {table(Artifact)} x WHERE x.id = %s",
            [artifact.pk],
            [(Artifact, "x")],
        )[0],
        fetch_one(
            f"SELECT {columns(ApiToken, 't')} FROM {table(ApiToken)} t WHERE t.id = %s", [token.pk], [(ApiToken, "t")]
        )[0],
    )

    assert rest == []
    for plain, model in (
        (read_bucket, Bucket),
        (read_registry, Registry),
        (read_artifact, Artifact),
        (read_token, ApiToken),
    ):
        assert field_values(plain) == field_values(model.objects.get(pk=plain.pk))
        assert not plain._state.adding
    assert read_registry.options["nested"] == {"a": [1, "x"]}  # JSON comes back decoded, not as text
    assert read_token.expires_at.tzinfo is not None
    assert read_token.scopes == ["read", "artifacts:write"]


def test_the_unmatched_side_of_a_left_join_is_none(stored):
    _, bucket, *_ = stored
    found = fetch_one(
        f"SELECT {columns(Bucket, 'b')}, {columns(Artifact, 'x')} FROM {table(Bucket)} b "
        f"LEFT JOIN {table(Artifact)} x ON x.id = -1 WHERE b.id = %s",
        [bucket.pk],
        [(Bucket, "b"), (Artifact, "x")],
    )
    assert found[0].pk == bucket.pk and found[1] is None
    assert (
        fetch_one(f"SELECT {columns(Bucket, 'b')} FROM {table(Bucket)} b WHERE b.id = -1", [], [(Bucket, "b")]) is None
    )


def test_insert_sets_keys_and_stores_what_the_orm_would(stored):
    now = timezone.now()
    entries = [
        AuditEntry(timestamp=now, actor="a", action=f"test.{n}", after={"n": n}, prev_hash="p", hash=f"h{n}")
        for n in range(3)
    ]
    insert(entries)
    assert all(entry.pk for entry in entries) and len({entry.pk for entry in entries}) == 3
    for entry in entries:
        assert field_values(AuditEntry.objects.get(pk=entry.pk)) == field_values(entry)


def test_insert_unless_exists_inserts_once_and_leaves_the_first_row(stored):
    _, bucket, artifact, *_ = stored
    again = Artifact(integration=bucket.integration, digest=artifact.digest, size=999, git_sha="other")
    fresh = Artifact(integration=bucket.integration, digest="sha256:" + "b" * 64, size=7)

    assert insert_unless_exists(again, ["integration_id", "digest"]) is False
    assert again.pk is None and Artifact.objects.get(pk=artifact.pk).git_sha == "abc"
    assert insert_unless_exists(fresh, ["integration_id", "digest"]) is True
    assert field_values(Artifact.objects.get(pk=fresh.pk)) == field_values(fresh)
    assert connection.in_atomic_block  # no savepoint or commit of its own was needed inside the test's transaction


def test_insert_of_more_rows_than_a_batch_keeps_their_order_and_keys(stored):
    from ci_integrations.services.rows import INSERT_BATCH

    now = timezone.now()
    entries = [
        AuditEntry(timestamp=now, actor="bulk", action="test.bulk", after={"n": n}, prev_hash="p", hash=f"bulk-{n}")
        for n in range(INSERT_BATCH * 2 + 7)
    ]
    insert(entries)
    stored_rows = dict(AuditEntry.objects.filter(actor="bulk").values_list("pk", "hash"))
    assert len(stored_rows) == len(entries)
    assert all(stored_rows[entry.pk] == entry.hash for entry in entries)
