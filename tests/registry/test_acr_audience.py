"""ACR's Entra token exchange (issue 15 item 1): the ACR audience first, the ARM audience as fallback, and the
registry's TLS options on the exchange. ACR's /oauth2 endpoints are emulated in front of a real docker-registry;
Entra (azure-identity) is faked at the SDK boundary.

Sources: Microsoft Learn, "Azure Container Registry authentication with Microsoft Entra ID" (ARM audience token
authentication; `az acr config authentication-as-arm update --status disabled`) and the Azure built-in policy
"Container registries should have ARM audience token authentication disabled" (Azure Landing Zone guardrails).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from types import SimpleNamespace

import pytest

from ci_integrations.registry import RegistrySpec, copy_image
from ci_integrations.registry.errors import AuthenticationError
from ci_integrations.registry.providers import acr
from tests.registry.conftest import FAST, location
from tests.registry.fault_proxy import tls_certificate
from tests.support.images import get_manifest_digest, push_random_image


class AudienceCredential:
    """An Entra credential whose tokens say which audience they are for; `unavailable` audiences raise, as Entra
    does for a resource the tenant does not know (AADSTS500011)."""

    def __init__(self, unavailable: tuple[str, ...] = ()):
        self.asked: list[str] = []
        self.unavailable = unavailable

    def get_token(self, *scopes):
        self.asked.extend(scopes)
        if scopes[0] in self.unavailable:
            raise RuntimeError("AADSTS500011: The resource principal was not found in the tenant")
        return SimpleNamespace(token=f"entra-for-{scopes[0]}", expires_on=int(time.time()) + 3600)


class AcrAuth:
    """/oauth2/exchange taking Entra tokens of the `accepted` audiences only, /oauth2/token, bearer-only /v2/."""

    def __init__(self, accepted: tuple[str, ...]):
        self.accepted = accepted
        self.host = ""
        self.exchanged: list[str] = []

    def __call__(self, method, path, headers, body):
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()} if path.startswith("/oauth2/") else {}
        if path == "/oauth2/exchange":
            audience = form.get("access_token", "").removeprefix("entra-for-")
            self.exchanged.append(audience)
            if audience not in self.accepted:
                return 401, {}, b'{"errors":[{"code":"UNAUTHORIZED","message":"ARM audience tokens are disabled"}]}'
            return 200, {"Content-Type": "application/json"}, json.dumps({"refresh_token": "acr-refresh"}).encode()
        if path == "/oauth2/token":
            if form.get("refresh_token") != "acr-refresh":
                return 401, {}, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad refresh token"}]}'
            return 200, {"Content-Type": "application/json"}, json.dumps({"access_token": "acr-access"}).encode()
        if path.startswith("/v2") and headers.get("Authorization") != "Bearer acr-access":
            scheme = "https" if self.host.startswith("https") else "http"
            challenge = f'Bearer realm="{scheme}://{self.host.split("://")[-1]}/oauth2/token",service="acr"'
            return 401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}'
        return None


@pytest.fixture(autouse=True)
def _no_cached_refresh_tokens():
    acr._refresh_tokens.clear()
    yield
    acr._refresh_tokens.clear()


def _copy_into_acr(registry, other_registry, proxy_factory, monkeypatch, credential, auth, **proxy) -> str:
    monkeypatch.setattr(acr, "azure_credential", lambda spec: credential)
    front = proxy_factory(other_registry.url, intercept=auth, **proxy)
    auth.host = front.url
    push_random_image(registry.url, "team/api", "1.0")
    dst = RegistrySpec("acr", front.url, options=FAST)
    copy_image(location(registry.url, "team/api", "1.0"), location(dst, "prod/api", "1.0"))
    return get_manifest_digest(other_registry.url, "prod/api", "1.0")


def test_a_registry_with_arm_audience_tokens_disabled_gets_an_acr_audience_token(
    registry, other_registry, proxy_factory, monkeypatch
):
    credential = AudienceCredential()
    auth = AcrAuth(accepted=(acr.ACR_AUDIENCE,))

    assert _copy_into_acr(registry, other_registry, proxy_factory, monkeypatch, credential, auth)
    assert credential.asked == [acr.ACR_AUDIENCE] and auth.exchanged == [acr.ACR_AUDIENCE]


def test_the_arm_audience_is_the_fallback_when_the_acr_audience_is_refused(
    registry, other_registry, proxy_factory, monkeypatch
):
    credential = AudienceCredential()
    auth = AcrAuth(accepted=(acr.ARM_AUDIENCE,))

    assert _copy_into_acr(registry, other_registry, proxy_factory, monkeypatch, credential, auth)
    assert auth.exchanged == [acr.ACR_AUDIENCE, acr.ARM_AUDIENCE]


def test_the_arm_audience_is_the_fallback_when_entra_has_no_acr_audience_token(
    registry, other_registry, proxy_factory, monkeypatch
):
    credential = AudienceCredential(unavailable=(acr.ACR_AUDIENCE,))
    auth = AcrAuth(accepted=(acr.ACR_AUDIENCE, acr.ARM_AUDIENCE))

    assert _copy_into_acr(registry, other_registry, proxy_factory, monkeypatch, credential, auth)
    assert credential.asked == [acr.ACR_AUDIENCE, acr.ARM_AUDIENCE] and auth.exchanged == [acr.ARM_AUDIENCE]


def test_when_neither_audience_is_taken_the_error_names_both(monkeypatch, proxy_factory, other_registry):
    monkeypatch.setattr(acr, "azure_credential", lambda spec: AudienceCredential())
    auth = AcrAuth(accepted=())
    front = proxy_factory(other_registry.url, intercept=auth)
    auth.host = front.url

    with pytest.raises(AuthenticationError) as raised:
        acr.AcrProvider().refresh_token(RegistrySpec("acr", front.url, options=FAST))

    assert acr.ACR_AUDIENCE in raised.value.message and acr.ARM_AUDIENCE in raised.value.message
    assert "entra-for" not in raised.value.message  # the tokens themselves never reach a message


def test_the_exchange_honours_the_registrys_ca_bundle(monkeypatch, proxy_factory, other_registry, tmp_path):
    certificate, key = tls_certificate(str(tmp_path))
    monkeypatch.setattr(acr, "azure_credential", lambda spec: AudienceCredential())
    auth = AcrAuth(accepted=(acr.ACR_AUDIENCE,))
    front = proxy_factory(other_registry.url, intercept=auth, tls=(certificate, key))
    auth.host = front.url

    token, _ = acr.AcrProvider().refresh_token(
        RegistrySpec("acr", front.url, options={**FAST, "ca_bundle": certificate})
    )
    assert token == "acr-refresh"

    acr._refresh_tokens.clear()
    with pytest.raises(Exception, match="(?i)ssl|certificate|exchange failed"):  # not trusted without the bundle
        acr.AcrProvider().refresh_token(RegistrySpec("acr", front.url, options=FAST))
    assert auth.exchanged == [acr.ACR_AUDIENCE]  # the untrusted connection never got the Entra token
