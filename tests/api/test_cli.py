"""The `p2p` CLI as CI runs it: a subprocess with P2P_URL and P2P_TOKEN, against a live server and a real worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from ci_integrations.models import Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.artifacts import artifact_register

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

CLI = Path(__file__).resolve().parents[2] / "ci_integrations" / "cli" / "p2p.py"


def p2p(live_server, token: str, *args: str, wait: bool = True, **env):
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "P2P_URL": live_server.url,
        "P2P_TOKEN": token,
        "P2P_WAIT_INTERVAL": "0.2",
        **env,
    }
    command = [sys.executable, "-I", str(CLI), *args]
    if not wait:
        return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the CLI's request"
        time.sleep(0.05)


def test_push_check_promote_with_wait_status_and_rollback(world, live_server, run_worker):
    ci = world.plain["ci_own"]
    image = f"{world.dev.image_name}"
    digest = world.push(world.dev, "1.0.0")
    pushed = p2p(
        live_server,
        ci,
        "push",
        world.shop.name,
        "dev",
        f"{image}:1.0.0",
        "--meta",
        "team=web",
        GITHUB_SHA="abc123",
        GITHUB_REF_NAME="main",
    )
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith("registered") and digest in pushed.stdout

    again = p2p(live_server, ci, "push", world.shop.name, "dev", f"{image}:1.0.0", "--json")
    body = json.loads(again.stdout)
    assert again.returncode == 0 and body["created"] is False and body["digest"] == digest

    checked = p2p(
        live_server,
        ci,
        "check",
        f"{world.shop.name}:1.0.0",
        "functional",
        "passed",
        "--url",
        "https://ci.example.com/checks/1",
    )
    assert checked.returncode == 0 and "functional passed" in checked.stdout, checked.stderr

    # corectl's flags and environment defaults; the integration is the image's last path component.
    process = p2p(
        live_server,
        ci,
        "promote",
        f"registry.example.com/team/{world.shop.name}:1.0.0",
        "--wait",
        "--json",
        wait=False,
        SOURCE_STAGE="dev",
        DEST_STAGE="staging",
    )
    wait_for(lambda: Promotion.objects.filter(integration=world.shop).exists())
    run_worker()
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    promotion = json.loads(stdout)
    assert promotion["state"] == "succeeded" and promotion["result_digest"] == digest

    status = p2p(live_server, ci, "status", str(promotion["id"]), "--wait")
    assert status.returncode == 0 and "succeeded" in status.stdout
    assert "succeeded" not in status.stderr  # the final state is printed once, on stdout

    # staging moves on to 1.1.0, then is rolled back to 1.0.0.
    world.push(world.dev, "1.1.0")
    world.copy(world.dev, world.staging, "1.1.0")
    # CI may not register into staging (it is reached by promotion); the portal records the arrival itself.
    refused = p2p(live_server, ci, "push", world.shop.name, "staging", f"{image}:1.1.0")
    assert refused.returncode == 1 and "only by promotion from 'dev'" in refused.stderr
    artifact_register(integration=world.shop, env="staging", tag="1.1.0", actor=Actor.system("promotion"))
    process = p2p(
        live_server,
        ci,
        "rollback",
        world.shop.name,
        "staging",
        digest,
        "--reason",
        "1.1.0 is broken",
        "--wait",
        wait=False,
    )
    wait_for(lambda: Promotion.objects.filter(kind=Promotion.Kind.ROLLBACK).exists())
    run_worker()
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert stdout.startswith("rollback ") and "succeeded" in stdout  # says what it is, not "promotion"
    world.staging.refresh_from_db()
    assert world.staging.current_arrival.artifact.digest == digest


def test_status_wait_exits_1_for_rejected_and_2_on_timeout(world, live_server):
    world.push(world.dev, "2.0.0")
    digest = world.copy(world.dev, world.staging, "2.0.0")
    ci, rm, rm2 = world.plain["ci_own"], world.plain["rm"], world.plain["rm2"]
    artifact_register(integration=world.shop, env="staging", tag="2.0.0", actor=Actor.system("promotion"))

    requested = p2p(live_server, rm2, "promote", f"{world.shop.name}@{digest}", "--dest-stage", "prod", "--json")
    assert requested.returncode == 0, requested.stderr
    pk = str(json.loads(requested.stdout)["id"])

    timed_out = p2p(live_server, ci, "status", pk, "--wait", "--timeout", "0.5")
    assert timed_out.returncode == 2 and "timed out" in timed_out.stdout

    rejected = p2p(live_server, rm, "reject", pk, "--comment", "not this week")
    assert rejected.returncode == 0 and "rejected" in rejected.stdout
    final = p2p(live_server, ci, "status", pk, "--wait")
    assert final.returncode == 1 and "rejected" in final.stdout


def test_errors_are_one_line_and_exit_1(world, live_server):
    bad = p2p(live_server, world.plain["wrong_checksum"], "status", "1")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "checksum" in bad.stderr and "401" in bad.stderr

    world.to_prod.required_checks = ["functional", "nft"]
    world.to_prod.save()
    world.push(world.dev, "3.0.0")
    p2p(live_server, world.plain["ci_own"], "push", world.shop.name, "dev", f"x/{world.shop.name}:3.0.0")
    refused = p2p(live_server, world.plain["rm"], "promote", f"{world.shop.name}:3.0.0", "--dest-stage", "prod")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "functional" in refused.stderr and "409" in refused.stderr

    # A missing token is a usage error (exit 64), found before anything is sent: see test_cli_bad_input.py.
    unset = p2p(live_server, "", "status", "1")
    assert unset.returncode == 64 and "P2P_TOKEN" in unset.stderr


def test_login_prints_the_scoped_token_from_push_credentials(world, live_server, token_registry_server):
    world.dev.registry = token_registry_server.row()
    world.dev.save()
    login = p2p(live_server, world.plain["ci_own"], "login", world.shop.name, "dev")
    assert login.returncode == 0, login.stderr
    comment, export, docker = login.stdout.strip().splitlines()
    assert comment.startswith(f"# a token for repository:{world.dev.repository}:pull,push only, valid until ")
    assert export.startswith("export P2P_REGISTRY_TOKEN=") and len(export) > 100
    # What eval runs leaves a Docker config holding the token for the registry, and nothing else.
    shell = subprocess.run(
        ["sh", "-c", f'{export}\n{docker}\ncat "$DOCKER_CONFIG/config.json"; echo; echo "$P2P_REGISTRY_TOKEN"'],
        capture_output=True,
        text=True,
        check=True,
    )
    config, token = shell.stdout.strip().splitlines()
    host = token_registry_server.url.split("://", 1)[1]
    assert json.loads(config) == {"auths": {host: {"registrytoken": token}}}
    as_json = json.loads(p2p(live_server, world.plain["ci_own"], "login", world.shop.name, "dev", "--json").stdout)
    assert as_json["type"] == "bearer" and as_json["registry"] == token_registry_server.url.split("://", 1)[1]
    refused = p2p(live_server, world.plain["ci_own"], "login", world.shop.name, "staging")
    assert refused.returncode == 1 and "allow_push_credentials" in refused.stderr


def test_promote_at_a_time_schedules_the_copy_and_a_time_without_offset_is_refused(world, live_server):
    ci = world.plain["ci_own"]
    world.push(world.dev, "3.0.0")
    artifact_register(integration=world.shop, env="dev", tag="3.0.0", actor=Actor.system("ci"))
    image = f"registry.example.com/team/{world.shop.name}:3.0.0"
    naive = p2p(
        live_server,
        ci,
        "promote",
        image,
        "--source-stage",
        "dev",
        "--dest-stage",
        "staging",
        "--at",
        "2099-01-05T09:00",
    )
    assert naive.returncode == 1 and "UTC offset" in naive.stderr
    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0).astimezone(timezone(timedelta(hours=1)))
    scheduled = p2p(
        live_server, ci, "promote", image, "--source-stage", "dev", "--dest-stage", "staging", "--at", at.isoformat()
    )
    assert scheduled.returncode == 0, scheduled.stderr
    assert ": approved — waits: scheduled for" in scheduled.stdout
    promotion = Promotion.objects.get(integration=world.shop)
    assert promotion.state == Promotion.State.APPROVED and promotion.not_before == at
