"""Push credentials reach one repository only: a scoped token from the registry's own token service (tried against a
real docker-registry with token auth), an ECR login of a role narrowed by a session policy, or a token of an
impersonated Google service account. The clouds are faked at their SDK boundary; anything that cannot be scoped is
refused with CannotScope."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.parse
from types import SimpleNamespace

import boto3
import pytest

from ci_integrations.registry import CannotScope, PushScope, RegistrySpec, push_credentials
from ci_integrations.registry.providers import acr, ecr, gar
from tests.registry.conftest import FAST
from tests.support.images import push_random_image, push_with_token
from tests.support.registry_server import start_registry, start_token_server

PORTAL = {"username": "portal", "password": "portal-Pa55word-registry-wide"}
ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/p2p-push-shop"


@pytest.fixture
def token_service():
    # The portal's account may do anything: everything a handed-out token cannot do is the token's scope at work.
    tokens = start_token_server(users={PORTAL["username"]: PORTAL["password"]})
    yield tokens
    tokens.stop()


@pytest.fixture
def token_registry(token_service):
    server = start_registry(token_auth=token_service.registry_config)
    yield server
    server.stop()


def _spec(url: str, provider: str = "generic", credentials: dict | None = None, **options) -> RegistrySpec:
    return RegistrySpec(provider, url, options={**FAST, **options}, credentials=credentials)


def test_a_push_token_pushes_to_its_repository_and_is_refused_on_any_other(token_service, token_registry):
    spec = _spec(token_registry.url, credentials=PORTAL)

    login = push_credentials(spec, PushScope("shop/dev"))

    assert login.kind == "bearer" and login.scope == "repository:shop/dev:pull,push"
    assert login.username is None and login.password is None and login.token
    assert token_service.requests[-1] == {
        "user": "portal",
        "service": token_service.service,
        "scopes": ["repository:shop/dev:pull,push"],
    }
    assert push_with_token(token_registry.url, "shop/dev", "1.0", login.token) == 201
    assert push_with_token(token_registry.url, "shop/prod", "1.0", login.token) in (401, 403)
    assert push_with_token(token_registry.url, "other/prod", "1.0", login.token) in (401, 403)
    lifetime = login.expires_at - dt.datetime.now(dt.UTC)
    assert dt.timedelta(0) < lifetime <= dt.timedelta(seconds=token_service.token_ttl)
    assert PORTAL["password"] not in repr(login)


def test_a_push_token_cannot_read_another_repository(token_registry):
    push_random_image(token_registry.url, "shop/prod", "1.0", auth=(PORTAL["username"], PORTAL["password"]))
    login = push_credentials(_spec(token_registry.url, credentials=PORTAL), PushScope("shop/dev"))

    import requests

    own = requests.get(
        f"{token_registry.url}/v2/shop/dev/tags/list", headers={"Authorization": f"Bearer {login.token}"}, timeout=10
    )
    other = requests.get(
        f"{token_registry.url}/v2/shop/prod/manifests/1.0",
        headers={"Authorization": f"Bearer {login.token}"},
        timeout=10,
    )
    assert own.status_code in (200, 404) and other.status_code in (401, 403)


def test_a_basic_auth_only_registry_hands_out_nothing():
    basic = start_registry(htpasswd={PORTAL["username"]: PORTAL["password"]})
    try:
        with pytest.raises(CannotScope) as refused:
            push_credentials(_spec(basic.url, credentials=PORTAL), PushScope("shop/dev"))
    finally:
        basic.stop()
    assert "Basic credentials only" in refused.value.message and PORTAL["password"] not in refused.value.message


def test_a_registry_without_auth_hands_out_nothing(registry):
    with pytest.raises(CannotScope) as refused:
        push_credentials(_spec(registry.url), PushScope("shop/dev"))
    assert "no credentials at all" in refused.value.message


# --- ECR: STS and ECR faked at boto3, backed by moto ---------------------------------------------------------------


class RecordingAws:
    """boto3's STS and ECR clients (moto behind them), recording what the provider asks and with which keys."""

    def __init__(self):
        self.sts = boto3.client("sts", region_name="eu-west-1")
        self.ecr = boto3.client("ecr", region_name="eu-west-1")
        self.assumed: list[dict] = []
        self.ecr_credentials: list[dict | None] = []
        self.sessions: list[dict] = []

    def sts_client(self, spec):
        outer = self

        class Sts:
            def assume_role(self, **kwargs):
                outer.assumed.append(kwargs)
                answer = outer.sts.assume_role(**kwargs)
                outer.sessions.append(answer["Credentials"])
                return answer

        return Sts()

    def ecr_client(self, spec):
        self.ecr_credentials.append(spec.credentials)
        return self.ecr


