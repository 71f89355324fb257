"""Cloud SDK calls under a web request's budget (issue 15 items 6 and 14, the gap left for push credentials): STS,
ECR's control plane, google-auth and azure-identity get no more time than the request has, whatever their own
timeouts and retries are. The SDKs are faked at their boundary with calls that hang.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from ci_integrations.registry import PushScope, RegistrySpec, push_credentials
from ci_integrations.registry.budget import bounded, time_budget
from ci_integrations.registry.errors import DeadlineExceeded
from ci_integrations.registry.providers import acr, ecr, gar
from ci_integrations.registry.refs import ImageLocation, RepositorySettings
from ci_integrations.registry.repositories import repository_state

ROLE = "arn:aws:iam::123456789012:role/p2p-push"
ECR_SPEC = RegistrySpec("ecr", "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com")


class Hanging:
    """Any method call blocks until released (or 30 s), like an SDK retrying a black-holed endpoint."""

    def __init__(self):
        self.release = threading.Event()

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.release.wait(30)
            raise RuntimeError("released")

        return call


@pytest.fixture
def hanging():
    sdk = Hanging()
    yield sdk
    sdk.release.set()


def _within(seconds: float, call) -> str:
    started = time.monotonic()
    with time_budget(seconds, what=f"the request's {seconds:g} s"), pytest.raises(DeadlineExceeded) as raised:
        call()
    assert time.monotonic() - started < seconds + 1.0
    return raised.value.message


def test_ecr_push_credentials_give_up_at_the_budget_when_sts_hangs(monkeypatch, hanging):
    monkeypatch.setattr(ecr, "sts_client", lambda spec: hanging)
    message = _within(1.0, lambda: push_credentials(ECR_SPEC, PushScope("shop/dev", role_arn=ROLE)))
    assert "sts.eu-west-1.amazonaws.com did not answer STS assume_role" in message


def test_an_ecr_repository_check_gives_up_at_the_budget(monkeypatch, hanging):
    monkeypatch.setattr(ecr, "ecr_client", lambda spec: hanging)
    target = ImageLocation(ECR_SPEC, "shop/dev", "1.0", create=RepositorySettings())
    assert "api.ecr.eu-west-1.amazonaws.com" in _within(1.0, lambda: repository_state(target))


def test_gar_push_credentials_give_up_at_the_budget_when_impersonation_hangs(monkeypatch, hanging):
    portal = SimpleNamespace(service_account_email="portal@p.iam.gserviceaccount.com", valid=True)
    monkeypatch.setattr(gar, "_cached_credentials", lambda spec: portal)
    from google.auth import impersonated_credentials

    monkeypatch.setattr(impersonated_credentials, "Credentials", lambda **kwargs: hanging)
    spec = RegistrySpec("gar", "https://europe-docker.pkg.dev")
    scope = PushScope("p/r/app", service_account="push@p.iam.gserviceaccount.com")
    assert "iamcredentials.googleapis.com" in _within(1.0, lambda: push_credentials(spec, scope))


def test_an_entra_token_gives_up_at_the_budget_and_is_not_taken_for_a_refusal(monkeypatch, hanging):
    monkeypatch.setattr(acr, "azure_credential", lambda spec: hanging)
    acr._refresh_tokens.clear()
    message = _within(1.0, lambda: acr.AcrProvider().refresh_token(RegistrySpec("acr", "https://x.azurecr.io")))
    assert "login.microsoftonline.com did not answer an Entra token" in message


def test_without_a_deadline_a_bounded_call_runs_on_the_callers_thread():
    with time_budget(None):
        assert bounded(threading.current_thread, doing="x") is threading.current_thread()
    assert bounded(lambda: 7, doing="x") == 7
