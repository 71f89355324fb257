"""The Dockerfile's web command is one gunicorn accepts, and its worker count follows WEB_CONCURRENCY; the image runs
in production mode and will not start without its keys."""

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_the_docker_web_command_parses_and_takes_its_workers_from_web_concurrency(tmp_path):
    command = json.loads(re.findall(r"^CMD (\[.*\])$", DOCKERFILE, flags=re.MULTILINE)[-1])
    assert command[:2] == ["gunicorn", "p2p_portal.wsgi"]
    assert int(re.search(r"^\s+WEB_CONCURRENCY=(\d+)", DOCKERFILE, flags=re.MULTILINE).group(1)) >= 2
    env = {**os.environ, "WEB_CONCURRENCY": "7", "P2P_VAR_DIR": str(tmp_path), "LOG_LEVEL": "WARNING"}
    env.pop("DATABASE_URL", None)
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    # --print-config resolves the settings as gunicorn would run them (loading the app), then exits.
    result = subprocess.run(
        [gunicorn, "--print-config", *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    settings = dict(re.findall(r"^(\w+)\s+= (.*)$", result.stdout, flags=re.MULTILINE))
    assert settings["workers"] == "7", "a --workers flag in CMD would override WEB_CONCURRENCY"
    assert (settings["worker_class"], settings["threads"]) == ("gthread", "2")


def image_environment() -> dict[str, str]:
    """The variables the Dockerfile's final stage sets with ENV (every ENV line after the last FROM)."""
    final_stage = re.split(r"^FROM .*$", DOCKERFILE, flags=re.MULTILINE)[-1]
    text = re.sub(r"\\\n", " ", final_stage)  # join continued lines
    env = {}
    for line in re.findall(r"^ENV (.*)$", text, flags=re.MULTILINE):
        env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def start_like_the_image(tmp_path, **variables) -> subprocess.CompletedProcess:
    """Load the settings with the image's environment plus `variables`, and nothing from this machine's settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "P2P_", "SECURE_")) and key not in ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS")
    }
    image = image_environment()
    env.update({key: value for key, value in image.items() if key != "PATH"})
    env.update(P2P_VAR_DIR=str(tmp_path), LOG_LEVEL="WARNING", **variables)
    code = "import django; django.setup(); from django.conf import settings; print('DEBUG', settings.DEBUG)"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_image_is_production_by_default_and_refuses_to_start_without_its_keys(tmp_path):
    assert image_environment().get("DEBUG") == "0"
    result = start_like_the_image(tmp_path)
    assert result.returncode != 0, result.stdout
    assert (
        "ImproperlyConfigured: Production settings need SECRET_KEY, P2P_FERNET_KEYS, P2P_TOKEN_PEPPERS in the "
        "environment." in result.stderr
    )
    # A SECRET_KEY alone is not enough: each key still missing is named.
    partial = start_like_the_image(tmp_path, SECRET_KEY=secrets.token_urlsafe(64))
    assert partial.returncode != 0
    assert "Production settings need P2P_FERNET_KEYS, P2P_TOKEN_PEPPERS in the environment." in partial.stderr


def test_the_image_starts_in_production_mode_once_given_its_keys(tmp_path):
    result = start_like_the_image(
        tmp_path,
        SECRET_KEY=secrets.token_urlsafe(64),
        P2P_FERNET_KEYS=Fernet.generate_key().decode(),
        P2P_TOKEN_PEPPERS=f"2026={secrets.token_urlsafe(32)}",
        ALLOWED_HOSTS="p2p.example.com",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "DEBUG False"