@pytest.fixture
def aws(monkeypatch):
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "portal-key",
        "AWS_SECRET_ACCESS_KEY": "portal-secret",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        recording = RecordingAws()
        monkeypatch.setattr(ecr, "sts_client", recording.sts_client)
        monkeypatch.setattr(ecr, "ecr_client", recording.ecr_client)
        yield recording


ECR_URL = f"https://{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"


def test_ecr_push_login_comes_from_a_role_session_limited_to_the_repository(aws):
    login = push_credentials(
        RegistrySpec("ecr", ECR_URL), PushScope("shop/dev", role_arn=ROLE, session_name="p2p-shop-dev")
    )

    [assumed] = aws.assumed
    assert assumed["RoleArn"] == ROLE and assumed["RoleSessionName"] == "p2p-shop-dev"
    assert assumed["DurationSeconds"] <= 3600
    policy = json.loads(assumed["Policy"])
    arn = f"arn:aws:ecr:eu-west-1:{ACCOUNT}:repository/shop/dev"
    resources = {statement["Resource"] for statement in policy["Statement"]}
    assert resources == {arn, "*"}
    star = [s for s in policy["Statement"] if s["Resource"] == "*"]
    assert [s["Action"] for s in star] == ["ecr:GetAuthorizationToken"]  # "*" allows only the login call
    repository_actions = next(s["Action"] for s in policy["Statement"] if s["Resource"] == arn)
    assert "ecr:PutImage" in repository_actions and "ecr:BatchGetImage" in repository_actions
    assert all(action.startswith("ecr:") for action in repository_actions)
    # The login is asked for as the narrowed session, not with the portal's own keys.
    [session] = aws.sessions
    assert aws.ecr_credentials == [
        {
            "aws_access_key_id": session["AccessKeyId"],
            "aws_secret_access_key": session["SecretAccessKey"],
            "aws_session_token": session["SessionToken"],
        }
    ]
    assert (login.kind, login.username, login.scope) == ("basic", "AWS", arn)
    assert login.password and login.identity.endswith("/p2p-shop-dev")
    assert login.expires_at <= session["Expiration"].replace(tzinfo=login.expires_at.tzinfo or dt.UTC)


def test_ecr_without_a_push_role_hands_out_nothing(aws):
    with pytest.raises(CannotScope) as refused:
        push_credentials(RegistrySpec("ecr", ECR_URL), PushScope("shop/dev"))
    assert "push_role_arn" in refused.value.message
    assert aws.assumed == [] and aws.ecr_credentials == []


def test_ecr_repository_arns_follow_the_partition():
    assert ecr.repository_arn("cn-north-1", ACCOUNT, "a/b") == f"arn:aws-cn:ecr:cn-north-1:{ACCOUNT}:repository/a/b"
    assert ecr.repository_arn("us-gov-west-1", ACCOUNT, "a").startswith("arn:aws-us-gov:ecr:")
    assert ecr.session_name("p2p-shop/dev env") == "p2p-shop-dev-env"


# --- GAR: google-auth faked at its credentials classes -------------------------------------------------------------


class PortalCredentials:
    service_account_email = "portal@proj.iam.gserviceaccount.com"
    token, valid, expiry = "ya29.portal-own-token", True, None


