"""Repositories that must exist before a push (issue 15 item 6): ECR (moto for the AWS API, a real docker-registry
for the data plane) and Artifact Registry (a fake at the SDK boundary).

Sources: Amazon ECR User Guide, "Creating a private repository" (a push into a missing repository fails with
NAME_UNKNOWN; ECR never creates one on push) and the CreateRepository API (imageTagMutability,
imageScanningConfiguration, encryptionConfiguration); Artifact Registry REST reference,
projects.locations.repositories.create (format DOCKER, dockerConfig.immutableTags, kmsKeyName).
"""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import boto3
import pytest
from google.api_core import exceptions as google_errors

from ci_integrations.registry import ImageLocation, RegistrySpec, copy_image
from ci_integrations.registry.providers import ecr, gar
from ci_integrations.registry.refs import RepositorySettings
from ci_integrations.registry.repositories import repository_state
from tests.registry.conftest import FAST, location
from tests.registry.test_providers import ACCOUNT, ECR_PASSWORD, aws, ecr_registry  # noqa: F401 (fixtures)
from tests.support.images import get_manifest_digest, push_random_image

KMS_KEY = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/11111111-2222-3333-4444-555555555555"


class RecordingEcr:
    """The moto-backed ECR client, recording which calls the provider makes (moto's login tokens expired in 2015:
    they get a real lifetime, so the provider's token cache works as it does against ECR)."""

    def __init__(self):
        self.client = boto3.client("ecr", region_name="eu-west-1")
        self.calls: list[str] = []

    def __getattr__(self, name):
        method = getattr(self.client, name)

        def call(**kwargs):
            self.calls.append(name)
            answer = method(**kwargs)
            if name == "get_authorization_token":
                answer["authorizationData"][0]["expiresAt"] = dt.datetime.now(dt.UTC) + dt.timedelta(hours=12)
            return answer

        return call


def _ecr_destination(url: str, create: RepositorySettings | None) -> ImageLocation:
    spec = RegistrySpec("ecr", url, options={"region": "eu-west-1", "registry_id": ACCOUNT, **FAST})
    return ImageLocation(spec, "prod/api", "1.0", create=create)


def test_a_missing_ecr_repository_is_created_with_the_buckets_settings_before_the_push(
    aws,  # noqa: F811
    registry,
    ecr_registry,  # noqa: F811
    monkeypatch,
):
    api = RecordingEcr()
    monkeypatch.setattr(ecr, "ecr_client", lambda spec: api)
    digest = push_random_image(registry.url, "team/api", "1.0")
    settings = RepositorySettings(immutable_tags=True, scan_on_push=True, encryption="KMS", kms_key=KMS_KEY)

    lines: list[str] = []
    summary = copy_image(
        location(registry.url, "team/api", "1.0"), _ecr_destination(ecr_registry.url, settings), notify=lines.append
    )

    assert summary.repository_created and summary.digest == digest
    assert lines == [f"created repository prod/api on {ecr_registry.host} (create_repository)"]
    [created] = api.client.describe_repositories(repositoryNames=["prod/api"])["repositories"]
    assert created["imageTagMutability"] == "IMMUTABLE"
    assert created["imageScanningConfiguration"] == {"scanOnPush": True}
    assert created["encryptionConfiguration"] == {"encryptionType": "KMS", "kmsKey": KMS_KEY}
    assert api.calls == ["get_authorization_token", "describe_repositories", "create_repository"]
    assert get_manifest_digest(ecr_registry.url, "prod/api", "1.0", auth=("AWS", ECR_PASSWORD)) == digest


def test_an_existing_ecr_repository_is_left_alone(aws, registry, ecr_registry, monkeypatch):  # noqa: F811
    api = RecordingEcr()
    api.client.create_repository(repositoryName="prod/api")
    monkeypatch.setattr(ecr, "ecr_client", lambda spec: api)
    push_random_image(registry.url, "team/api", "1.0")

    summary = copy_image(
        location(registry.url, "team/api", "1.0"), _ecr_destination(ecr_registry.url, RepositorySettings())
    )

    assert not summary.repository_created and "create_repository" not in api.calls


def test_without_create_repository_no_cloud_call_is_spent_on_the_repository(
    aws,  # noqa: F811
    registry,
    ecr_registry,  # noqa: F811
    monkeypatch,
):
    api = RecordingEcr()
    monkeypatch.setattr(ecr, "ecr_client", lambda spec: api)
    push_random_image(registry.url, "team/api", "1.0")

    copy_image(location(registry.url, "team/api", "1.0"), _ecr_destination(ecr_registry.url, None))

    assert api.calls == ["get_authorization_token"]


def test_repository_state_tells_preflight_what_will_happen(aws, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ecr, "ecr_client", lambda spec: RecordingEcr())
    url = f"https://{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com"
    assert repository_state(_ecr_destination(url, RepositorySettings())).will_be_created
    assert repository_state(_ecr_destination(url, None)).blocks_the_copy
    generic = ImageLocation(RegistrySpec("generic", "https://registry.example"), "prod/api", "1.0")
    assert repository_state(generic).exists is None  # creates on push: nothing to ask


class FakeArtifactRegistry:
    """get_repository / create_repository of the Artifact Registry client, with the repositories it holds."""

    def __init__(self, existing: set[str] = frozenset()):
        self.repositories = set(existing)
        self.created: list[tuple] = []

    def get_repository(self, *, name):
        if name not in self.repositories:
            raise google_errors.NotFound(f"Repository {name} not found")
        return SimpleNamespace(name=name)

    def create_repository(self, *, parent, repository_id, repository):
        self.created.append((parent, repository_id, repository))
        self.repositories.add(f"{parent}/repositories/{repository_id}")
        return SimpleNamespace(result=lambda timeout=None: repository)


@pytest.fixture
def google(monkeypatch):
    monkeypatch.setattr(gar, "_cached_credentials", lambda spec: SimpleNamespace(valid=True, token="t", expiry=None))


def test_a_missing_artifact_registry_repository_is_created_as_docker_with_immutable_tags_and_cmek(
    registry, google, monkeypatch
):
    api = FakeArtifactRegistry()
    monkeypatch.setattr(gar, "artifact_registry_client", lambda spec: api)
    digest = push_random_image(registry.url, "team/api", "1.0")
    spec = RegistrySpec(
        "gar", registry.url, options={"location": "europe", **FAST}, credentials={"username": "u", "password": "p"}
    )
    key = "projects/proj/locations/europe/keyRings/r/cryptoKeys/k"
    dst = ImageLocation(
        spec, "proj/images/team/api", "1.0", create=RepositorySettings(immutable_tags=True, kms_key=key)
    )

    summary = copy_image(location(registry.url, "team/api", "1.0"), dst)

    assert summary.repository_created and get_manifest_digest(registry.url, "proj/images/team/api", "1.0") == digest
    [(parent, repository_id, wanted)] = api.created
    assert (parent, repository_id) == ("projects/proj/locations/europe", "images")
    assert wanted.format_.name == "DOCKER" and wanted.docker_config.immutable_tags and wanted.kms_key_name == key
    copy_image(location(registry.url, "team/api", "1.0"), dst)
    assert len(api.created) == 1  # there now: not created twice
