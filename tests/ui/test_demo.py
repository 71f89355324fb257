"""`manage.py seed_demo`: the `make run` demo is seeded once, with real images in qa and printed passwords."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command

from ci_integrations.models import Arrival, Artifact, Bucket, WorkflowStep
from tests.support.images import get_manifest_digest
from tests.ui.conftest import ensure_roles

pytestmark = pytest.mark.django_db


def test_seed_demo_seeds_once_and_prints_the_same_passwords_every_time(registry_servers, settings, tmp_path):
    settings.VAR_DIR = tmp_path
    ensure_roles()
    first, second = registry_servers
    args = ["--registry-a", first.url, "--registry-b", second.url, "--wait", "5"]
    out = io.StringIO()
    call_command("seed_demo", *args, stdout=out)
    again = io.StringIO()
    call_command("seed_demo", *args, stdout=again)

    assert "already seeded" in again.getvalue()
    assert Artifact.objects.filter(integration__name="demo-shop").count() == 3
    qa = Bucket.objects.get(integration__name="demo-shop", env="qa")
    assert Arrival.objects.filter(bucket=qa).count() == 3
    for arrival in Arrival.objects.filter(bucket=qa).select_related("artifact"):
        assert get_manifest_digest(first.url, "demo-shop/qa", arrival.tag) == arrival.artifact.digest
    prod = Bucket.objects.get(integration__name="demo-shop", env="prod")
    assert prod.registry.url == second.url
    staging_step = WorkflowStep.objects.get(to_env="staging")
    prod_step = WorkflowStep.objects.get(to_env="prod")
    assert (staging_step.required_approvals, prod_step.required_approvals) == (1, 2)
    assert not staging_step.self_approval and staging_step.approver_group.name == "release-managers"
    for step in (staging_step, prod_step):  # enough approvers besides the requester, so the demo path can finish
        assert not step.self_approval and step.approver_group.user_set.count() - 1 >= step.required_approvals

    passwords = dict(line.split() for line in (tmp_path / "demo-passwords.txt").read_text().splitlines())
    assert set(passwords) == {"release1", "release2", "release3", "auditor", "admin"}
    for name, password in passwords.items():
        assert f"{name}" in out.getvalue() and password in out.getvalue() and password in again.getvalue()
        assert User.objects.get(username=name).check_password(password)
    assert User.objects.get(username="admin").is_staff

    # A few weeks of history, so the insights page shows charts with data.
    from ci_integrations.insights import dora_report

    report = dora_report(env="prod", days=30)
    assert {row.name for row in report.integrations} == {"demo-catalog", "demo-payments"}
    assert report.overall.deployments >= 20 and report.overall.rollbacks >= 1
    assert report.overall.lead_time_median is not None and report.overall.time_to_restore_median is not None
    assert sum(1 for period in report.periods if period.deployments) >= 15


def test_the_demo_registry_process_serves_the_distribution_api(tmp_path):
    """The Procfile's registries start from the config the demo writes (a bad config stops `make run` at once)."""
    import socket
    import subprocess
    import sys

    from ci_integrations.demo import wait_for_registry

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "ci_integrations.demo", "registry", str(port), str(tmp_path / "registry")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        try:
            wait_for_registry(f"http://127.0.0.1:{port}", timeout=10)
        except TimeoutError:
            process.kill()
            log = tmp_path / "registry" / "registry.log"
            pytest.fail(f"the demo registry did not start: {log.read_text() if log.exists() else 'no log'}")
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=10)
