"""GET /metrics: the Prometheus text format, for a scraper holding P2P_METRICS_TOKEN or calling from an address in
P2P_METRICS_ALLOWED_IPS. Off (404) when neither is set, so a portal never exposes its figures by default."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ci_integrations.metrics import PortalCollector
from p2p_portal.client_address import client_address

REGISTRY = CollectorRegistry(auto_describe=False)  # only the portal's own metrics, not this process's
REGISTRY.register(PortalCollector())


def _allowed_address(request: HttpRequest) -> bool:
    """Whether the client (as P2P_TRUSTED_PROXIES lets us see it) is in P2P_METRICS_ALLOWED_IPS."""
    text = client_address(request)
    try:
        address = ipaddress.ip_address(text or "")
    except ValueError:
        return False
    return any(address.version == net.version and address in net for net in settings.P2P_METRICS_ALLOWED_IPS)


def _bearer_matches(request: HttpRequest) -> bool:
    """Whether the request carries `Authorization: Bearer <P2P_METRICS_TOKEN>` (compared in constant time)."""
    token = settings.P2P_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """The metrics, to a caller with the token or from an allowed address: 401 without the token where one is set
    (so the scraper knows to send it), 403 from any other address when only addresses are allowed."""
    token, networks = settings.P2P_METRICS_TOKEN, settings.P2P_METRICS_ALLOWED_IPS
    if not token and not networks:
        raise Http404("Metrics are off: set P2P_METRICS_TOKEN or P2P_METRICS_ALLOWED_IPS.")
    if not (_bearer_matches(request) or (networks and _allowed_address(request))):
        if token:
            response = HttpResponse("A metrics token is needed.\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
        return HttpResponse("This address may not read the metrics.\n", status=403, content_type="text/plain")
    # The format the scraper asks for (Prometheus prefers OpenMetrics), else the classic text format.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encode(REGISTRY), content_type=content_type)
