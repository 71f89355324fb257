"""Config as code: apply_config is idempotent, --check changes nothing, errors name file and path, all or nothing."""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from django.core.management import CommandError, call_command

from ci_integrations.models import Artifact, AuditEntry, Bucket, Integration, Registry, Webhook, Workflow, WorkflowStep
from ci_integrations.services.actors import Actor
from ci_integrations.services.artifacts import check_report
from ci_integrations.services.errors import InvalidInput
from tests.foundation.conftest import EXAMPLE_CONFIG, child_database_url


def run(command: str, *args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(command, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def failing(command: str, *args) -> tuple[str, CommandError]:
    err = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command(command, *args, stdout=io.StringIO(), stderr=err)
    return err.getvalue(), caught.value


def state() -> list:
    """Everything apply_config manages, as comparable values."""
    return [
        list(Registry.objects.values_list("name", "provider", "url", "options", "credentials_encrypted")),
        list(Workflow.objects.values_list("name", "kind")),
        list(
            WorkflowStep.objects.values_list(
                "workflow__name",
                "position",
                "from_env",
                "to_env",
                "required_approvals",
                "approver_group__name",
                "required_checks",
                "min_soak",
                "auto_promote",
            )
        ),
        list(Integration.objects.values_list("name", "kind", "workflow__name")),
        list(Bucket.objects.values_list("integration__name", "env", "registry__name", "repository", "immutable_tags")),
    ]


def test_apply_creates_everything_the_file_describes(db, config_file):
    out, _ = run("apply_config", config_file())
    assert "+ registry qa" in out and "+ integration payments-api" in out and "+ bucket payments-api/prod" in out
    prod = Bucket.objects.get(integration__name="payments-api", env="prod")
    assert (prod.registry.name, prod.repository, prod.immutable_tags) == ("prod", "payments/api", True)
    step = WorkflowStep.objects.get(workflow__name="standard", to_env="prod")
    assert step.required_approvals == 2 and step.approver_group.name == "release-managers"
    assert step.required_checks == ["functional", "nft"] and step.min_soak.total_seconds() == 3600
    assert Registry.objects.get(name="build").get_credentials() == {"username": "robot", "password": "hunter2-build"}
    assert Registry.objects.get(name="prod").get_credentials() is None
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert actions == {"config.create", "config.credentials"}


def test_second_apply_changes_nothing_and_writes_no_audit_entry(db, config_file):
    path = config_file()
    run("apply_config", path)
    before, entries = state(), AuditEntry.objects.count()
    out, _ = run("apply_config", path)
    assert out.strip() == "No changes."
    assert state() == before
    assert AuditEntry.objects.count() == entries


def test_check_prints_the_diff_and_changes_nothing(db, config_file):
    run("apply_config", config_file())
    entries, before = AuditEntry.objects.count(), state()
    changed = config_file(EXAMPLE_CONFIG.replace("approvals: 2", "approvals: 3").replace("payments/api", "pay/api"))
    out, _ = run("apply_config", changed, "--check")
    assert "~ workflow standard step staging → prod (required_approvals: 2 → 3)" in out
    assert "~ bucket payments-api/prod (repository: 'payments/api' → 'pay/api')" in out
    assert "nothing applied" in out
    assert state() == before
    assert AuditEntry.objects.count() == entries
    out, _ = run("apply_config", changed)
    assert "required_approvals: 2 → 3" in out
    assert WorkflowStep.objects.get(to_env="prod").required_approvals == 3


def test_update_is_audited_with_before_and_after(db, config_file):
    run("apply_config", config_file())
    run("apply_config", config_file(EXAMPLE_CONFIG.replace("approvals: 2", "approvals: 3")))
    entry = AuditEntry.objects.get(action="config.update")
    assert (entry.before, entry.after) == ({"required_approvals": 2}, {"required_approvals": 3})
    assert entry.actor.startswith("manage.py apply_config (")


def test_unknown_registry_is_named_with_file_and_path(db, config_file):
    path = config_file(EXAMPLE_CONFIG.replace("{env: staging, registry: qa", "{env: staging, registry: nope"))
    err, error = failing("apply_config", path)
    assert f"{path}: integrations[0].buckets[1].registry: unknown registry 'nope'" in err.splitlines()
    assert error.returncode != 0


def test_every_problem_is_reported_with_its_path(db, config_file):
    path = config_file(
        """
        registries:
          - {name: Bad_Name, url: ftp://x}
        workflows:
          - name: wf
            steps: [{from: qa, to: qa, min_soak: soon}]
        integrations:
          - name: app
            workflow: missing
            colour: blue
            buckets:
              - {env: qa, registry: nope, repository: Team/App}
        """
    )
    err, _ = failing("apply_config", path)
    lines = err.splitlines()
    for expected in [
        "registries[0].name: name 'Bad_Name' must be lowercase letters, digits and '-', at most 63 characters",
        "registries[0].url: 'ftp://x' is not a registry URL: expected http(s)://host[:port] with no path.",
        "workflows[0].steps[0]: from and to must differ",
        "workflows[0].steps[0].min_soak: 'soon' is not a duration like 90s, 30m, 1h, 2d or 1w",
        "integrations[0].workflow: unknown workflow 'missing'",
        "integrations[0].colour: unknown key (expected one of: buckets, ci_identities, description, kind, name, "
        "webhooks, workflow)",
        "integrations[0].buckets[0].registry: unknown registry 'nope'",
    ]:
        assert f"{path}: {expected}" in lines
    assert any(line.startswith(f"{path}: integrations[0].buckets[0].repository: 'Team/App'") for line in lines)


def test_a_file_with_one_bad_item_applies_nothing(db, config_file):
    bad = EXAMPLE_CONFIG + textwrap.indent(
        textwrap.dedent(
            """
            - name: second-app
              workflow: standard
              buckets:
                - {env: qa, registry: qa, repository: team/second}
                - {env: staging, registry: qa, repository: team/second}
                - {env: prod, registry: prod, repository: "has space"}
            """
        ),
        "  ",
    )
    err, _ = failing("apply_config", config_file(bad))
    assert "integrations[1].buckets[2].repository" in err
    assert state() == [[], [], [], [], []]
    assert AuditEntry.objects.count() == 0


def test_a_missing_environment_secret_is_a_path_error(db, config_file, monkeypatch):
    path = config_file()
    monkeypatch.delenv("P2P_TEST_BUILD_PASSWORD")
    err, _ = failing("apply_config", path)
    assert f"{path}: registries[2].credentials.password: environment variable P2P_TEST_BUILD_PASSWORD is not set" in err
    assert not Registry.objects.exists()


def test_workflow_of_another_kind_is_refused(db, config_file):
    path = config_file(EXAMPLE_CONFIG.replace("kind: environment\n    workflow", "kind: release_stream\n    workflow"))
    err, _ = failing("apply_config", path)
    assert "integrations[0].workflow: workflow 'standard' is for kind environment, not release_stream" in err


def test_syntax_errors_name_the_line(db, config_file):
    err, _ = failing("apply_config", config_file("registries:\n  - name: qa\n   url: [\n"))
    assert "line 3" in err and "not valid YAML" in err


def test_export_then_apply_is_a_no_op(db, config_file, tmp_path):
    run("apply_config", config_file())
    exported = tmp_path / "exported.yaml"
    run("export_config", "-o", str(exported))
    data = yaml.safe_load(exported.read_text())
    assert {r["name"]: r["credentials"] for r in data["registries"]} == {
        "build": "stored",
        "prod": "ambient",
        "qa": "ambient",
    }
    assert "hunter2" not in exported.read_text()
    before, entries = state(), AuditEntry.objects.count()
    out, _ = run("apply_config", str(exported))
    assert out.strip() == "No changes."
    assert state() == before and AuditEntry.objects.count() == entries
    # The export is also complete: into an empty database it recreates the same configuration (bar secrets).
    printed, _ = run("export_config")
    assert yaml.safe_load(printed) == data


def test_apply_never_logs_secrets(db, config_file):
    run("apply_config", config_file())
    logged = " ".join(str(values) for values in AuditEntry.objects.values_list("before", "after", "reason"))
    assert "hunter2" not in logged


def test_the_documented_example_applies_cleanly(db, tmp_path, monkeypatch):
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    example = docs.split("```yaml\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("BUILD_REGISTRY_PASSWORD", "from-the-environment")
    monkeypatch.setenv("PAYMENTS_WEBHOOK_SECRET", "whsec-example")
    monkeypatch.setenv("RELEASES_WEBHOOK_SECRET", "releases-channel-secret")
    path = tmp_path / "example.yaml"
    path.write_text(example, encoding="utf-8")
    out, _ = run("apply_config", str(path))
    assert "change(s) applied" in out
    step = WorkflowStep.objects.get(to_env="prod")
    assert (step.rollback_approvals, step.tag_rule) == (1, r"v\d+\.\d+\.\d+")
    assert Registry.objects.get(name="build").get_credentials()["password"] == "from-the-environment"
    channel = Webhook.objects.get(integration__isnull=True)
    assert (channel.name, channel.format, channel.get_secret()) == (
        "releases-channel",
        "slack",
        "releases-channel-secret",
    )
    assert run("apply_config", str(path))[0].strip() == "No changes."


def test_a_workflow_and_its_integrations_can_change_kind_together(db, config_file):
    run("apply_config", config_file())
    streams = EXAMPLE_CONFIG.replace("kind: environment", "kind: release_stream")
    assert streams.count("kind: release_stream") == 2
    out, _ = run("apply_config", config_file(streams))
    assert "~ workflow standard (kind: 'environment' → 'release_stream')" in out
    assert Integration.objects.get().kind == Workflow.objects.get().kind == "release_stream"


def test_a_workflow_cannot_change_kind_under_integrations_outside_the_file(db, config_file):
    run("apply_config", config_file())
    only_workflow = EXAMPLE_CONFIG.split("integrations:")[0].replace("kind: environment", "kind: release_stream")
    err, _ = failing("apply_config", config_file(only_workflow))
    expected = "integration 'payments-api' (not in this file) uses workflow 'standard' with kind environment"
    assert f"workflows[0].kind: {expected}" in err
    assert Workflow.objects.get().kind == "environment"


def test_a_workflow_cannot_gain_an_environment_that_integrations_outside_the_file_have_no_bucket_for(db, config_file):
    run("apply_config", config_file())
    only_workflow = EXAMPLE_CONFIG.split("integrations:")[0] + "      - {from: prod, to: dr, approvals: 1}\n"
    err, _ = failing("apply_config", config_file(only_workflow))
    expected = "integration 'payments-api' (not in this file) uses workflow 'standard' and has no bucket for 'dr'"
    assert f"workflows[0].steps: {expected}" in err
    assert not WorkflowStep.objects.filter(to_env="dr").exists()


def test_the_command_line_exits_non_zero_and_prints_file_and_path(db, config_file):
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    if child_database_url():  # the test database, where nothing has been applied
        env["DATABASE_URL"] = child_database_url()
    path = config_file(EXAMPLE_CONFIG.replace("repository: payments/api", "repository: Payments/API"))
    result = subprocess.run(
        [sys.executable, "manage.py", "apply_config", path],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert (
        f"{path}: integrations[0].buckets[2].repository: 'Payments/API' is not a valid repository path" in result.stderr
    )
    assert "nothing was applied" in result.stderr and result.stdout == ""


def test_an_integration_on_a_workflow_from_the_database_needs_a_bucket_for_each_of_its_environments(db, config_file):
    run("apply_config", config_file())
    entries = AuditEntry.objects.count()
    path = config_file(
        """
        integrations:
          - name: orders-api
            workflow: standard
            buckets:
              - {env: qa, registry: qa, repository: team/orders-api}
              - {env: staging, registry: qa, repository: staging/orders-api}
        """
    )
    err, _ = failing("apply_config", path)
    assert err.splitlines() == [f"{path}: integrations[0].buckets: workflow 'standard' needs a bucket for 'prod'"]
    assert not Integration.objects.filter(name="orders-api").exists()
    assert AuditEntry.objects.count() == entries


def test_a_check_name_the_api_accepts_can_be_a_required_check(db, config_file):
    run("apply_config", config_file(EXAMPLE_CONFIG.replace("[functional, nft]", "[unit_tests, Lint-2]")))
    assert WorkflowStep.objects.get(to_env="prod").required_checks == ["unit_tests", "Lint-2"]
    artifact = Artifact.objects.create(integration=Integration.objects.get(), digest="sha256:" + "a" * 64)
    for name in ("unit_tests", "Lint-2"):
        check_report(artifact=artifact, name=name, status="passed", actor=Actor.system("ci"))
    assert sorted(artifact.checks.values_list("name", flat=True)) == ["Lint-2", "unit_tests"]


@pytest.mark.parametrize(
    "name", ["-lint", "unit.tests", "unit tests", "x" * 64, ""], ids=["dash-first", "dot", "space", "too-long", "empty"]
)
def test_a_check_name_is_refused_by_the_file_and_the_api_with_the_same_rule(db, config_file, name):
    rule = "must be 1 to 63 letters, digits, '_' or '-', not starting with '-'"
    path = config_file(EXAMPLE_CONFIG.replace("[functional, nft]", f"[functional, {name!r}]"))
    err, _ = failing("apply_config", path)
    assert err.splitlines() == [f"{path}: workflows[0].steps[1].required_checks[1]: check name {name!r} {rule}"]
    run("apply_config", config_file())
    artifact = Artifact.objects.create(integration=Integration.objects.get(), digest="sha256:" + "a" * 64)
    with pytest.raises(InvalidInput) as refused:
        check_report(artifact=artifact, name=name, status="passed", actor=Actor.system("ci"))
    assert str(refused.value) == f"check name {name!r} {rule}"


def test_a_string_where_webhooks_should_be_a_list_gives_one_error(db, config_file):
    path = config_file(EXAMPLE_CONFIG + "    webhooks: https://hooks.example.com/p2p\n")
    err, _ = failing("apply_config", path)
    assert err.splitlines() == [f"{path}: integrations[0].webhooks: must be a list"]
    assert not Integration.objects.exists()


@pytest.mark.parametrize(
    "where, document",
    [
        ("integrations[0].webhooks", "integrations: [{name: app, webhooks: 5}]"),
        ("integrations[0].webhooks", "integrations: [{name: app, webhooks: {url: 'https://hooks.example.com'}}]"),
        (
            "integrations[0].webhooks[0].events",
            "integrations: [{name: app, webhooks: [{url: 'https://hooks.example.com', secret: s, events: failed}]}]",
        ),
        ("integrations[0].buckets", "integrations: [{name: app, buckets: {}}]"),
        ("workflows[0].steps", "workflows: [{name: wf, steps: {}}]"),
        (
            "workflows[0].steps[0].required_checks",
            "workflows: [{name: wf, steps: [{from: a, to: b, required_checks: nft}]}]",
        ),
    ],
    ids=["webhooks-number", "webhooks-mapping", "events-string", "buckets-mapping", "steps-mapping", "checks-string"],
)
def test_a_value_that_should_be_a_list_but_is_not_gives_one_must_be_a_list_error(db, config_file, where, document):
    path = config_file(document)
    err, _ = failing("apply_config", path)
    assert err.splitlines() == [f"{path}: {where}: must be a list"]
    assert not Integration.objects.exists() and not Workflow.objects.exists()


@pytest.mark.parametrize("url", ["https://", "hooks.example.com/p2p", "https://hooks.example.com/\x1b[31m"])
def test_a_webhook_url_must_be_an_http_url_with_a_host_and_printable(db, config_file, url):
    path = config_file(f"integrations: [{{name: app, webhooks: [{{url: {json.dumps(url)}, secret: s}}]}}]")
    err, _ = failing("apply_config", path)
    assert err.splitlines() == [f"{path}: integrations[0].webhooks[0].url: {url!r} is not an http(s) URL"]
    assert not Integration.objects.exists()


def test_a_name_is_checked_whole_so_a_trailing_line_break_is_refused_with_its_path(db, config_file):
    path = config_file('workflows: [{name: "wf\\n", steps: []}]')
    err, _ = failing("apply_config", path)
    rule = "must be lowercase letters, digits and '-', at most 63 characters"
    assert err.splitlines() == [f"{path}: workflows[0].name: name 'wf\\n' {rule}"]
    assert not Workflow.objects.exists()


def test_bucket_push_options_are_read_exported_and_checked(db, config_file, tmp_path):
    text = EXAMPLE_CONFIG.replace(
        "{env: prod, registry: prod, repository: payments/api, immutable_tags: true}",
        "{env: prod, registry: prod, repository: payments/api, immutable_tags: true, allow_direct_register: true,\n"
        "         allow_push_credentials: true, push_role_arn: 'arn:aws:iam::123456789012:role/p2p-push'}",
    )
    run("apply_config", config_file(text))
    prod = Bucket.objects.get(integration__name="payments-api", env="prod")
    assert (prod.allow_direct_register, prod.push_role_arn) == (True, "arn:aws:iam::123456789012:role/p2p-push")
    assert Bucket.objects.get(integration__name="payments-api", env="qa").allow_direct_register is False
    exported = tmp_path / "exported.yaml"
    run("export_config", "-o", str(exported))
    [bucket] = [b for b in yaml.safe_load(exported.read_text())["integrations"][0]["buckets"] if b["env"] == "prod"]
    assert bucket["allow_direct_register"] is True and bucket["push_role_arn"].endswith(":role/p2p-push")
    assert run("apply_config", str(exported))[0].strip() == "No changes."

    err, _ = failing("apply_config", config_file(text.replace("arn:aws:iam::123456789012:role", "not-an-arn")))
    assert "push_role_arn" in err and "not an IAM role ARN" in err


def test_bucket_repository_creation_options_are_read_exported_and_checked(db, config_file, tmp_path):
    text = EXAMPLE_CONFIG.replace(
        "{env: prod, registry: prod, repository: payments/api, immutable_tags: true}",
        "{env: prod, registry: prod, repository: payments/api, immutable_tags: true, create_repository: true,\n"
        "         scan_on_push: true, encryption: kms, kms_key: 'arn:aws:kms:eu-west-1:123456789012:key/1'}",
    )
    run("apply_config", config_file(text))
    prod = Bucket.objects.get(integration__name="payments-api", env="prod")
    assert (prod.create_repository, prod.scan_on_push, prod.encryption) == (True, True, "KMS")
    assert prod.location("v1").create.kms_key.endswith(":key/1") and prod.location("v1").create.immutable_tags
    assert Bucket.objects.get(integration__name="payments-api", env="qa").location("v1").create is None
    exported = tmp_path / "exported.yaml"
    run("export_config", "-o", str(exported))
    assert run("apply_config", str(exported))[0].strip() == "No changes."

    err, _ = failing("apply_config", config_file(text.replace("encryption: kms", "encryption: rot13")))
    assert "encryption: 'rot13' must be AES256 or KMS" in err
