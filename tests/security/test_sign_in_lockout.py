"""Sign-in lockout is per (user name, client address) pair, so wrong passwords cannot lock a person out everywhere;
the client address comes from X-Forwarded-For only when the direct peer is a trusted proxy, so it cannot be spoofed
to dodge a lockout."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import RequestFactory
from django.urls import reverse

from p2p_portal.client_address import client_address
from tests.security.conftest import PASSWORD, client_for

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
ATTACKER = "198.51.100.66"
PROXY = "10.0.0.2"


def sign_in(client, username: str, password: str, **extra):
    return client.post(reverse("login"), {"username": username, "password": password}, **extra)


def fail_until_locked(client, username: str, **extra) -> None:
    """Wrong passwords until django-axes locks this client's (user name, address) pair out."""
    for attempt in range(1, django_settings.AXES_FAILURE_LIMIT + 1):
        response = sign_in(client, username, f"wrong guess {attempt}", **extra)
    assert response.status_code == 429, "the limit-th failure should lock the pair out"


def signed_in(client, response) -> bool:
    return response.status_code == 302 and "_auth_user_id" in client.session


def trusting(settings, *networks: str) -> None:
    settings.P2P_TRUSTED_PROXIES = [ipaddress.ip_network(network) for network in networks]


def test_a_user_locked_out_at_one_address_still_signs_in_from_another(world):
    laptop = client_for(None, REMOTE_ADDR="192.0.2.10")
    fail_until_locked(laptop, "viewer")
    assert sign_in(laptop, "viewer", PASSWORD).status_code == 429
    assert "_auth_user_id" not in laptop.session
    phone = client_for(None, REMOTE_ADDR="192.0.2.20")
    assert signed_in(phone, sign_in(phone, "viewer", PASSWORD))


