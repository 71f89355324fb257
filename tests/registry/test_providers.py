"""Providers, faked only at their SDK or HTTP boundary; the registry data path is always a real docker-registry."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.parse
from types import SimpleNamespace

import boto3
import pytest

from ci_integrations.registry import RegistrySpec, TagConflict, copy_image
from ci_integrations.registry.providers import acr, ecr, gar, provider_name_for_host
from tests.registry.conftest import FAST, location
from tests.support.images import get_manifest, get_manifest_digest, push_random_image, put_manifest
from tests.support.registry_server import start_registry

ACCOUNT = "123456789012"
ECR_PASSWORD = f"{ACCOUNT}-auth-token"  # what moto's get_authorization_token hands out


def test_provider_is_guessed_from_the_registry_host():
    assert provider_name_for_host(f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com") == "ecr"
    assert provider_name_for_host("europe-docker.pkg.dev") == "gar"
    assert provider_name_for_host("eu.gcr.io") == "gar"
    assert provider_name_for_host("myreg.azurecr.io") == "acr"
    assert provider_name_for_host("docker.io") == "dockerhub"
    assert provider_name_for_host("127.0.0.1:5000") == "generic"


# --- ECR: moto for the AWS API ----------------------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch):
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    ecr._tokens.clear()
    with mock_aws():
        yield
    ecr._tokens.clear()


@pytest.fixture
def ecr_registry():
    server = start_registry(htpasswd={"AWS": ECR_PASSWORD})
    yield server
    server.stop()


class EcrApi:
    """The moto-backed boto3 client, plus ECR's data plane: a tag written through put_image shows up in the
    registry, as it does in real ECR. Counts the calls the provider makes."""

    def __init__(self, registry_url: str, expires_in: dt.timedelta | None = dt.timedelta(hours=12)):
        self.client = boto3.client("ecr", region_name="eu-west-1")
        self.registry_url = registry_url
        self.calls: list[str] = []
        self.expires_in = expires_in

    def get_authorization_token(self, **kwargs):
        self.calls.append("get_authorization_token")
        answer = self.client.get_authorization_token(**kwargs)
        if self.expires_in is not None:  # moto always answers an expiry in 2015
            answer["authorizationData"][0]["expiresAt"] = dt.datetime.now(dt.UTC) + self.expires_in
        return answer

    def batch_get_image(self, **kwargs):
        self.calls.append("batch_get_image")
        return self.client.batch_get_image(**kwargs)

    def put_image(self, **kwargs):
        self.calls.append("put_image")
        answer = self.client.put_image(**kwargs)
        put_manifest(
            self.registry_url,
            kwargs["repositoryName"],
            kwargs["imageTag"],
            kwargs["imageManifest"].encode(),
            kwargs["imageManifestMediaType"],
            auth=("AWS", ECR_PASSWORD),
        )
        return answer


def _ecr_spec(url: str) -> RegistrySpec:
    return RegistrySpec("ecr", url, options={"region": "eu-west-1", "registry_id": ACCOUNT, **FAST})


def test_ecr_login_comes_from_get_authorization_token_and_is_cached(aws, registry, ecr_registry, monkeypatch):
    api = EcrApi(ecr_registry.url)
    monkeypatch.setattr(ecr, "ecr_client", lambda spec: api)
    digest = push_random_image(registry.url, "team/api", "1.0")
    dst = _ecr_spec(ecr_registry.url)

    copy_image(location(registry.url, "team/api", "1.0"), location(dst, "prod/api", "1.0"))
    copy_image(location(registry.url, "team/api", "1.0"), location(dst, "prod/api", "1.1"))

    assert get_manifest_digest(ecr_registry.url, "prod/api", "1.1", auth=("AWS", ECR_PASSWORD)) == digest
    assert api.calls == ["get_authorization_token"]  # one token for both copies
    login, expires_at = ecr.EcrProvider().token(dst)
    assert (login.username, login.password) == ("AWS", ECR_PASSWORD)
    assert expires_at > dt.datetime.now(dt.UTC) + dt.timedelta(hours=11)


def test_ecr_token_close_to_expiry_is_fetched_again(aws, ecr_registry, monkeypatch):
    api = EcrApi(ecr_registry.url, expires_in=dt.timedelta(minutes=2))
    monkeypatch.setattr(ecr, "ecr_client", lambda spec: api)
    ecr.EcrProvider().token(_ecr_spec(ecr_registry.url))
    ecr.EcrProvider().token(_ecr_spec(ecr_registry.url))
    assert api.calls == ["get_authorization_token", "get_authorization_token"]


def _ecr_image(api: EcrApi, ecr_url: str, repository: str, tag: str, **kwargs) -> str:
    digest = push_random_image(ecr_url, repository, tag, auth=("AWS", ECR_PASSWORD), **kwargs)
    raw, media_type = get_manifest(ecr_url, repository, tag, auth=("AWS", ECR_PASSWORD))
    api.client.put_image(
        repositoryName=repository,
        imageManifest=raw.decode(),
        imageManifestMediaType=media_type,
        imageTag=tag,
        imageDigest=digest,
    )
    return digest


def test_ecr_same_repository_promotion_is_a_put_image_retag(aws, ecr_registry, monkeypatch):
    api = EcrApi(ecr_registry.url)
    monkeypatch.setattr(ecr, "ecr_client", lambda spec: api)
    api.client.create_repository(repositoryName="team/api")
    digest = _ecr_image(api, ecr_registry.url, "team/api", "1.0")
    spec = _ecr_spec(ecr_registry.url)

    summary = copy_image(location(spec, "team/api", "1.0"), location(spec, "team/api", "prod"))

    assert summary.fast_path == "ecr-retag" and summary.digest == digest
    assert summary.bytes_transferred == summary.blobs_copied == summary.blobs_mounted == 0
    assert "put_image" in api.calls
    [image] = api.client.describe_images(repositoryName="team/api")["imageDetails"]
    assert image["imageDigest"] == digest and set(image["imageTags"]) == {"1.0", "prod"}


def test_ecr_immutable_tag_with_another_image_is_a_tag_conflict(aws, ecr_registry, monkeypatch):
    api = EcrApi(ecr_registry.url)
    monkeypatch.setattr(ecr, "ecr_client", lambda spec: api)
    api.client.create_repository(repositoryName="team/api", imageTagMutability="IMMUTABLE")
    _ecr_image(api, ecr_registry.url, "team/api", "1.0")
    _ecr_image(api, ecr_registry.url, "team/api", "prod")
    spec = _ecr_spec(ecr_registry.url)

    with pytest.raises(TagConflict):
        copy_image(location(spec, "team/api", "1.0"), location(spec, "team/api", "prod"))


# --- GAR: google-auth credentials and the Artifact Registry client are faked -------------------------------------


class FakeGoogleCredentials:
    def __init__(self):
        self.token, self.valid, self.expiry, self.refreshes = None, False, None, 0

    def refresh(self, request):
        self.refreshes += 1
        self.token, self.valid = f"ya29.fake-{self.refreshes}", True
        self.expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)


@pytest.fixture
def google(monkeypatch):
    credentials = FakeGoogleCredentials()
    gar._credentials.clear()
    monkeypatch.setattr(gar, "google_credentials", lambda spec: credentials)
    yield credentials
    gar._credentials.clear()


def test_gar_uses_a_google_access_token_as_oauth2accesstoken(registry, google):
    gar_registry = start_registry(htpasswd={"oauth2accesstoken": "ya29.fake-1"})
    try:
        digest = push_random_image(registry.url, "team/api", "1.0")
        dst = RegistrySpec("gar", gar_registry.url, options={"location": "europe", **FAST})
        copy_image(location(registry.url, "team/api", "1.0"), location(dst, "proj/repo/api", "1.0"))
        auth = ("oauth2accesstoken", "ya29.fake-1")
        assert get_manifest_digest(gar_registry.url, "proj/repo/api", "1.0", auth=auth) == digest
        assert google.refreshes == 1
    finally:
        gar_registry.stop()


class FakeArtifactRegistry:
    """Records tag calls; like the real service, a created tag then resolves in the registry."""

    def __init__(self, registry_url: str):
        self.registry_url = registry_url
        self.created: list[dict] = []

    def create_tag(self, *, parent, tag_id, tag):
        self.created.append({"parent": parent, "tag_id": tag_id, "version": tag.version})
        package = urllib.parse.unquote(parent.split("/packages/")[1])
        project, repository = parent.split("/")[1], parent.split("/")[5]
        image = f"{project}/{repository}/{package}"
        digest = tag.version.rsplit("/", 1)[1]
        raw, media_type = get_manifest(self.registry_url, image, digest)
        put_manifest(self.registry_url, image, tag_id, raw, media_type)
        return tag


def test_gar_same_repository_tag_goes_through_the_artifact_registry_api(registry, google, monkeypatch):
    api = FakeArtifactRegistry(registry.url)
    monkeypatch.setattr(gar, "artifact_registry_client", lambda spec: api)
    digest = push_random_image(registry.url, "proj/repo/team/api", "1.0")
    spec = RegistrySpec("gar", registry.url, options={"location": "europe", **FAST})

    summary = copy_image(location(spec, "proj/repo/team/api", "1.0"), location(spec, "proj/repo/team/api", "prod"))

    assert summary.fast_path == "gar-tag" and summary.bytes_transferred == 0
    parent = "projects/proj/locations/europe/repositories/repo/packages/team%2Fapi"
    assert api.created == [{"parent": parent, "tag_id": "prod", "version": f"{parent}/versions/{digest}"}]
    assert get_manifest_digest(registry.url, "proj/repo/team/api", "prod") == digest


def test_gar_package_mapping_for_pkg_dev_and_gcr_hosts():
    pkg = gar.package_of(RegistrySpec("gar", "https://europe-docker.pkg.dev"), "proj/repo/team/api")
    assert pkg.parent == "projects/proj/locations/europe/repositories/repo/packages/team%2Fapi"
    gcr = gar.package_of(RegistrySpec("gar", "https://eu.gcr.io"), "proj/api")
    assert gcr.parent == "projects/proj/locations/europe/repositories/eu.gcr.io/packages/api"


# --- ACR: the token exchange against a local HTTP server; import via a faked management client ------------------


class FakeEntraCredential:
    def __init__(self):
        self.scopes = []

    def get_token(self, *scopes):
        self.scopes.extend(scopes)
        return SimpleNamespace(token="entra-token", expires_on=int(time.time()) + 3600)


class AcrFront:
    """ACR's auth endpoints in front of a real registry: /oauth2/exchange, /oauth2/token, bearer-only /v2/."""

    def __init__(self):
        self.host = ""
        self.exchanges: list[dict] = []
        self.token_requests: list[dict] = []

    def __call__(self, method, path, headers, body):
        form = {}
        if path.startswith("/oauth2/"):
            form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        if path == "/oauth2/exchange":
            self.exchanges.append(form)
            if form.get("grant_type") != "access_token" or form.get("access_token") != "entra-token":
                return 401, {}, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad aad token"}]}'
            return 200, {"Content-Type": "application/json"}, json.dumps({"refresh_token": "acr-refresh"}).encode()
        if path == "/oauth2/token":
            self.token_requests.append(form)
            if form.get("grant_type") != "refresh_token" or form.get("refresh_token") != "acr-refresh":
                return 401, {}, b'{"errors":[{"code":"UNAUTHORIZED","message":"bad refresh token"}]}'
            token = f"acr-access-{len(self.token_requests)}"
            return 200, {"Content-Type": "application/json"}, json.dumps({"access_token": token}).encode()
        if path.startswith("/v2") and not headers.get("Authorization", "").startswith("Bearer acr-access-"):
            challenge = f'Bearer realm="http://{self.host}/oauth2/token",service="{self.host}"'
            return 401, {"WWW-Authenticate": challenge}, b'{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}'
        return None


