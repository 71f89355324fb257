"""`manage.py copy_image`: prints a summary (or one JSON object), exits non-zero with a one-line reason."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from ci_integrations.management.commands.copy_image import Command
from tests.support.images import get_manifest_digest, push_random_image
from tests.support.registry_server import start_registry

ROOT = Path(__file__).resolve().parents[2]


def test_copy_image_command_prints_one_json_summary(registry, other_registry):
    digest = push_random_image(registry.url, "team/api", "1.0")
    out = io.StringIO()

    call_command(
        Command(),
        f"{registry.host}/team/api:1.0",
        f"{other_registry.host}/prod/api:1.0",
        "--plain-http",
        "--json",
        stdout=out,
    )

    summary = json.loads(out.getvalue())
    assert summary["digest"] == digest and summary["blobs_copied"] == 3 and summary["manifests"] == 1
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest


def test_copy_image_command_takes_credentials_from_the_environment(registry, monkeypatch):
    locked = start_registry(htpasswd={"ci": "ci-password"})
    try:
        digest = push_random_image(registry.url, "team/api", "1.0")
        monkeypatch.setenv("P2P_DST_CREDS", "ci:ci-password")
        out = io.StringIO()
        call_command(
            Command(), f"{registry.host}/team/api:1.0", f"{locked.host}/prod/api:1.0", "--plain-http", stdout=out
        )
        assert digest in out.getvalue() and "3 copied" in out.getvalue()
        assert get_manifest_digest(locked.url, "prod/api", "1.0", auth=("ci", "ci-password")) == digest
    finally:
        locked.stop()


def test_copy_image_command_names_a_bad_reference(registry):
    with pytest.raises(CommandError, match="invalid reference.*tag"):
        call_command(Command(), f"{registry.host}/team/api:-bad", f"{registry.host}/prod/api:1", "--plain-http")


def test_copy_image_command_exits_non_zero_with_one_line_without_a_database(registry, other_registry, tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": "postgres://nobody:nothing@127.0.0.1:1/none",  # unreachable: the command must not need it
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": "WARNING",
    }
    env.pop("P2P_DST_CREDS", None)
    missing = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "copy_image",
            f"{registry.host}/team/api:nope",
            f"{other_registry.host}/p/a:1",
            "--plain-http",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0
    lines = [line for line in missing.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "NotFound" in lines[0] and "team/api" in lines[0]
    assert missing.stdout == ""

    digest = push_random_image(registry.url, "team/api", "1.0")
    ok = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "copy_image",
            f"{registry.host}/team/api:1.0",
            f"{other_registry.host}/p/a:1",
            "--plain-http",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["digest"] == digest