def test_an_attackers_failures_for_a_user_do_not_lock_that_user_out_at_another_address(world):
    attacker = client_for(None, REMOTE_ADDR=ATTACKER)
    fail_until_locked(attacker, "release1")
    # The attacker stays locked out for that user, even with the right password...
    assert sign_in(attacker, "release1", PASSWORD).status_code == 429
    assert "_auth_user_id" not in attacker.session
    # ...while the approver signs in from their own address.
    approver = client_for(None, REMOTE_ADDR="192.0.2.30")
    assert signed_in(approver, sign_in(approver, "release1", PASSWORD))


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored_so_it_cannot_dodge_a_lockout(world, settings):
    trusting(settings, "10.0.0.0/24")  # proxies exist, but the attacker is not one of them
    attacker = client_for(None, REMOTE_ADDR=ATTACKER)
    for attempt in range(django_settings.AXES_FAILURE_LIMIT):
        # A fresh made-up address on every try: believed, each would be a new pair with no failures yet.
        sign_in(attacker, "viewer", f"wrong guess {attempt}", HTTP_X_FORWARDED_FOR=f"203.0.113.{attempt + 1}")
    locked = sign_in(attacker, "viewer", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.200")
    assert locked.status_code == 429
    assert "_auth_user_id" not in attacker.session
    # The lockout is the attacker's pair only: the user at the address the attacker claimed is not locked out.
    claimed = client_for(None, REMOTE_ADDR="203.0.113.1")
    assert signed_in(claimed, sign_in(claimed, "viewer", PASSWORD))


def test_x_forwarded_for_from_a_trusted_proxy_names_the_client_behind_it(world, settings):
    trusting(settings, "10.0.0.0/24")
    attacker = client_for(None, REMOTE_ADDR=PROXY)
    # The attacker writes an address of their own on the left; the proxy appends the address it really saw.
    fail_until_locked(attacker, "viewer", HTTP_X_FORWARDED_FOR=f"192.0.2.99, {ATTACKER}")
    # Changing the left-hand entry does not make a new pair: the right-most untrusted entry is the client.
    retry = sign_in(attacker, "viewer", PASSWORD, HTTP_X_FORWARDED_FOR=f"192.0.2.100, {ATTACKER}")
    assert retry.status_code == 429
    # Nor does a second trusted hop in the chain.
    assert sign_in(attacker, "viewer", PASSWORD, HTTP_X_FORWARDED_FOR=f"{ATTACKER}, 10.0.0.3").status_code == 429
    # Everyone else behind the same proxy is someone else, and signs in.
    colleague = client_for(None, REMOTE_ADDR=PROXY)
    assert signed_in(colleague, sign_in(colleague, "viewer", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.7"))


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "trusted", "expected"),
    [
        # No trusted proxies (the default): X-Forwarded-For is never read.
        ("198.51.100.1", "203.0.113.5", [], "198.51.100.1"),
        # A peer outside the trusted networks is the client, whatever it forwards.
        ("198.51.100.1", "203.0.113.5", ["10.0.0.0/8"], "198.51.100.1"),
        # Through one trusted proxy, and through two (the nearest first from the right).
        ("10.0.0.2", "203.0.113.5", ["10.0.0.0/8"], "203.0.113.5"),
        ("10.0.0.2", "192.0.2.1, 203.0.113.5, 10.1.2.3", ["10.0.0.0/8"], "203.0.113.5"),
        # Single addresses as well as networks; IPv6; ports some proxies append.
        ("10.0.0.2", "203.0.113.5", ["10.0.0.2"], "203.0.113.5"),
        ("fd00::1", "2001:db8::7", ["fd00::/8"], "2001:db8::7"),
        ("10.0.0.2", "203.0.113.5:51234", ["10.0.0.0/8"], "203.0.113.5"),
        ("10.0.0.2", "[2001:db8::7]:443", ["10.0.0.0/8"], "2001:db8::7"),
        # An IPv4 peer on a dual-stack socket is matched as IPv4.
        ("::ffff:10.0.0.2", "203.0.113.5", ["10.0.0.0/8"], "203.0.113.5"),
        # Text that is not an address stops the walk at the hop that handed it on.
        ("10.0.0.2", "203.0.113.5, not-an-address", ["10.0.0.0/8"], "10.0.0.2"),
        ("10.0.0.2", "not-an-address, 10.0.0.3", ["10.0.0.0/8"], "10.0.0.3"),
        # A trusted proxy that sent no header, or only trusted hops: the left-most trusted address.
        ("10.0.0.2", None, ["10.0.0.0/8"], "10.0.0.2"),
        ("10.0.0.2", "10.0.0.9, 10.0.0.3", ["10.0.0.0/8"], "10.0.0.9"),
    ],
)
def test_client_address_takes_the_right_most_entry_that_is_not_a_trusted_proxy(
    settings, peer, forwarded_for, trusted, expected
):
    trusting(settings, *trusted)
    extra = {"REMOTE_ADDR": peer}
    if forwarded_for is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded_for
    assert client_address(RequestFactory().post("/login/", **extra)) == expected


def test_axes_asks_the_portal_for_the_client_address_and_locks_out_the_pair():
    assert django_settings.AXES_CLIENT_IP_CALLABLE == "p2p_portal.client_address.client_address"
    assert django_settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"]]
    assert django_settings.P2P_TRUSTED_PROXIES == []


def settings_in_child(**environment) -> subprocess.CompletedProcess:
    """Load the settings in a fresh process with these variables, and print P2P_TRUSTED_PROXIES."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "P2P_"))}
    env.update(DJANGO_SETTINGS_MODULE="p2p_portal.settings", **environment)
    code = "import django; django.setup(); from django.conf import settings; print(settings.P2P_TRUSTED_PROXIES)"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_trusted_proxies_are_read_from_the_environment_and_a_bad_entry_stops_start_up_naming_it():
    good = settings_in_child(P2P_TRUSTED_PROXIES=" 10.0.0.5, 10.1.0.0/16 ,fd00::/8,")
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == ("[IPv4Network('10.0.0.5/32'), IPv4Network('10.1.0.0/16'), IPv6Network('fd00::/8')]")
    bad = settings_in_child(P2P_TRUSTED_PROXIES="10.0.0.5,load-balancer.internal")
    assert bad.returncode != 0
    assert "ImproperlyConfigured: P2P_TRUSTED_PROXIES holds 'load-balancer.internal'" in bad.stderr