def test_acr_exchanges_an_entra_token_for_refresh_and_access_tokens(
    registry, other_registry, proxy_factory, monkeypatch
):
    entra = FakeEntraCredential()
    monkeypatch.setattr(acr, "azure_credential", lambda spec: entra)
    acr._refresh_tokens.clear()
    front = AcrFront()
    proxy = proxy_factory(other_registry.url, intercept=front)
    front.host = proxy.host
    digest = push_random_image(registry.url, "team/api", "1.0")
    dst = RegistrySpec("acr", proxy.url, options=FAST)

    copy_image(location(registry.url, "team/api", "1.0"), location(dst, "prod/api", "1.0"))

    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    assert len(front.exchanges) == 1 and front.exchanges[0]["service"] == proxy.host
    assert entra.scopes == [acr.ACR_AUDIENCE]  # ACR's own audience first (issue 15 item 1)
    assert "repository:prod/api:pull,push" in {f["scope"] for f in front.token_requests}
    acr._refresh_tokens.clear()


def test_acr_admin_credentials_work_as_basic(registry):
    acr_registry = start_registry(htpasswd={"myacr": "admin-password"})
    try:
        digest = push_random_image(registry.url, "team/api", "1.0")
        dst = RegistrySpec(
            "acr", acr_registry.url, options=FAST, credentials={"username": "myacr", "password": "admin-password"}
        )
        copy_image(location(registry.url, "team/api", "1.0"), location(dst, "prod/api", "1.0"))
        assert get_manifest_digest(acr_registry.url, "prod/api", "1.0", auth=("myacr", "admin-password")) == digest
    finally:
        acr_registry.stop()


