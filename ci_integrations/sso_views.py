"""Single sign-on pages: the start of a sign-in at the provider, its answer, and signing out of both.

Thin: services/oidc_relying_party.py speaks the protocol and services/sso.py decides who the person is. Every failure
is a page that says what is wrong (with the status it deserves), never a 500, and never shows or logs a token.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from ci_integrations.services.identity import SESSION_SIGNED_IN_AT, SESSION_SIGNED_IN_WITH
from ci_integrations.services.oidc_relying_party import (
    SignOnFailed,
    sso_authorization_url,
    sso_complete,
    sso_enabled,
    sso_logout_url,
)
from ci_integrations.services.sso import sso_sign_in

log = logging.getLogger(__name__)
# The ID token of an SSO sign-in, kept in the (server-side) session for RP-initiated logout's id_token_hint.
ID_TOKEN = "p2p_oidc_id_token"
BACKEND = "p2p_portal.auth_backends.LocalPasswordBackend"


def _safe_next(request: HttpRequest, value: str) -> str:
    allowed = url_has_allowed_host_and_scheme(
        value, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return value if value and allowed else reverse(settings.LOGIN_REDIRECT_URL)


def _failure(request: HttpRequest, exc: SignOnFailed) -> HttpResponse:
    log.warning("single sign-on failed: %s (%s)", exc.code, exc.message)
    context = {"message": exc.message, "code": exc.code, "provider": settings.P2P_OIDC_NAME}
    return render(request, "registration/sso_error.html", context, status=exc.http_status)


@never_cache
@require_GET
def sso_start(request: HttpRequest) -> HttpResponse:
    """Straight to the provider (no page in between); `fresh=1` makes it ask for the person's credentials again."""
    if not sso_enabled():
        raise Http404("Single sign-on is not configured.")
    try:
        url = sso_authorization_url(
            session=request.session,
            redirect_uri=request.build_absolute_uri(reverse("sso_callback")),
            next_url=_safe_next(request, request.GET.get("next", "")),
            fresh=request.GET.get("fresh") == "1",
        )
    except SignOnFailed as exc:
        return _failure(request, exc)
    return HttpResponseRedirect(url)


@never_cache
@require_GET
def sso_callback(request: HttpRequest) -> HttpResponse:
    """The provider's answer: check it, sign the person in and go where they were going."""
    if not sso_enabled():
        raise Http404("Single sign-on is not configured.")
    try:
        sign_on = sso_complete(session=request.session, params=request.GET.dict())
        user = sso_sign_in(sign_on=sign_on, request_id=getattr(request, "request_id", ""))
    except SignOnFailed as exc:
        return _failure(request, exc)
    login(request, user, backend=BACKEND)
    request.session[SESSION_SIGNED_IN_AT] = timezone.now().isoformat()
    request.session[SESSION_SIGNED_IN_WITH] = "sso"
    request.session[ID_TOKEN] = sign_on.id_token
    return HttpResponseRedirect(_safe_next(request, sign_on.next_url))


class SignOutView(auth_views.LogoutView):
    """Django's sign-out (POST only), then, for a single sign-on with a provider that supports RP-initiated logout,
    on to the provider's end-session endpoint so that its session ends too."""

    def post(self, request, *args, **kwargs):
        id_token = request.session.get(ID_TOKEN, "")
        with_provider = request.session.get(SESSION_SIGNED_IN_WITH) == "sso" and sso_enabled()
        response = super().post(request, *args, **kwargs)
        if with_provider:
            url = sso_logout_url(
                id_token=id_token, post_logout_redirect_uri=request.build_absolute_uri(reverse("login"))
            )
            if url:
                return HttpResponseRedirect(url)
        return response
