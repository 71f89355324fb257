"""Notification pages: a person's choice of emails, and the webhooks' delivery history for platform admins."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from ci_integrations import selectors
from ci_integrations.forms import NotificationPreferenceForm
from ci_integrations.models import NotificationPreference, Webhook, WebhookDelivery
from ci_integrations.services.actors import Actor
from ci_integrations.services.errors import ServiceError
from ci_integrations.services.notifications import (
    email_enabled,
    notification_preferences_of,
    notification_preferences_set,
)
from ci_integrations.services.webhooks import webhook_delivery_retry


def platform_admins_only(view: Callable) -> Callable:
    """Sign-in required, then staff (the platform admins), else 403."""

    @wraps(view)
    @login_required
    def wrapper(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("Only platform admins see webhooks.")
        return view(request, *args, **kwargs)

    return wrapper


@require_http_methods(["GET", "POST"])
@login_required
def notification_preferences(request: HttpRequest) -> HttpResponse:
    """Which kinds of email I get."""
    muted = notification_preferences_of(request.user)
    initial = {"wanted": [kind for kind in NotificationPreference.KINDS if kind not in muted]}
    form = NotificationPreferenceForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            notification_preferences_set(user=request.user, muted=form.muted)
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, "Your email choices are saved.")
            return redirect("notification_preferences")
    context = {"form": form, "email_on": email_enabled(), "address": request.user.email}
    return render(request, "ci_integrations/notification_preferences.html", context)


@require_http_methods(["GET"])
@platform_admins_only
def webhooks(request: HttpRequest) -> HttpResponse:
    return render(request, "ci_integrations/webhooks.html", {"webhooks": selectors.webhooks_with_outcomes()})


@require_http_methods(["GET"])
@platform_admins_only
def webhook_deliveries(request: HttpRequest, pk: int) -> HttpResponse:
    webhook = get_object_or_404(Webhook.objects.select_related("integration"), pk=pk)
    context = {"webhook": webhook, "deliveries": selectors.webhook_deliveries_recent(webhook)}
    return render(request, "ci_integrations/webhook_deliveries.html", context)


@require_POST
@platform_admins_only
def webhook_delivery_retry_view(request: HttpRequest, pk: int) -> HttpResponse:
    delivery = get_object_or_404(WebhookDelivery.objects.select_related("webhook"), pk=pk)
    try:
        webhook_delivery_retry(delivery=delivery, actor=Actor.from_request(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Delivery {delivery.pk} is being tried once more.")
    return redirect("webhook_deliveries", pk=delivery.webhook_id)
