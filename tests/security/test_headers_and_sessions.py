"""Web protections around the pages: a strict CSP and DENY framing on every page, session and CSRF cookies that are
Secure, HttpOnly and SameSite under production settings, and django-axes locking out repeated failed sign-ins."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.urls import reverse

from tests.security.conftest import PASSWORD, client_for
from tests.security.test_ui_authorization_matrix import MATRIX, OK

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_SETTINGS = [
    "DEBUG",
    "SESSION_COOKIE_SECURE",
    "SESSION_COOKIE_HTTPONLY",
    "SESSION_COOKIE_SAMESITE",
    "CSRF_COOKIE_SECURE",
    "CSRF_COOKIE_SAMESITE",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "X_FRAME_OPTIONS",
    "CONTENT_SECURITY_POLICY",
]


def production_settings() -> dict:
    """The settings a production process (DEBUG=0, real keys) actually runs with, read in a child process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "P2P_", "SECURE_"))}
    env.update(
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(64),
        P2P_FERNET_KEYS=Fernet.generate_key().decode(),
        P2P_TOKEN_PEPPERS=f"2026={secrets.token_urlsafe(32)}",
        ALLOWED_HOSTS="p2p.example.com",
        DJANGO_SETTINGS_MODULE="p2p_portal.settings",
        LOG_LEVEL="WARNING",
    )
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{name: getattr(settings, name) for name in {PRODUCTION_SETTINGS!r}}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def production():
    return production_settings()


def test_every_page_sends_a_strict_csp_and_refuses_framing(world):
    """Every page a platform admin can open (and the sign-in, error and admin pages) carries the CSP and DENY, and
    holds no inline script or style that the CSP would block."""
    client = client_for(world.users["platform_admin"])
    pages = [row.url(world) for row in MATRIX.values() if row.get.get("platform_admin") == OK]
    pages += ["/no-such-page/", reverse("artifact", args=[999999])]
    assert len(pages) >= 20
    for url in pages:
        response = client.get(url)
        assert response.status_code < 500, url
        csp = response.get("Content-Security-Policy", "")
        assert csp == django_settings.CONTENT_SECURITY_POLICY, url
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert response.get("X-Frame-Options") == "DENY", url
        assert response.get("X-Content-Type-Options") == "nosniff", url
        if response.get("Content-Type", "").startswith("text/html") and not url.startswith("/admin/"):
            page = response.content.decode()
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page), f"inline script on {url}"
            assert not re.search(r"<style\b|\sstyle=", page), f"inline style on {url}"
            assert not re.search(r"\son[a-z]+=", page), f"inline event handler on {url}"
    anonymous = client_for(None).get(reverse("login"))
    assert anonymous["Content-Security-Policy"] == django_settings.CONTENT_SECURITY_POLICY
    assert anonymous["X-Frame-Options"] == "DENY"


def test_production_settings_make_cookies_secure_httponly_and_samesite(production):
    assert production["DEBUG"] is False
    assert production["SESSION_COOKIE_SECURE"] is True and production["CSRF_COOKIE_SECURE"] is True
    assert production["SESSION_COOKIE_HTTPONLY"] is True
    assert production["SESSION_COOKIE_SAMESITE"] in ("Lax", "Strict")
    assert production["CSRF_COOKIE_SAMESITE"] in ("Lax", "Strict")
    assert production["SECURE_SSL_REDIRECT"] is True and production["SECURE_HSTS_SECONDS"] >= 31536000
    assert production["X_FRAME_OPTIONS"] == "DENY" and "frame-ancestors 'none'" in production["CONTENT_SECURITY_POLICY"]


def test_a_sign_in_under_production_cookie_settings_sets_a_locked_down_session_cookie(world, production, settings):
    for name in ("SESSION_COOKIE_SECURE", "SESSION_COOKIE_HTTPONLY", "SESSION_COOKIE_SAMESITE", "CSRF_COOKIE_SECURE"):
        setattr(settings, name, production[name])
    client = client_for(None)
    client.get(reverse("login"), secure=True)
    response = client.post(reverse("login"), {"username": "viewer", "password": PASSWORD}, secure=True)
    assert response.status_code == 302 and response["Location"] == reverse("overview")
    session = response.cookies["sessionid"]
    assert session["secure"] is True and session["httponly"] is True
    assert session["samesite"] == production["SESSION_COOKIE_SAMESITE"]
    csrf = client.cookies["csrftoken"]
    assert csrf["secure"] is True and csrf["samesite"] == production["CSRF_COOKIE_SAMESITE"]


def test_axes_locks_out_after_the_failure_limit_and_refuses_the_right_password(world):
    limit = django_settings.AXES_FAILURE_LIMIT
    assert 1 <= limit <= 10
    url = reverse("login")
    right = {"username": "viewer", "password": PASSWORD}
    # The password is right to begin with (and a success resets the count).
    fresh = client_for(None)
    assert fresh.post(url, right).status_code == 302
    attacker = client_for(None)
    for attempt in range(1, limit + 1):
        response = attacker.post(url, {"username": "viewer", "password": f"guess {attempt}"})
        assert "_auth_user_id" not in attacker.session
        if attempt < limit:
            assert response.status_code == 200, attempt
    assert response.status_code == 429, "the limit-th failure should lock the account out"
    locked = attacker.post(url, right)
    assert locked.status_code == 429
    assert "_auth_user_id" not in attacker.session
    # Another person at the same address still signs in: the lockout is of the (user name, address) pair, see
    # test_sign_in_lockout.py for the other addresses and proxies.
    other = User.objects.get(username="auditor")
    assert attacker.post(url, {"username": other.username, "password": PASSWORD}).status_code == 302


def test_a_sign_in_lasts_12_hours_by_default_not_two_weeks(world):
    """With P2P_SESSION_HOURS unset, as here, the session cookie and the stored session both end after 12 hours."""
    client = client_for(None)
    response = client.post(reverse("login"), {"username": "viewer", "password": PASSWORD})
    assert response.status_code == 302 and "_auth_user_id" in client.session
    assert response.cookies["sessionid"]["max-age"] == 12 * 3600
    assert client.session.get_expiry_age() == 12 * 3600
