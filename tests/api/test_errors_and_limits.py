"""Bad input gets a clear 4xx in the envelope, never a 5xx; 401 and 403 stay distinct; rate limits say when to retry."""

from __future__ import annotations

import pytest

from ci_integrations.models import Bucket, Registry
from tests.support.registry_server import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def artifacts_url(world) -> str:
    return f"/api/v1/integrations/{world.shop.name}/artifacts/"


def assert_error(response, status: int, code: str | None = None, mentions: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    if code:
        assert error["code"] == code, error
    if mentions:
        assert mentions in error["message"], error
    return error


def test_a_bad_field_is_a_400_that_names_the_field(world):
    ci = world.caller("ci_own")
    error = assert_error(ci.post(artifacts_url(world), {"env": "dev", "tag": "not a tag!"}), 400, "invalid", "tag")
    assert "tag" in error["details"]
    assert_error(ci.post(artifacts_url(world), {"tag": "v1"}), 400, "invalid", "env")
    assert_error(
        ci.post(artifacts_url(world), {"env": "dev", "tag": "v1", "digest": "sha256:xyz"}), 400, mentions="digest"
    )
    error = assert_error(
        ci.post(artifacts_url(world), {"env": "dev", "tag": "v1", "metadata": {"colour": "red"}}),
        400,
        mentions="colour",
    )
    assert_error(ci.get(artifacts_url(world) + "?digest=sha256:nothex"), 400, mentions="digest")
    assert_error(world.caller("auditor").get("/api/v1/audit/?since=yesterday"), 400, mentions="since")


@pytest.mark.parametrize(
    "body",
    [
        {"env": "dev", "tag": "v1\x00"},
        {"env": "d\u00e9v", "tag": "v1"},
        {"env": "dev", "tag": "\u202ev1"},
        {"env": "dev", "tag": "v1", "metadata": {"branch": "main\x1b[31m"}},
        {"env": "dev", "tag": "v1", "metadata": {"labels": {"k": "\x00"}}},
        {"env": "dev", "tag": "v1", "metadata": {"labels": {"\x07bell": "x"}}},
        {"env": "dev", "tag": "v1", "metadata": {"labels": ["not", "a", "map"]}},
        {"env": ["dev"], "tag": {"v": 1}},
        {"env": "dev", "tag": "\ud83d\ude80"},
    ],
)
def test_control_characters_and_unicode_in_fields_are_400s(world, body):
    assert_error(world.caller("ci_own").post(artifacts_url(world), body), 400, "invalid")


def test_control_characters_in_free_text_and_path_are_refused_cleanly(world):
    rm = world.caller("rm")
    body = {"integration": world.shop.name, "artifact": "v1", "to_env": "prod", "reason": "because\x00"}
    assert_error(rm.post("/api/v1/promotions/", body), 400, "invalid", "reason")
    assert_error(rm.get("/api/v1/integrations/sh%00op/"), 404, "not_found")
    assert_error(rm.get("/api/v1/promotions/99999999999999999999999/"), 404, "not_found")
    assert_error(rm.get("/api/v1/promotions/999999/"), 404, "not_found", "999999")


def test_malformed_json_and_a_non_object_body_are_400s(world):
    ci = world.caller("ci_own")
    assert_error(ci.call("POST", artifacts_url(world), raw=b'{"env": "dev",'), 400, "parse_error")
    assert_error(ci.call("POST", artifacts_url(world), raw=b"\xff\xfe"), 400, "parse_error")
    assert_error(ci.post(artifacts_url(world), ["env", "dev"]), 400, "invalid")


def test_an_oversize_body_is_a_413_in_the_envelope(world):
    big = b'{"env": "dev", "tag": "v1", "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    assert_error(world.caller("ci_own").call("POST", artifacts_url(world), raw=big), 413, "too_large")


def nested(depth: int, inner: str = "1") -> str:
    """JSON with `depth` levels of arrays and objects, alternating, around `inner`."""
    text = inner
    for level in range(depth):
        text = f"[{text}]" if level % 2 else f'{{"k": {text}}}'
    return text


@pytest.mark.parametrize("idempotency_key", [None, "deep-body-1"])
def test_a_body_nested_10000_deep_is_a_400_that_says_it_is_nested_too_deep(world, idempotency_key):
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    ci = world.caller("ci_own")
    for body in (
        "[" * 10_000 + "]" * 10_000,
        '{"env": "dev", "tag": "v1", "metadata": {"labels": ' + nested(10_000) + "}}",
        "[" * 10_000,  # never closed: still refused for its depth, not a 500
    ):
        response = ci.call("POST", artifacts_url(world), raw=body.encode(), headers=headers)
        assert_error(response, 400, "parse_error", "nested more than 32 levels deep")


def test_nesting_of_32_levels_reaches_validation_and_33_is_refused_as_too_deep(world):
    ci = world.caller("ci_own")

    def post(metadata: str):
        body = '{"env": "dev", "tag": "v1", "metadata": ' + metadata + "}"
        return ci.call("POST", artifacts_url(world), raw=body.encode())

    # The body itself is the first level, so its metadata may nest 31 more.
    assert_error(post(nested(31)), 400, "invalid")
    assert_error(post(nested(32)), 400, "parse_error", "nested more than 32 levels deep")
    # Brackets inside strings are text, not nesting (escaped quotes included).
    in_text = '{"labels": {"note": "' + '\\"[{' * 5_000 + '"}}'
    assert assert_error(post(in_text), 400)["code"] != "parse_error"
    # A body that is simply not JSON still gets the decoder's message.
    assert_error(ci.call("POST", artifacts_url(world), raw=b'{"env": "dev",'), 400, "parse_error", "JSON parse error")


def test_401_means_who_are_you_and_403_means_you_may_not(world):
    anonymous = assert_error(world.caller("anonymous").get("/api/v1/integrations/"), 401, "unauthenticated")
    assert anonymous["message"]
    response = world.caller("expired").get("/api/v1/integrations/")
    assert_error(response, 401, "unauthenticated", "expired")
    assert response["WWW-Authenticate"] == 'Bearer realm="p2p"'
    garbage = world.caller("anonymous").get("/api/v1/integrations/", headers={"Authorization": "Bearer nope"})
    assert_error(garbage, 401, "unauthenticated", "malformed")
    assert world.plain["wrong_checksum"] not in garbage.content.decode()
    assert_error(world.caller("viewer").post(artifacts_url(world), {"env": "dev", "tag": "v1"}), 403, "forbidden")
    assert_error(world.caller("ci_own").call("PUT", artifacts_url(world), {}), 405, "method_not_allowed")
    assert_error(world.caller("ci_own").get("/api/v1/no/such/thing"), 404, "not_found")


def test_an_unknown_bucket_or_integration_is_a_404_naming_it(world):
    ci = world.caller("ci_own")
    assert_error(ci.post(artifacts_url(world), {"env": "qa", "tag": "v1"}), 404, "not_found", "qa")
    assert_error(ci.post("/api/v1/integrations/nope/artifacts/", {"env": "dev", "tag": "v1"}), 404, mentions="nope")


def test_an_unreachable_registry_is_a_502(world):
    dead = Registry.objects.create(name="dead", url=f"http://127.0.0.1:{free_port()}", options={"retry_attempts": 1})
    Bucket.objects.filter(pk=world.dev.pk).update(registry=dead)
    assert_error(world.caller("ci_own").post(artifacts_url(world), {"env": "dev", "tag": "v1"}), 502, "registry")


def test_a_token_over_its_rate_gets_429_with_retry_after(world, settings):
    settings.P2P_API_TOKEN_RATE = "3/minute"
    ci = world.caller("ci_own")
    for _ in range(3):
        assert ci.get("/api/v1/integrations/").status_code == 200
    limited = ci.get("/api/v1/integrations/")
    error = assert_error(limited, 429, "rate_limited")
    assert 0 < int(limited["Retry-After"]) <= 60 and error["details"]["retry_after_seconds"] >= 1
    # The limit is per token: another token is not affected.
    assert world.caller("ci_other").get("/api/v1/integrations/").status_code == 200


def test_a_rate_window_counter_expires_with_its_window(world, settings):
    from django.core.cache import cache

    settings.P2P_API_TOKEN_RATE = "100/minute"
    ci = world.caller("ci_own")
    assert ci.get("/api/v1/integrations/").status_code == 200
    assert ci.get("/api/v1/integrations/").status_code == 200
    client = cache._cache.get_client(write=True)
    counters = [key for key in client.scan_iter(match="*throttle:token:*") if client.get(key) == b"2"]
    assert counters, "the request counter of this token's window is in Redis"
    # Redis forgets the window soon after it ends: no counter outlives its minute (plus a second).
    assert all(0 < client.ttl(key) <= 61 for key in counters)


def test_callers_without_a_token_are_counted_by_their_real_address_not_a_forwarded_one(settings):
    """A caller with no token and no session is counted per client address; a made-up X-Forwarded-For from a peer
    that is not a trusted proxy must not give it a fresh count."""
    import ipaddress

    from django.test import RequestFactory
    from rest_framework.request import Request

    from ci_integrations.api.throttling import TokenRateThrottle

    def identity(**meta) -> str:
        return TokenRateThrottle().identity(Request(RequestFactory().get("/api/v1/integrations/", **meta)))

    settings.P2P_TRUSTED_PROXIES = [ipaddress.ip_network("10.0.0.0/8")]
    assert identity(REMOTE_ADDR="198.51.100.1", HTTP_X_FORWARDED_FOR="203.0.113.9") == "addr:198.51.100.1"
    assert identity(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="192.0.2.1, 203.0.113.9") == "addr:203.0.113.9"


def test_a_check_name_is_held_to_the_rule_that_required_checks_use(world):
    ci = world.caller("ci_own")
    world.push(world.dev, "1.0.0")
    url = f"/api/v1/artifacts/{ci.post(artifacts_url(world), {'env': 'dev', 'tag': '1.0.0'}).json()['id']}/checks/"
    assert ci.post(url, {"name": "unit_tests", "status": "passed"}).status_code == 201
    for name in ("-lint", "unit.tests"):
        rule = f"check name {name!r} must be 1 to 63 letters, digits, '_' or '-', not starting with '-'"
        error = assert_error(ci.post(url, {"name": name, "status": "passed"}), 400, "invalid", rule)
        assert "name" in error["details"]
