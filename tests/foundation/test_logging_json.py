"""LOG_FORMAT=json: one JSON object per line, naming the request, person, token and promotion where there is one."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client

from ci_integrations.services.actors import Actor
from ci_integrations.services.tokens import token_create
from p2p_portal.logging_json import JsonFormatter, log_context

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lines():
    """Lines the django.request logger writes while the test runs, formatted as JSON."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def record(message: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    return logging.LogRecord("ci_integrations.test", logging.WARNING, __file__, 1, message, args, exc_info, **extra)


def test_a_line_is_one_json_object_with_time_level_logger_and_message():
    text = JsonFormatter().format(record("copied %s\nin %d s", "sha256:abc", 3))
    assert "\n" not in text
    line = json.loads(text)
    assert line["level"] == "WARNING" and line["logger"] == "ci_integrations.test"
    assert line["message"] == "copied sha256:abc\nin 3 s"
    assert line["time"].endswith("+00:00") and "T" in line["time"]


def test_an_exception_goes_with_its_line_and_the_promotion_from_the_job_context():
    try:
        raise RuntimeError("registry went away")
    except RuntimeError:
        failure = sys.exc_info()
    with log_context(promotion=42):
        line = json.loads(JsonFormatter().format(record("copy failed", exc_info=failure)))
    assert line["promotion"] == 42 and "RuntimeError: registry went away" in line["exception"]
    assert "promotion" not in json.loads(JsonFormatter().format(record("later")))  # the context ended


def test_extra_fields_are_never_copied_out():
    line = json.loads(JsonFormatter().format(record("login", password="hunter2", token="p2p_secret")))
    assert "hunter2" not in json.dumps(line) and "p2p_secret" not in json.dumps(line)


@pytest.mark.django_db
def test_a_request_line_names_its_request_id_and_person(lines):
    client = Client()
    client.force_login(User.objects.create_user("release1"))
    client.get("/promotions/999999/", HTTP_X_REQUEST_ID="req-123")  # a 404, which django.request logs
    (line,) = lines()
    assert line["request_id"] == "req-123" and line["user"] == "release1" and line["promotion"] == 999999


@pytest.mark.django_db
def test_an_api_line_names_the_token_by_its_key_id_only(lines, settings):
    settings.P2P_API_TOKEN_RATE = "100000/minute"
    user = User.objects.create_user("ci-owner")
    token, plain = token_create(name="laptop", kind="personal", user=user, actor=Actor.for_user(user))
    Client().get("/api/v1/promotions/999999/", HTTP_AUTHORIZATION=f"Bearer {plain}")
    (line,) = lines()
    assert line["token"] == token.key_id and line["user"] == "ci-owner" and line["promotion"] == 999999
    assert plain.split("_")[2] not in json.dumps(line)  # the secret part of the token


def test_the_setting_switches_the_console_to_json_and_refuses_other_values():
    code = "import logging, django; django.setup(); logging.getLogger('ci_integrations').warning('hello %s', 'there')"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "p2p_portal.settings", "LOG_FORMAT": "json"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    mine = [json.loads(line) for line in done.stderr.splitlines() if '"ci_integrations"' in line]
    assert mine and mine[0]["message"] == "hello there", done.stderr
    env["LOG_FORMAT"] = "xml"
    refused = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "LOG_FORMAT must be plain or json" in refused.stderr