class FakeAcrManagement:
    """`registries.begin_import_image` recorded; the import itself is emulated by a plain copy between the two
    local registries, the way ACR's servers would pull the image."""

    def __init__(self, source_url: str, target_url: str):
        self.imports: list[tuple] = []
        self.source_url, self.target_url = source_url, target_url
        self.registries = self

    def begin_import_image(self, resource_group, registry_name, parameters):
        self.imports.append((resource_group, registry_name, parameters))
        repository, _, digest = parameters.source.source_image.partition("@")
        target_repository, _, tag = parameters.target_tags[0].partition(":")
        copy_image(location(self.source_url, repository, digest), location(self.target_url, target_repository, tag))
        return SimpleNamespace(done=lambda: True, status=lambda: "Succeeded", result=lambda: None)


def test_acr_import_copies_server_side_from_another_acr(registry, other_registry, monkeypatch):
    management = FakeAcrManagement(registry.url, other_registry.url)
    monkeypatch.setattr(acr, "management_client", lambda spec: management)
    digest = push_random_image(registry.url, "team/api", "1.0")
    azure = {"subscription_id": "sub-1", "resource_group": "rg-1", **FAST}
    src = RegistrySpec(
        "acr",
        registry.url,
        options={**azure, "registry_name": "buildacr"},
        credentials={"username": "u", "password": "p"},
    )
    dst = RegistrySpec(
        "acr",
        other_registry.url,
        options={**azure, "registry_name": "prodacr"},
        credentials={"username": "u", "password": "p"},
    )

    summary = copy_image(location(src, "team/api", "1.0"), location(dst, "prod/api", "1.0"))

    assert summary.fast_path == "acr-import" and summary.bytes_transferred == 0
    [(resource_group, registry_name, parameters)] = management.imports
    assert (resource_group, registry_name) == ("rg-1", "prodacr")
    assert parameters.source.resource_id.endswith(
        "/resourceGroups/rg-1/providers/Microsoft.ContainerRegistry/registries/buildacr"
    )
    assert parameters.source.source_image == f"team/api@{digest}"
    assert parameters.target_tags == ["prod/api:1.0"]
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest


