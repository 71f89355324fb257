"""The `p2p` CLI without P2P_TOKEN: it exchanges the CI job's OIDC ID token (GitHub Actions' token service, or
P2P_ID_TOKEN) for a short-lived CI token, end to end against the live server and a local issuer."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ci_integrations.models import Artifact, AuditEntry, CiIdentity
from ci_integrations.services.oidc_keys import oidc_keys_forget
from tests.api.test_cli import p2p
from tests.support.oidc_issuer import start_issuer

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def issuer(world):
    oidc_keys_forget()
    server = start_issuer()
    CiIdentity.objects.create(
        integration=world.shop,
        issuer=server.url,
        audience="p2p-portal",
        claims={"repository": "acme/payments-api"},
        scopes=["read", "artifacts:write"],
    )
    yield server
    server.stop()
    oidc_keys_forget()


class ActionsTokenService:
    """GitHub Actions' ID token service as a job sees it: GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=… with the
    request token as Bearer, answering {"value": <ID token>}."""

    def __init__(self, issuer):
        self.asked: list[tuple[str, str]] = []  # (audience, Authorization)
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                audience = query.get("audience", [""])[0]
                service.asked.append((audience, self.headers.get("Authorization", "")))
                raw = json.dumps({"value": issuer.sign(aud=audience)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token?api-version=2.0"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_in_github_actions_the_cli_asks_for_an_id_token_and_exchanges_it(world, live_server, issuer):
    service = ActionsTokenService(issuer)
    try:
        digest = world.push(world.dev, "2.0.0")
        pushed = p2p(
            live_server,
            "",
            "push",
            world.shop.name,
            "dev",
            f"{world.dev.image_name}:2.0.0",
            ACTIONS_ID_TOKEN_REQUEST_URL=service.url,
            ACTIONS_ID_TOKEN_REQUEST_TOKEN="request-token-of-this-job",
        )
    finally:
        service.stop()
    assert pushed.returncode == 0, pushed.stderr
    assert digest in pushed.stdout
    assert service.asked == [("p2p-portal", "Bearer request-token-of-this-job")]
    assert Artifact.objects.filter(integration=world.shop, digest=digest).exists()
    registered = AuditEntry.objects.filter(action__startswith="artifact.").order_by("-id").first()
    assert registered.actor == f"ci:oidc {world.shop.name}"


def test_elsewhere_the_cli_exchanges_p2p_id_token_for_the_audience_it_was_made_for(world, live_server, issuer):
    digest = world.push(world.dev, "2.1.0")
    pushed = p2p(
        live_server, "", "push", world.shop.name, "dev", f"{world.dev.image_name}:2.1.0", P2P_ID_TOKEN=issuer.sign()
    )
    assert pushed.returncode == 0, pushed.stderr
    assert digest in pushed.stdout


def test_a_refused_id_token_is_one_line_naming_the_check(world, live_server, issuer):
    refused = p2p(live_server, "", "status", "1", P2P_ID_TOKEN=issuer.sign(repository="mallory/other"))
    assert refused.returncode == 1
    assert refused.stderr.startswith("p2p status: the portal refused this job's ID token: claims: ")
    assert "eyJ" not in refused.stderr


def test_without_a_token_or_an_id_token_the_cli_says_what_to_set(world, live_server):
    missing = p2p(live_server, "", "status", "1")
    assert missing.returncode == 64
    assert "P2P_TOKEN is not set" in missing.stderr and "P2P_ID_TOKEN" in missing.stderr
    assert "id-token: write" in missing.stderr
