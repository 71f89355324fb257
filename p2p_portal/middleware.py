"""Cross-cutting HTTP concerns: a request id for the audit trail and the Content-Security-Policy header."""

import re
import uuid
from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Give every request an id (taken from X-Request-ID when well-formed) that audit entries record."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        return response


@lru_cache(maxsize=8)
def content_security_policy(policy: str, issuer: str) -> str:
    """`policy`, with the single sign-on provider's origin added to form-action: signing out is a form whose answer
    redirects to the provider's end-session endpoint, and browsers hold redirects after a form to form-action too."""
    if not issuer:
        return policy
    parts = urlsplit(issuer)
    return policy.replace("form-action 'self'", f"form-action 'self' {parts.scheme}://{parts.netloc}")


class ContentSecurityPolicyMiddleware:
    """Set a strict CSP: the portal loads only its own scripts and styles."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.setdefault(
            "Content-Security-Policy",
            content_security_policy(settings.CONTENT_SECURITY_POLICY, settings.P2P_OIDC_ISSUER),
        )
        return response
