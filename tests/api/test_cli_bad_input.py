"""The `p2p` CLI given bad input: usage errors, bad environment, malformed arguments and answers that are not the
portal's JSON. Each is one line on stderr (argparse's usage text for argparse's own errors), a non-zero exit, never a
traceback and never the token. It runs as CI runs it, a subprocess, against a small stand-in server that records what
it was sent, so "nothing was sent" can be checked too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CLI = Path(__file__).resolve().parents[2] / "ci_integrations" / "cli" / "p2p.py"
TOKEN = "p2p_stubtoken_do_not_print_0123456789"
EXIT_TIMEOUT, EXIT_USAGE = 2, 64

RUNNING = {"id": 7, "integration": "shop", "from_env": "dev", "to_env": "staging", "state": "running"}
ARTIFACT = {"id": 3, "integration": "shop", "env": "dev", "tag": "1.0", "digest": "sha256:" + "a" * 64, "created": True}
PROXY_ERROR_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>"
    b"\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)


@dataclass
class Stub:
    """Answers by path (or a default), in order, the last one repeating; records every request."""

    url: str = ""
    answers: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)

    def answer(self, status: int, body, *, path: str = "*", content_type: str = "application/json", **headers):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers.setdefault(path, []).append(Answer(status, raw, content_type, headers))

    def next_answer(self, path: str) -> Answer:
        queue = self.answers.get(path) or self.answers.get("*") or [Answer(404, b'{"error": {"code": "not_found"}}')]
        return queue.pop(0) if len(queue) > 1 else queue[0]


@contextmanager
def serving_stub():
    """A Stub answering on its own loopback port while the block runs."""
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def handle_one(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            state.requests.append((self.command, self.path, dict(self.headers), body))
            answer = state.next_answer(urlsplit(self.path).path)
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(answer.body)

        do_GET = do_POST = handle_one

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def stub():
    with serving_stub() as state:
        yield state


def p2p(stub: Stub, *args: str, **env) -> subprocess.CompletedProcess:
    """Run the CLI; an env value of None leaves that variable unset."""
    environment = {"PATH": os.environ.get("PATH", ""), "P2P_URL": stub.url, "P2P_TOKEN": TOKEN, **env}
    environment = {key: value for key, value in environment.items() if value is not None}
    command = [sys.executable, "-I", str(CLI), *args]
    # A bounded run: without a check on durations, a bad one could make `--wait` poll for ever.
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=30)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *, token: str = TOKEN) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stdout == "", result.stdout
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("p2p "), result.stderr
    for part in token.split():
        assert part not in result.stderr
    return result.stderr


# --- 1: usage errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["statu", "7"],
        ["status"],
        ["status", "seven"],
        ["status", "7", "--bogus"],
        ["check", "7", "functional", "maybe"],
        [],
        ["--json", "statu", "7"],
        ["status", "7", "--wait", "--json", "--timeout"],
    ],
    ids=["typo", "missing-id", "bad-id", "unknown-option", "bad-choice", "no-command", "json", "flag-without-value"],
)
def test_usage_error_exits_64_with_argparse_message_while_wait_timeout_stays_2(stub, argv):
    stub.answer(200, RUNNING)
    timed_out = p2p(stub, "status", "7", "--wait", "--timeout", "0.3", "--interval", "0.1")
    assert timed_out.returncode == EXIT_TIMEOUT and "timed out" in timed_out.stdout
    sent = len(stub.requests)

    usage = p2p(stub, *argv)
    assert usage.returncode == EXIT_USAGE, usage.stderr
    assert usage.stdout == ""  # --json too: stdout only ever holds the portal's JSON
    assert usage.stderr.startswith("usage: p2p") and "error: " in usage.stderr.splitlines()[-1]
    assert "Traceback" not in usage.stderr
    assert len(stub.requests) == sent


# --- 2: durations from the environment and flags ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("P2P_WAIT_TIMEOUT", "abc"),
        ("P2P_WAIT_TIMEOUT", "0"),
        ("P2P_WAIT_TIMEOUT", "-30"),
        ("P2P_WAIT_TIMEOUT", "inf"),
        ("P2P_WAIT_INTERVAL", "5s"),
        ("P2P_WAIT_INTERVAL", "0"),
        ("P2P_WAIT_INTERVAL", "nan"),
        ("P2P_HTTP_TIMEOUT", "thirty"),
        ("P2P_HTTP_TIMEOUT", "0"),
        ("P2P_HTTP_TIMEOUT", "-1"),
        ("--timeout", "abc"),
        ("--timeout", "-5"),
        ("--interval", "0"),
        ("--interval", "nan"),
    ],
)
def test_bad_duration_is_a_one_line_usage_error_naming_it_and_its_value(stub, name, value):
    stub.answer(200, RUNNING)
    if name.startswith("--"):
        result = p2p(stub, "status", "7", "--wait", name, value)
    else:
        result = p2p(stub, "status", "7", "--wait", **{name: value})
    stderr = assert_one_line_error(result, EXIT_USAGE)
    assert f"{name} is {value!r}" in stderr and "greater than 0" in stderr
    assert stub.requests == []


def test_wait_variables_are_read_only_by_waiting_commands_flags_override_them_and_empty_means_unset(stub):
    stub.answer(201, ARTIFACT, path="/api/v1/integrations/shop/artifacts/")
    stub.answer(200, RUNNING, path="/api/v1/promotions/7/")
    pushed = p2p(stub, "push", "shop", "dev", "x/shop:1.0", P2P_WAIT_TIMEOUT="abc", P2P_WAIT_INTERVAL="abc")
    assert pushed.returncode == 0 and pushed.stdout.startswith("registered"), pushed.stderr

    flag_wins = p2p(stub, "status", "7", "--wait", "--timeout", "0.3", "--interval", "0.1", P2P_WAIT_TIMEOUT="abc")
    assert flag_wins.returncode == EXIT_TIMEOUT, flag_wins.stderr

    empty = p2p(stub, "status", "7", P2P_WAIT_TIMEOUT="", P2P_WAIT_INTERVAL="", P2P_HTTP_TIMEOUT="")
    assert empty.returncode == 0 and "running" in empty.stdout, empty.stderr
    fractional = p2p(stub, "status", "7", P2P_HTTP_TIMEOUT="2.5")
    assert fractional.returncode == 0, fractional.stderr


# --- 3: bad configuration and arguments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"P2P_URL": None}, "P2P_URL is not set"),
        ({"P2P_URL": ""}, "P2P_URL is not set"),
        ({"P2P_URL": "p2p.example.com"}, "P2P_URL (or --portal-url) is 'p2p.example.com'"),
        ({"P2P_URL": "http://p2p.example.com:https"}, "P2P_URL (or --portal-url) is"),
        ({"P2P_URL": "ftp://p2p.example.com"}, "P2P_URL (or --portal-url) is"),
        ({"P2P_URL": "http://p2p example.com"}, "P2P_URL (or --portal-url) is"),
        ({"P2P_TOKEN": None}, "P2P_TOKEN is not set"),
        ({"P2P_TOKEN": "   "}, "P2P_TOKEN is not set"),
        ({"P2P_TOKEN": "p2p_first_half\np2p_second_half"}, "P2P_TOKEN (or --token) holds spaces"),
        ({"P2P_TOKEN": "p2p_with a_space"}, "P2P_TOKEN (or --token) holds spaces"),
    ],
)
def test_missing_or_malformed_url_or_token_is_a_usage_error_that_never_shows_the_token(stub, env, named):
    result = p2p(stub, "status", "7", **env)
    stderr = assert_one_line_error(result, EXIT_USAGE, token=env.get("P2P_TOKEN") or TOKEN)
    assert named in stderr
    assert stub.requests == []


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["push", "shop", "dev", "registry.example.com:5000/team/shop"], "has no tag: write IMAGE:TAG"),
        (["push", "shop", "dev", "x/shop:"], "has no tag"),
        (["push", "shop", "dev", "x/shop:1.0", "--meta", "team"], "--meta 'team': expected KEY=VALUE"),
        (["push", "shop", "dev", "x/shop:1.0", "--meta", "=web"], "--meta '=web'"),
        (["check", "shop", "functional", "passed"], "artifact 'shop': give an id"),
        (["promote", "x/shop:1.0"], "give --dest-stage"),
        (["promote", "x/shop", "--dest-stage", "prod"], "has no tag or digest"),
        (["approve", "7", "--idempotency-key", "two words"], "--idempotency-key 'two words'"),
        (["approve", "7", "--idempotency-key", "k" * 256], "1 to 255 printable ASCII"),
    ],
)
def test_malformed_argument_is_a_one_line_usage_error_and_sends_nothing(stub, argv, named):
    stderr = assert_one_line_error(p2p(stub, *argv), EXIT_USAGE)
    assert named in stderr
    assert stub.requests == []


COMMANDS = [
    ["status", "7"],
    ["status", "7", "--wait"],
    ["job", "7"],
    ["push", "shop", "dev", "x/shop:1.0"],
    ["import", "shop", "build.example.com/shop:1.0"],
    ["check", "shop:1.0", "functional", "passed"],
    ["promote", "x/shop:1.0", "--dest-stage", "prod"],
    ["rollback", "shop", "prod", "3", "--reason", "broken"],
    ["login", "shop", "dev"],
    ["approve", "7"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv[:2]))
@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
def test_html_page_where_the_portal_should_answer_is_a_one_line_error(stub, argv, json_flag):
    stub.answer(200, PROXY_ERROR_PAGE, content_type="text/html")
    stderr = assert_one_line_error(p2p(stub, *json_flag, *argv), 1)
    assert f"{stub.url} answered HTTP 200 text/html '502 Bad Gateway'" in stderr and "is P2P_URL the portal" in stderr


@pytest.mark.parametrize("status", [401, 404, 500])
def test_html_error_page_from_a_proxy_is_one_line_with_its_title(stub, status):
    stub.answer(status, PROXY_ERROR_PAGE, content_type="text/html; charset=utf-8")
    for json_flag in ([], ["--json"]):
        stderr = assert_one_line_error(p2p(stub, *json_flag, "push", "shop", "dev", "x/shop:1.0"), 1)
        assert f"answered HTTP {status} text/html '502 Bad Gateway'" in stderr and "<" not in stderr


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"[]", "application/json", "HTTP 200 application/json '[]', not a JSON object"),
        (b"", "text/plain", "HTTP 200 text/plain (empty), not a JSON object"),
        (b'{"detail": "welcome to another service"}', "application/json", "unexpected KeyError: 'id'"),
    ],
    ids=["json-list", "empty", "another-services-json"],
)
def test_an_answer_that_is_not_the_portals_json_is_a_one_line_error(stub, body, content_type, expected):
    stub.answer(200, body, content_type=content_type)
    stderr = assert_one_line_error(p2p(stub, "status", "7"), 1)
    assert expected in stderr


def test_retry_after_given_as_an_http_date_is_honoured_not_a_crash(stub):
    stub.answer(
        429, {"error": {"code": "throttled"}}, path="/api/v1/promotions/7/", Retry_After="Wed, 21 Oct 2015 07:28:00 GMT"
    )
    stub.answer(200, RUNNING, path="/api/v1/promotions/7/")
    result = p2p(stub, "status", "7")
    assert result.returncode == 0 and "running" in result.stdout, result.stderr
    assert len(stub.requests) == 2


def test_integration_name_with_a_slash_stays_one_url_path_segment(stub):
    stub.answer(404, {"error": {"code": "not_found", "message": "No such integration."}})
    result = p2p(stub, "push", "shop/../../promotions", "dev", "x/shop:1.0")
    assert_one_line_error(result, 1)
    assert stub.requests[0][1] == "/api/v1/integrations/shop%2F..%2F..%2Fpromotions/artifacts/"


def test_login_prints_docker_login_for_a_basic_answer_quoting_the_password(stub):
    # ECR and Artifact Registry answers are a username and password for one repository.
    answer = {"registry": "123.dkr.ecr.eu-west-1.amazonaws.com", "type": "basic", "username": "AWS"}
    answer.update(password="pw'with quote", token=None, scope="arn:…", expires_at="2030-01-01T00:00:00+00:00")
    stub.answer(200, answer, path="/api/v1/integrations/shop/push-credentials/")
    login = p2p(stub, "login", "shop", "dev")
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip() == (
        "printf '%s' 'pw'\"'\"'with quote' | docker login --username AWS --password-stdin "
        "123.dkr.ecr.eu-west-1.amazonaws.com"
    )
