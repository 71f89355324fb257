"""Protocol details that need no registry: challenge parsing, scope merging, Retry-After, error mapping, redaction."""

from __future__ import annotations

import email.utils
import time

import pytest

from ci_integrations.registry import (
    AccessDenied,
    AuthenticationError,
    DigestMismatch,
    NotFound,
    ProtocolError,
    TagConflict,
    TransientError,
)
from ci_integrations.registry.auth import merge_scopes, parse_www_authenticate
from ci_integrations.registry.errors import error_for_response, redact
from ci_integrations.registry.transport import RetryPolicy, parse_retry_after


def test_bearer_challenge_scope_with_commas_and_several_scopes_parses_whole():
    header = (
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
        'scope="repository:team/app:pull,push repository:base/img:pull",error="insufficient_scope"'
    )
    [challenge] = parse_www_authenticate(header)
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:team/app:pull,push repository:base/img:pull",
        "error": "insufficient_scope",
    }


def test_several_challenges_unquoted_values_and_escapes():
    header = 'Basic realm="a \\"quoted\\" realm", Bearer realm=https://t.example/token, service=svc'
    basic, bearer = parse_www_authenticate(header)
    assert (basic.scheme, basic.params) == ("basic", {"realm": 'a "quoted" realm'})
    assert (bearer.scheme, bearer.params) == ("bearer", {"realm": "https://t.example/token", "service": "svc"})


def test_scopes_merge_actions_per_repository():
    merged = merge_scopes(("repository:a:pull",), ("repository:a:push", "repository:b:pull"))
    assert merged == ("repository:a:pull,push", "repository:b:pull")


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("7") == 7.0
    now = time.time()
    assert 9 <= parse_retry_after(email.utils.formatdate(now + 10, usegmt=True), now=now) <= 10
    assert parse_retry_after(email.utils.formatdate(now - 100, usegmt=True)) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_backoff_is_capped_jittered_and_retry_after_is_bounded():
    policy = RetryPolicy(attempts=10, base_delay=0.5, max_delay=4.0, max_retry_after=30)
    delays = [policy.delay(attempt) for attempt in range(10) for _ in range(20)]
    assert max(delays) <= 4.0 and min(delays) >= 0.25 and len(set(delays)) > 1
    assert policy.delay(0, retry_after=120) == 30 and policy.delay(0, retry_after=2) == 2


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}', AuthenticationError),
        (403, b'{"errors":[{"code":"DENIED","message":"no"}]}', AccessDenied),
        (404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}', NotFound),
        (404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}', NotFound),
        (404, b"", NotFound),
        (400, b'{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match"}]}', DigestMismatch),
        (400, b'{"errors":[{"code":"TAG_INVALID","message":"tag is immutable"}]}', TagConflict),
        (409, b"conflict", TagConflict),
        (429, b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}', TransientError),
        (503, b"<html>Service Unavailable</html>", TransientError),
        (400, b'{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid"}]}', ProtocolError),
    ],
)
def test_error_json_maps_to_typed_errors_keeping_the_registry_message(status, body, kind):
    error = error_for_response(status, body, what="PUT manifest team/app:1")
    assert type(error) is kind
    assert error.status == status and "PUT manifest team/app:1" in error.message
    if b"message" in body:
        assert body.split(b'"message":"')[1].split(b'"')[0].decode() in error.message
    assert error.retryable is (kind is TransientError)


def test_messages_never_carry_credentials_or_tokens():
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
    text = redact(
        f"Authorization: Bearer {jwt} at https://bob:hunter2@reg.example.com/v2/?password=hunter2&token=abc123 {jwt}"
    )
    assert "hunter2" not in text and jwt not in text and "abc123" not in text
    error = error_for_response(401, f'{{"errors":[{{"code":"UNAUTHORIZED","message":"bad token {jwt}"}}]}}', what="x")
    assert jwt not in error.message
