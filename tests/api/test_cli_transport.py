"""The `p2p` CLI's token only ever goes to P2P_URL: a redirect is reported and never followed (so the token cannot
reach another host, scheme or port), and plain http:// is refused unless the host is this machine.

Real local HTTP servers stand in for the portal and for wherever a redirect points, and record what reached them.
"""

from __future__ import annotations

import pytest

from tests.api.test_cli_bad_input import RUNNING, TOKEN, assert_one_line_error, p2p, serving_stub

EXIT_FAILED, EXIT_USAGE = 1, 64
GET = ["status", "7"]
POST = ["push", "shop", "dev", "x/shop:1.0"]


@pytest.fixture
def portal():
    with serving_stub() as state:
        yield state


@pytest.fixture
def elsewhere():
    """A second server on another port: where a redirect points."""
    with serving_stub() as state:
        yield state


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("argv", [GET, POST], ids=["get", "post"])
def test_a_redirect_to_another_port_is_reported_and_the_token_never_reaches_it(portal, elsewhere, status, argv):
    elsewhere.answer(200, RUNNING)
    portal.answer(status, b"", Location=f"{elsewhere.url}/api/v1/promotions/7/?signature=do-not-print")

    stderr = assert_one_line_error(p2p(portal, *argv), EXIT_FAILED)

    assert elsewhere.requests == [], "the redirect was followed: the token went to another port"
    assert len(portal.requests) == 1 and portal.requests[0][2]["Authorization"] == f"Bearer {TOKEN}"
    assert f"answered HTTP {status}, a redirect to '{elsewhere.url}/api/v1/promotions/7/'" in stderr
    assert "does not follow redirects" in stderr and "signature" not in stderr


def test_a_redirect_within_the_portal_is_reported_too_not_followed(portal):
    # Following even a same-origin redirect would turn a POST into a GET without its body.
    portal.answer(302, b"", Location="/somewhere-else/")
    stderr = assert_one_line_error(p2p(portal, *POST), EXIT_FAILED)
    assert len(portal.requests) == 1
    assert f"a redirect to '{portal.url}/somewhere-else/'" in stderr


@pytest.mark.parametrize(
    "url",
    ["http://p2p.example.com", "http://10.0.0.5:8000", "http://[2001:db8::1]:8000", "http://127.0.0.1.example.com"],
)
def test_plain_http_to_a_host_that_is_not_this_machine_is_a_usage_error_and_sends_nothing(portal, url):
    # The stub is also the HTTP proxy, so a request to any host would reach it and be recorded.
    result = p2p(portal, *GET, P2P_URL=url, http_proxy=portal.url, P2P_HTTP_TIMEOUT="2")
    stderr = assert_one_line_error(result, EXIT_USAGE)
    assert f"P2P_URL (or --portal-url) is {url!r}: plain http:// is only allowed to this machine" in stderr
    assert "use https://" in stderr
    assert portal.requests == [], "the token was sent over plain HTTP"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.2", "[::1]"])
def test_plain_http_to_this_machine_is_allowed(portal, host):
    portal.answer(200, RUNNING)
    result = p2p(portal, *GET, P2P_URL=f"http://{host}:9", http_proxy=portal.url)
    assert result.returncode == 0, result.stderr
    assert "promotion 7 shop dev → staging: running" in result.stdout
    assert [request[1] for request in portal.requests] == [f"http://{host}:9/api/v1/promotions/7/"]
