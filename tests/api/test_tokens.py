"""Tokens: format and checksum, storage (only a peppered HMAC), pepper rotation, expiry, revocation, last use."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ci_integrations.models import ApiToken, AuditEntry
from ci_integrations.services.errors import InvalidInput
from ci_integrations.services.tokens import (
    TOKEN_RE,
    TokenInvalid,
    token_authenticate,
    token_create,
    token_parse,
    token_revoke,
)
from tests.api.conftest import SYSTEM

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_a_token_has_the_prefix_128_bits_of_secret_and_a_checksum(world):
    plain = world.plain["ci_own"]
    key_id, secret = token_parse(plain)
    assert plain.startswith("p2p_") and TOKEN_RE.match(plain)
    assert len(secret) == 22 and 62**22 > 2**128
    assert world.tokens["ci_own"].key_id == key_id


def test_a_mistyped_token_is_refused_before_any_database_lookup(world):
    with CaptureQueriesContext(connection) as queries, pytest.raises(TokenInvalid, match="checksum"):
        token_authenticate(world.plain["wrong_checksum"])
    assert len(queries) == 0
    with CaptureQueriesContext(connection) as queries, pytest.raises(TokenInvalid, match="malformed"):
        token_authenticate("p2p_short")
    assert len(queries) == 0


def test_the_database_holds_no_plain_token_or_secret(world):
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM ci_integrations_apitoken")
        token_rows = repr(cursor.fetchall())
        cursor.execute("SELECT * FROM ci_integrations_auditentry")
        audit_rows = repr(cursor.fetchall())
    for name in ("ci_own", "admin", "rm"):
        plain = world.plain[name]
        _, secret = token_parse(plain)
        for dump in (token_rows, audit_rows):
            assert plain not in dump and secret not in dump
    stored = ApiToken.objects.get(pk=world.tokens["ci_own"].pk)
    assert re.fullmatch(r"[0-9a-f]{64}", stored.secret_hash) and stored.pepper_id == "dev"


def test_old_tokens_keep_working_after_a_new_pepper_is_prepended(world, settings):
    old_plain = world.plain["ci_own"]
    settings.P2P_TOKEN_PEPPERS = ["2026=a-brand-new-pepper-value", *settings.P2P_TOKEN_PEPPERS]
    assert token_authenticate(old_plain).pk == world.tokens["ci_own"].pk
    token, plain = token_create(name="after rotation", kind="ci", actor=SYSTEM, integrations=[world.shop], system=True)
    assert token.pepper_id == "2026"
    assert token_authenticate(plain).pk == token.pk
    # Once the old pepper is removed, tokens made with it stop working; the new ones do not.
    settings.P2P_TOKEN_PEPPERS = ["2026=a-brand-new-pepper-value"]
    with pytest.raises(TokenInvalid):
        token_authenticate(old_plain)
    assert token_authenticate(plain).pk == token.pk


def test_a_token_with_the_right_shape_but_a_wrong_secret_is_unknown(world):
    key_id, secret = token_parse(world.plain["ci_own"])
    from ci_integrations.services.tokens import token_format

    forged = token_format(key_id, secret[:-1] + ("a" if secret[-1] != "a" else "b"))
    with pytest.raises(TokenInvalid, match="unknown token"):
        token_authenticate(forged)


def test_revoked_and_expired_tokens_are_refused_and_say_why(world):
    with pytest.raises(TokenInvalid, match="revoked"):
        token_authenticate(world.plain["revoked"])
    with pytest.raises(TokenInvalid, match="expired"):
        token_authenticate(world.plain["expired"])


def test_revoking_is_audited_and_cannot_happen_twice(world):
    token = world.tokens["ci_own"]
    token_revoke(token=token, actor=SYSTEM)
    assert AuditEntry.objects.filter(action="token.revoked", object_id=str(token.pk)).count() == 1
    with pytest.raises(TokenInvalid, match="revoked"):
        token_authenticate(world.plain["ci_own"])
    from ci_integrations.services.errors import StateConflict

    with pytest.raises(StateConflict):
        token_revoke(token=token, actor=SYSTEM)


def test_last_used_is_written_at_most_once_a_minute(world):
    plain = world.plain["ci_own"]
    token = token_authenticate(plain)
    first = ApiToken.objects.get(pk=token.pk).last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as queries:
        token_authenticate(plain)
    assert not any(q["sql"].startswith("UPDATE") for q in queries.captured_queries)
    assert ApiToken.objects.get(pk=token.pk).last_used_at == first
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now() - timedelta(minutes=2))
    token_authenticate(plain)
    assert ApiToken.objects.get(pk=token.pk).last_used_at > first


def test_ci_tokens_cannot_carry_the_approve_scope_and_need_an_integration(world):
    with pytest.raises(InvalidInput, match="promotions:approve"):
        token_create(
            name="x", kind="ci", actor=SYSTEM, integrations=[world.shop], system=True, scopes=["promotions:approve"]
        )
    with pytest.raises(InvalidInput, match="integration"):
        token_create(name="x", kind="ci", actor=SYSTEM)
    with pytest.raises(InvalidInput, match="user"):
        token_create(name="x", kind="personal", actor=SYSTEM)


def test_create_token_prints_the_token_last_and_revoke_token_revokes_it(world):
    out = io.StringIO()
    call_command(
        "create_token",
        "--name",
        "ci-shop",
        "--integration",
        world.shop.name,
        "--owner",
        world.users["admin"].username,
        "--scopes",
        "read,checks:write",
        "--expires",
        "90d",
        stdout=out,
    )
    plain = out.getvalue().strip().splitlines()[-1]
    token = token_authenticate(plain)
    assert token.scopes == ["read", "checks:write"] and list(token.integrations.all()) == [world.shop]
    assert timedelta(days=89) < token.expires_at - timezone.now() <= timedelta(days=90)
    assert not AuditEntry.objects.filter(after__icontains=plain).exists()

    out = io.StringIO()
    call_command("create_token", "--name", "laptop", "--user", world.users["rm"].username, stdout=out)
    personal = token_authenticate(out.getvalue().strip().splitlines()[-1])
    assert personal.kind == ApiToken.Kind.PERSONAL and "promotions:approve" in personal.scopes

    call_command("revoke_token", token.key_id, stdout=io.StringIO())
    with pytest.raises(TokenInvalid, match="revoked"):
        token_authenticate(plain)