class FakeImpersonated:
    """google.auth.impersonated_credentials.Credentials: records how it was built; refresh gives its own token."""

    built: list[dict] = []

    def __init__(self, **kwargs):
        FakeImpersonated.built.append(kwargs)
        self.token, self.expiry = None, None

    def refresh(self, request):
        self.token = "ya29.impersonated-push-token"
        self.expiry = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(seconds=self.lifetime)

    @property
    def lifetime(self) -> int:
        return FakeImpersonated.built[-1]["lifetime"]


@pytest.fixture
def google(monkeypatch):
    from google.auth import impersonated_credentials

    portal = PortalCredentials()
    gar._credentials.clear()
    FakeImpersonated.built = []
    monkeypatch.setattr(gar, "google_credentials", lambda spec: portal)
    monkeypatch.setattr(impersonated_credentials, "Credentials", FakeImpersonated)
    yield portal
    gar._credentials.clear()


GAR_URL = "https://europe-docker.pkg.dev"
PUSHER = "push-shop-dev@proj.iam.gserviceaccount.com"


def test_gar_push_token_belongs_to_the_impersonated_service_account_not_the_portal(google):
    login = push_credentials(RegistrySpec("gar", GAR_URL), PushScope("proj/repo/shop", service_account=PUSHER))

    [built] = FakeImpersonated.built
    assert built["source_credentials"] is google and built["target_principal"] == PUSHER
    assert built["lifetime"] <= 3600
    assert (login.username, login.password) == ("oauth2accesstoken", "ya29.impersonated-push-token")
    assert google.token not in repr(login) and login.password != google.token
    assert login.identity == PUSHER and login.expires_at.tzinfo is not None


def test_gar_without_a_push_service_account_hands_out_nothing(google):
    with pytest.raises(CannotScope) as refused:
        push_credentials(RegistrySpec("gar", GAR_URL), PushScope("proj/repo/shop"))
    assert "push_service_account" in refused.value.message and FakeImpersonated.built == []


def test_gar_refuses_to_impersonate_the_portals_own_account(google):
    with pytest.raises(CannotScope):
        push_credentials(
            RegistrySpec("gar", GAR_URL), PushScope("proj/repo/shop", service_account=google.service_account_email)
        )


# --- ACR: the usual exchange, then /oauth2/token for one repository ------------------------------------------------


class AcrFront:
    """ACR's auth endpoints in front of a real registry: /oauth2/exchange, /oauth2/token, bearer-only /v2/."""

    def __init__(self):
        self.host = ""
        self.token_requests: list[dict] = []

    def __call__(self, method, path, headers, body):
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()} if path.startswith("/oauth2/") else {}
        if path == "/oauth2/exchange":
            return 200, {"Content-Type": "application/json"}, json.dumps({"refresh_token": "acr-refresh"}).encode()
        if path == "/oauth2/token":
            self.token_requests.append(form)
            answer = {"access_token": f"acr-access-for-{form.get('scope')}"}
            return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()
        if path.startswith("/v2") and not headers.get("Authorization", "").startswith("Bearer acr-access-"):
            challenge = f'Bearer realm="http://{self.host}/oauth2/token",service="{self.host}"'
            return 401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}'
        return None


def test_acr_push_token_is_an_access_token_for_the_repository_never_the_refresh_token(
    other_registry, proxy_factory, monkeypatch
):
    entra = SimpleNamespace(
        get_token=lambda *scopes: SimpleNamespace(token="entra", expires_on=int(time.time()) + 3600)
    )
    monkeypatch.setattr(acr, "azure_credential", lambda spec: entra)
    acr._refresh_tokens.clear()
    front = AcrFront()
    proxy = proxy_factory(other_registry.url, intercept=front)
    front.host = proxy.host

    login = push_credentials(RegistrySpec("acr", proxy.url, options=FAST), PushScope("shop/dev"))

    assert login.kind == "bearer" and login.token == "acr-access-for-repository:shop/dev:pull,push"
    assert [(r["grant_type"], r["scope"]) for r in front.token_requests] == [
        ("refresh_token", "repository:shop/dev:pull,push")
    ]
    assert "acr-refresh" not in (login.token, login.password, login.username)
    acr._refresh_tokens.clear()