def test_a_failing_fast_path_falls_back_to_the_plain_copy(registry, other_registry, monkeypatch):
    def broken(spec):
        raise RuntimeError("management API unreachable")

    monkeypatch.setattr(acr, "management_client", broken)
    digest = push_random_image(registry.url, "team/api", "1.0")
    azure = {"subscription_id": "s", "resource_group": "r", **FAST}
    src = RegistrySpec("acr", registry.url, options=azure, credentials={"username": "u", "password": "p"})
    dst = RegistrySpec("acr", other_registry.url, options=azure, credentials={"username": "u", "password": "p"})

    summary = copy_image(location(src, "team/api", "1.0"), location(dst, "prod/api", "1.0"))

    assert summary.fast_path is None and summary.blobs_copied == 3
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest


def test_docker_hub_names_map_to_the_registry_api_host():
    from ci_integrations.registry.providers import provider_for

    for url in ("https://docker.io", "https://index.docker.io", "docker.io"):
        spec = RegistrySpec("dockerhub", url)
        assert provider_for(spec).endpoint(spec).base_url == "https://registry-1.docker.io"
    mirror = RegistrySpec("dockerhub", "https://mirror.example.com")
    assert provider_for(mirror).endpoint(mirror).base_url == "https://mirror.example.com"


def test_ecr_region_and_account_come_from_the_host():
    spec = RegistrySpec("ecr", f"https://{ACCOUNT}.dkr.ecr.ap-south-1.amazonaws.com")
    assert ecr.region_of(spec) == "ap-south-1" and ecr.registry_id_of(spec) == ACCOUNT
