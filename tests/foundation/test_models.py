"""Model-level validation: every bad value gets a ValidationError whose message says what is wrong."""

import pytest
from django.core.exceptions import ValidationError

from ci_integrations.models import Arrival, Artifact, Bucket, Integration, Registry, Workflow, WorkflowStep

GOOD_DIGEST = "sha256:" + "a" * 64


def validation_messages(obj) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        obj.full_clean()
    return caught.value.message_dict


@pytest.fixture
def registry(db):
    return Registry.objects.create(name="qa", url="http://127.0.0.1:5001")


@pytest.fixture
def integration(db):
    return Integration.objects.create(name="payments-api")


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:" + "a" * 63,
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        "md5:" + "a" * 32,
        "a" * 64,
        "sha256:",
        "sha256:" + "a" * 64 + "\n",
    ],
)
def test_artifact_rejects_malformed_digests(integration, digest):
    messages = validation_messages(Artifact(integration=integration, digest=digest))
    assert "is not a digest" in messages["digest"][0]
    assert "sha256:" in messages["digest"][0]


def test_artifact_accepts_a_sha256_digest(integration):
    Artifact(integration=integration, digest=GOOD_DIGEST).full_clean()


@pytest.mark.parametrize("tag", [".hidden", "-dash", "has space", "a" * 129, "tag/with/slash", "v1:2", "", "<b>x</b>"])
def test_arrival_rejects_tags_outside_the_oci_grammar(integration, registry, tag):
    bucket = Bucket.objects.create(integration=integration, env="qa", registry=registry, repository="team/app")
    artifact = Artifact.objects.create(integration=integration, digest=GOOD_DIGEST)
    messages = validation_messages(Arrival(bucket=bucket, artifact=artifact, tag=tag, how="push"))
    assert "tag" in messages
    if tag:
        assert "is not a valid tag" in messages["tag"][0]


@pytest.mark.parametrize("tag", ["v1.2.3", "latest", "_build-42", "A" * 128])
def test_arrival_accepts_oci_tags(integration, registry, tag):
    bucket = Bucket.objects.create(integration=integration, env="qa", registry=registry, repository="team/app")
    artifact = Artifact.objects.create(integration=integration, digest=GOOD_DIGEST)
    Arrival(bucket=bucket, artifact=artifact, tag=tag, how="push").full_clean()


@pytest.mark.parametrize(
    "repository", ["Team/App", "team//app", "/team/app", "team/app/", "team/-app", "team/app:v1", "a" * 256]
)
def test_bucket_rejects_repositories_outside_the_oci_name_grammar(integration, registry, repository):
    messages = validation_messages(Bucket(integration=integration, env="qa", registry=registry, repository=repository))
    assert "is not a valid repository path" in messages["repository"][0]


@pytest.mark.parametrize("name", ["Has Space", "slash/name", "dots.are.not.slugs", "ünïcode", ""])
def test_names_must_be_slugs(db, name):
    for obj in (Registry(name=name, url="http://127.0.0.1:5001"), Integration(name=name), Workflow(name=name)):
        messages = validation_messages(obj)
        assert "name" in messages, obj


@pytest.mark.parametrize(
    "url",
    [
        "ftp://registry.example.com",
        "registry.example.com",
        "https://registry.example.com/v2/path",
        "http://",
        "https://bad host",
        "https://host:port",
    ],
)
def test_registry_url_must_be_a_bare_http_endpoint(db, url):
    messages = validation_messages(Registry(name="r", url=url))
    assert "is not a registry URL" in messages["url"][0]


@pytest.mark.parametrize("url", ["http://127.0.0.1:5001", "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/"])
def test_registry_url_accepts_host_and_port(db, url):
    Registry(name="r", url=url).full_clean()


def test_integration_refuses_a_workflow_of_another_kind(db):
    streams = Workflow.objects.create(name="streams", kind="release_stream")
    messages = validation_messages(Integration(name="payments-api", kind="environment", workflow=streams))
    assert "is for kind release_stream, not environment" in messages["workflow"][0]


def test_workflow_kind_cannot_change_under_its_integrations(db):
    workflow = Workflow.objects.create(name="standard", kind="environment")
    Integration.objects.create(name="payments-api", kind="environment", workflow=workflow)
    workflow.kind = "release_stream"
    messages = validation_messages(workflow)
    assert "payments-api" in messages["kind"][0]


def test_bucket_environment_is_unique_per_integration(integration, registry):
    Bucket.objects.create(integration=integration, env="qa", registry=registry, repository="team/app")
    messages = validation_messages(Bucket(integration=integration, env="qa", registry=registry, repository="x/y"))
    assert messages["__all__"]


def test_a_step_requires_only_names_a_check_can_be_reported_under(db):
    workflow = Workflow.objects.create(name="standard")
    step = WorkflowStep(workflow=workflow, position=0, from_env="qa", to_env="prod")
    step.required_checks = ["unit_tests", "Lint-2"]
    step.full_clean()
    step.required_checks = ["unit_tests", "unit.tests", "-lint"]
    messages = validation_messages(step)
    assert messages["required_checks"] == [
        "check names ['unit.tests', '-lint'] must each be 1 to 63 letters, digits, '_' or '-', not starting with '-'"
    ]
