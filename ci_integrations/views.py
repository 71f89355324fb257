"""UI views: thin; they parse input, call one service or selector and render.

Buttons a user may not use are hidden by the templates, and every action view checks the same permission again;
the services then enforce policy (four-eyes, approver group, freeze windows) and their messages are shown as is.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import wraps

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from ci_integrations import selectors
from ci_integrations.forms import (
    AuditFilterForm,
    CancelForm,
    DecisionForm,
    EmergencyStopForm,
    FreezeWindowForm,
    PromoteForm,
    RollbackForm,
    TokenCreateForm,
)
from ci_integrations.models import (
    ApiToken,
    Arrival,
    Artifact,
    Bucket,
    EmergencyStop,
    FreezeWindow,
    Integration,
    PersonIdentity,
    Promotion,
)
from ci_integrations.services import approvals as approval_service
from ci_integrations.services import promotions as promotion_service
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_export_csv, audit_export_jsonl
from ci_integrations.services.audit_checkpoints import audit_signing_status
from ci_integrations.services.audit_verification import audit_verification_start, audit_verification_status
from ci_integrations.services.diffs import preview_diff, promotion_diff
from ci_integrations.services.emergency_stop import emergency_stop_pull, emergency_stop_release
from ci_integrations.services.errors import ServiceError
from ci_integrations.services.freeze import freeze_window_create, freeze_window_end
from ci_integrations.services.identity import SESSION_SIGNED_IN_AT, SESSION_SIGNED_IN_WITH, sign_in_record
from ci_integrations.services.policy import promotion_evaluate, promotion_reevaluate
from ci_integrations.services.preflight import promotion_preflight
from ci_integrations.services.teams import sees_integration
from ci_integrations.services.tokens import PERSONAL_SCOPES, token_create, token_revoke

REQUEST = "ci_integrations.request_promotion"
APPROVE = "ci_integrations.approve_promotion"
AUDIT = "ci_integrations.export_auditentry"
FREEZE = "ci_integrations.add_freezewindow"
STOP = "ci_integrations.use_emergency_stop"
CI_TOKENS = "ci_integrations.add_ci_token"
# htmx stops polling when a response has this status (https://htmx.org/attributes/hx-trigger/).
HTMX_STOP_POLLING = 286
SIGNED_IN_AT = SESSION_SIGNED_IN_AT
SIGNED_IN_WITH = SESSION_SIGNED_IN_WITH
FRESH_SIGN_IN_FROM = 2  # approvals a step needs before approving into it asks for a recent sign-in


class SignInView(auth_views.LoginView):
    """The sign-in page: "Sign in with <provider>" when single sign-on is configured, and the password form unless
    P2P_LOCAL_LOGIN is 0 (then only at /login/?local=1, for superusers: break-glass). A password sign-in is recorded
    (identity.sign_in_record) and remembered with its time: approving into high-stakes steps needs a recent one."""

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["sso_name"] = settings.P2P_OIDC_NAME if settings.P2P_OIDC_ISSUER else ""
        context["local_login"] = (
            settings.P2P_LOCAL_LOGIN or self.request.GET.get("local") == "1" or self.request.method == "POST"
        )
        context["local_login_off"] = not settings.P2P_LOCAL_LOGIN
        return context

    def form_valid(self, form):
        response = super().form_valid(form)
        sign_in_record(
            form.get_user(), method=PersonIdentity.Method.LOCAL, request_id=getattr(self.request, "request_id", "")
        )
        self.request.session[SIGNED_IN_AT] = timezone.now().isoformat()
        self.request.session[SIGNED_IN_WITH] = PersonIdentity.Method.LOCAL
        return response


def _signed_in_with_sso(request: HttpRequest) -> bool:
    return bool(settings.P2P_OIDC_ISSUER) and request.session.get(SIGNED_IN_WITH) == PersonIdentity.Method.SSO


def fresh_sign_in_needed(request: HttpRequest, promotion: Promotion) -> str | None:
    """Why approving `promotion` needs a fresh sign-in (the password again, or the identity provider again for a
    single sign-on), or None.

    A step that needs two or more approvals guards something that matters (prod, usually); a session left open on a
    shared screen must not approve into it. So the last sign-in must be at most P2P_REAUTH_MINUTES old.
    """
    if promotion.required_approvals < FRESH_SIGN_IN_FROM:
        return None
    limit = timedelta(minutes=settings.P2P_REAUTH_MINUTES)
    try:
        signed_in_at = datetime.fromisoformat(request.session.get(SIGNED_IN_AT, ""))
    except (TypeError, ValueError):
        signed_in_at = None
    if signed_in_at is not None and timezone.now() - signed_in_at <= limit:
        return None
    again = (
        f"sign in again with {settings.P2P_OIDC_NAME}" if _signed_in_with_sso(request) else "enter your password again"
    )
    minutes = settings.P2P_REAUTH_MINUTES
    return f"approving into {promotion.to_bucket.env} needs a sign-in from the last {minutes} minutes: {again}"


def _confirm_sign_in(request: HttpRequest, form: DecisionForm, promotion: Promotion) -> bool:
    """True when no fresh sign-in is needed, or the password just typed is right (which makes the sign-in fresh).
    A wrong password counts as a failed sign-in for the lockout, like the sign-in page's. A single sign-on is made
    fresh at the provider instead (the panel links there), never with a password."""
    if fresh_sign_in_needed(request, promotion) is None:
        return True
    if _signed_in_with_sso(request):
        form.add_error(None, f"Sign in again with {settings.P2P_OIDC_NAME} to approve.")
        return False
    password = form.cleaned_data.get("password") or ""
    if password and authenticate(request, username=request.user.get_username(), password=password) == request.user:
        request.session[SIGNED_IN_AT] = timezone.now().isoformat()
        return True
    form.add_error("password", "That is not your password." if password else "Enter your password to approve.")
    return False


def shown_to(request: HttpRequest, integration: Integration, what: str):
    """`integration`, or a 404 when the person is not in the team that owns it: outsiders learn nothing, not even
    that it exists."""
    if not sees_integration(request.user, integration):
        raise Http404(what)
    return integration


def permission(perm: str) -> Callable:
    """Sign-in required, then `perm`, else 403: the server refuses what the page does not offer."""

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapper(request, *args, **kwargs):
            if not request.user.has_perm(perm):
                raise PermissionDenied(f"You need the {perm.split('.')[-1].replace('_', ' ')} permission.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness and database reachability, for load balancers and the container healthcheck."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"ok": True})


# --- read-only pages -------------------------------------------------------------------------------------------------


@require_GET
@login_required
def overview(request: HttpRequest) -> HttpResponse:
    matrix = selectors.integration_matrix(request.user, after=request.GET.get("after", "")[:63])
    waiting = selectors.approvals_waiting_for(
        request.user, limit=selectors.INBOX_PAGE_SIZE + 1, related=("integration", "to_bucket")
    )
    context = {
        "matrix": matrix,
        "waiting": waiting[: selectors.INBOX_PAGE_SIZE],
        "waiting_more": len(waiting) > selectors.INBOX_PAGE_SIZE,
        "failed": selectors.promotions_failed_recently(request.user),
        "failed_days": selectors.FAILED_RECENT_DAYS,
    }
    return render(request, "ci_integrations/overview.html", context)


def _int_param(request: HttpRequest, name: str) -> int | None:
    value = request.GET.get(name, "")
    return int(value) if value.isdigit() and len(value) < 19 else None


@require_GET
@login_required
def integration_page(request: HttpRequest, name: str) -> HttpResponse:
    try:
        detail = selectors.integration_detail(name=name, artifacts_before=_int_param(request, "before"))
    except Integration.DoesNotExist:
        raise Http404(f"No integration named {name!r}.") from None
    shown_to(request, detail.integration, f"No integration named {name!r}.")
    return render(request, "ci_integrations/integration.html", {"detail": detail})


@require_GET
@login_required
def artifact_page(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        detail = selectors.artifact_detail(pk=pk)
    except Artifact.DoesNotExist:
        raise Http404("No such artifact.") from None
    shown_to(request, detail.artifact.integration, "No such artifact.")
    return render(request, "ci_integrations/artifact.html", {"detail": detail})


@require_GET
@login_required
def promotion_page(request: HttpRequest, pk: int) -> HttpResponse:
    """The promotion page; an htmx poll of the same URL gets only the live part, and 286 once it is final."""
    if request.htmx and request.htmx.target == "live":
        try:
            promotion = selectors.promotion_progress(pk)
        except Promotion.DoesNotExist:
            raise Http404("No such promotion.") from None
        shown_to(request, promotion.integration, "No such promotion.")
        response = render(request, "ci_integrations/partials/promotion_live.html", {"promotion": promotion})
        if promotion.is_final:
            response.status_code = HTMX_STOP_POLLING
        return response
    try:
        promotion = selectors.promotion_detail(pk)
    except Promotion.DoesNotExist:
        raise Http404("No such promotion.") from None
    shown_to(request, promotion.integration, "No such promotion.")
    context = {"promotion": promotion, "timeline": selectors.promotion_timeline(pk)}
    return render(request, "ci_integrations/promotion.html", context)


def _decision_context(request: HttpRequest, promotion: Promotion, form: DecisionForm | None = None) -> dict:
    """The approval preview: the policy checklist, the target's current digest and whether this user may decide."""
    actor = Actor.from_request(request)
    try:
        evaluation = promotion_reevaluate(promotion=promotion, actor=actor)
    except ServiceError as exc:
        evaluation, evaluation_error = None, exc.message
    else:
        evaluation_error = ""
    block = None
    if request.user.has_perm(APPROVE):
        block = approval_service.promotion_approval_block(promotion=promotion, user=request.user)
    return {
        "promotion": promotion,
        "evaluation": evaluation,
        "evaluation_error": evaluation_error,
        "may_decide": request.user.has_perm(APPROVE) and block is None,
        # A freeze holds only the approval that would queue the copy; saying no stays possible.
        "may_reject": request.user.has_perm(APPROVE) and block is not None and block.kind == "freeze",
        # Not "block": inside {% block %} of a page that extends base.html, Django's templates take that name.
        "fresh_sign_in": fresh_sign_in_needed(request, promotion),
        "fresh_with_sso": _signed_in_with_sso(request),
        "why_not": (block.message if block else None)
        if request.user.has_perm(APPROVE)
        else "You are not in a role that approves promotions.",
        "form": form or DecisionForm(),
    }


@require_GET
@login_required
def approval_panel(request: HttpRequest, pk: int) -> HttpResponse:
    """The preview and the Approve/Reject form of one pending promotion.

    htmx loads it into the promotion page and the inbox, so those pages stay cheap; it runs the whole policy
    evaluation. Without htmx it is a page of its own.
    """
    try:
        promotion = selectors.promotion_for_decision(pk)
    except Promotion.DoesNotExist:
        raise Http404("No such promotion.") from None
    shown_to(request, promotion.integration, "No such promotion.")
    if promotion.state != Promotion.State.PENDING_APPROVAL:
        context = {"promotion": promotion}
        template = "ci_integrations/partials/decided.html"
    else:
        context = _decision_context(request, promotion)
        context["next_url"] = reverse("approvals") if request.GET.get("next") == "inbox" else ""
        template = "ci_integrations/partials/approval_panel.html"
    if not request.htmx:
        context["partial"] = template
        template = "ci_integrations/decide.html"
    return render(request, template, context)


@require_GET
@login_required
def approvals(request: HttpRequest) -> HttpResponse:
    mine = selectors.approvals_waiting_for(request.user)
    waiting_ids = {p.pk for p in mine}
    others = [p for p in selectors.promotions_pending(request.user) if p.pk not in waiting_ids]
    return render(request, "ci_integrations/approvals.html", {"mine": mine, "others": others})


@require_GET
@login_required
def promotion_diff_panel(request: HttpRequest, pk: int) -> HttpResponse:
    """What the promotion changes in its target; htmx loads it into the promotion page, the approval panel and the
    inbox, since it may read the registry."""
    try:
        promotion = selectors.promotion_detail(pk)
    except Promotion.DoesNotExist:
        raise Http404("No such promotion.") from None
    shown_to(request, promotion.integration, "No such promotion.")
    return render(request, "ci_integrations/partials/diff.html", {"diff": promotion_diff(promotion=promotion)})


@require_GET
@permission(REQUEST)
def preview_diff_panel(request: HttpRequest, pk: int, env: str) -> HttpResponse:
    """What promoting the artifact into `env` would change there: the promote preview loads it with htmx."""
    artifact = get_object_or_404(Artifact.objects.select_related("integration"), pk=pk)
    shown_to(request, artifact.integration, "No such artifact.")
    try:
        diff = preview_diff(artifact=artifact, to_env=env)
    except ServiceError as exc:
        raise Http404(exc.message) from None
    return render(request, "ci_integrations/partials/diff.html", {"diff": diff})


# --- promotion actions -----------------------------------------------------------------------------------------------


def _target_bucket(artifact: Artifact, env: str) -> Bucket:
    try:
        return Bucket.objects.select_related("current_arrival__artifact", "registry").get(
            integration_id=artifact.integration_id, env=env
        )
    except Bucket.DoesNotExist:
        raise Http404(f"{artifact.integration.name} has no environment {env!r}.") from None


@require_http_methods(["GET", "POST"])
@permission(REQUEST)
def promote(request: HttpRequest, pk: int, env: str) -> HttpResponse:
    """GET previews (policy checklist and preflight); POST confirms and creates the request."""
    artifact = get_object_or_404(Artifact.objects.select_related("integration"), pk=pk)
    shown_to(request, artifact.integration, "No such artifact.")
    target = _target_bucket(artifact, env)
    form = PromoteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            promotion = promotion_service.promotion_request(
                artifact=artifact,
                to_env=env,
                actor=Actor.from_request(request),
                tag=form.cleaned_data["tag"] or None,
                reason=form.cleaned_data["reason"],
                freeze_override_reason=form.cleaned_data["freeze_override_reason"],
                not_before=form.cleaned_data["not_before"],
            )
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Promotion #{promotion.pk} requested.")
            return redirect("promotion", pk=promotion.pk)
    return render(request, "ci_integrations/promote.html", _preview_context(request, artifact, target, form))


def _preview_context(request, artifact: Artifact, target: Bucket, form, *, rollback: bool = False) -> dict:
    actor = Actor.from_request(request)
    evaluation, evaluation_error = None, ""
    try:
        evaluation = promotion_evaluate(artifact=artifact, to_env=target.env, actor=actor, rollback=rollback)
    except ServiceError as exc:
        evaluation_error = exc.message
    preflight = None if rollback else promotion_preflight(artifact=artifact, to_env=target.env)
    return {
        "artifact": artifact,
        "target": target,
        "evaluation": evaluation,
        "evaluation_error": evaluation_error,
        "preflight": preflight,
        "form": form,
        "rollback": rollback,
        "may_override_freeze": request.user.has_perm("ci_integrations.override_freezewindow"),
    }


@require_http_methods(["GET", "POST"])
@permission(REQUEST)
def rollback(request: HttpRequest, name: str, env: str, arrival_pk: int) -> HttpResponse:
    """GET previews rolling `env` back to an earlier arrival; POST confirms (bucket_rollback)."""
    arrival = get_object_or_404(
        Arrival.objects.select_related("artifact__integration", "bucket__integration"),
        pk=arrival_pk,
        bucket__integration__name=name,
        bucket__env=env,
    )
    shown_to(request, arrival.bucket.integration, f"No integration named {name!r}.")
    form = RollbackForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            promotion = promotion_service.bucket_rollback(
                bucket=arrival.bucket,
                to_arrival=arrival,
                actor=Actor.from_request(request),
                reason=form.cleaned_data["reason"],
                freeze_override_reason=form.cleaned_data["freeze_override_reason"],
            )
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Rollback #{promotion.pk} requested.")
            return redirect("promotion", pk=promotion.pk)
    context = _preview_context(request, arrival.artifact, _target_bucket(arrival.artifact, env), form, rollback=True)
    context["arrival"] = arrival
    return render(request, "ci_integrations/promote.html", context)


def _promotion_action(
    request: HttpRequest, pk: int, action: Callable[..., object], done: str, form=None, **kwargs
) -> HttpResponse:
    """Run one promotion service call and go back to the page the button was on, with what happened.

    With a form that does not validate nothing is done: the errors are shown instead (a reason with a control
    character must not turn into a cancel without its reason).
    """
    promotion = get_object_or_404(Promotion.objects.select_related("integration"), pk=pk)
    shown_to(request, promotion.integration, "No such promotion.")
    if form is not None and not form.is_valid():
        for name, errors in form.errors.items():
            label = form.fields[name].label or name.capitalize() if name in form.fields else ""
            messages.error(request, f"{label}: {' '.join(errors)}" if label else " ".join(errors))
    else:
        try:
            action(promotion=promotion, actor=Actor.from_request(request), **kwargs)
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, done.format(pk=pk))
    back = request.POST.get("next", "")
    return redirect(back if back == reverse("approvals") else reverse("promotion", args=[pk]))


def _decision(request: HttpRequest, pk: int, action: Callable[..., object], done: str) -> HttpResponse:
    """Approve or reject with the comment; a comment that does not validate decides nothing and the decision page
    comes back with the comment as typed and what is wrong with it (a browser counts a line break as one character
    of the textarea's maxlength but sends two)."""
    form = DecisionForm(request.POST)
    try:
        promotion = selectors.promotion_for_decision(pk)
    except Promotion.DoesNotExist:
        raise Http404("No such promotion.") from None
    shown_to(request, promotion.integration, "No such promotion.")
    approving = action is approval_service.promotion_approve
    if form.is_valid() and (not approving or _confirm_sign_in(request, form, promotion)):
        return _promotion_action(request, pk, action, done, comment=form.cleaned_data["comment"])
    context = _decision_context(request, promotion, form)
    context["next_url"] = reverse("approvals") if request.POST.get("next") == reverse("approvals") else ""
    context["partial"] = "ci_integrations/partials/approval_panel.html"
    return render(request, "ci_integrations/decide.html", context)


@require_POST
@permission(APPROVE)
def promotion_approve(request: HttpRequest, pk: int) -> HttpResponse:
    return _decision(request, pk, approval_service.promotion_approve, "Approved #{pk}.")


@require_POST
@permission(APPROVE)
def promotion_reject(request: HttpRequest, pk: int) -> HttpResponse:
    return _decision(request, pk, approval_service.promotion_reject, "Rejected #{pk}.")


@require_POST
@permission(REQUEST)
def promotion_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    form = CancelForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    return _promotion_action(
        request, pk, promotion_service.promotion_cancel, "Cancelled #{pk}.", form=form, reason=reason
    )


@require_POST
@permission(REQUEST)
def promotion_retry(request: HttpRequest, pk: int) -> HttpResponse:
    return _promotion_action(request, pk, promotion_service.promotion_retry, "Retrying #{pk}.")


# --- audit log -------------------------------------------------------------------------------------------------------


@require_GET
@permission(AUDIT)
def audit_log(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    page = None
    if not request.GET or form.is_valid():
        filters = form.filters() if request.GET else selectors.AuditFilters()
        data = form.cleaned_data if request.GET else {}
        page = selectors.audit_entries(filters, before=data.get("before"), after=data.get("after"))
    context = {
        "form": form,
        "page": page,
        "query": _query_without(request, "before", "after"),
        "choices": selectors.audit_filter_choices(),
        "badge": _badge_context(),
        "signing": audit_signing_status(),
    }
    return render(request, "ci_integrations/audit.html", context)


def _query_without(request: HttpRequest, *names: str) -> str:
    query = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


def _badge_context() -> dict:
    verification, running = audit_verification_status()
    return {"verification": verification, "running": running, "head": selectors.audit_latest_entry()}


@require_GET
@permission(AUDIT)
def audit_export(request: HttpRequest, fmt: str) -> StreamingHttpResponse:
    """The filtered log, oldest first, streamed; the last line carries the chain's head hash."""
    form = AuditFilterForm(request.GET or None)
    if request.GET and not form.is_valid():
        problems = [
            f"{form.fields[name].label or name}: {error}" if name in form.fields else error
            for name, errors in form.errors.items()
            for error in errors
        ]
        return HttpResponse("Invalid filters: " + "; ".join(problems), status=400, content_type="text/plain")
    filters = form.filters() if request.GET else selectors.AuditFilters()
    entries = selectors.audit_entries_for_export(filters)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    if fmt == "csv":
        response = StreamingHttpResponse(audit_export_csv(entries), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(audit_export_jsonl(entries), content_type="application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
    return response


@require_POST
@permission(AUDIT)
def audit_verify_now(request: HttpRequest) -> HttpResponse:
    """Queue a full verification of the chain (it takes most of a minute on a million entries)."""
    if not audit_verification_start():
        messages.info(request, "A verification is already running.")
    if request.htmx:
        return render(request, "ci_integrations/partials/audit_badge.html", {"badge": _badge_context()})
    return redirect("audit")


@require_GET
@permission(AUDIT)
def audit_badge(request: HttpRequest) -> HttpResponse:
    """The chain badge; htmx polls it while a verification runs and stops (286) once the result is in."""
    context = {"badge": _badge_context()}
    response = render(request, "ci_integrations/partials/audit_badge.html", context)
    if not context["badge"]["running"]:
        response.status_code = HTMX_STOP_POLLING
    return response


# --- tokens ----------------------------------------------------------------------------------------------------------


def _token_form(request: HttpRequest, data=None) -> TokenCreateForm:
    # Personal scopes include every CI scope; token_create refuses a scope the chosen kind cannot carry.
    form = TokenCreateForm(data, scopes=list(PERSONAL_SCOPES))
    if not request.user.has_perm(CI_TOKENS):
        form.fields["kind"].choices = [(ApiToken.Kind.PERSONAL, "Personal token")]
    return form


@require_http_methods(["GET", "POST"])
@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    """List my tokens; POST creates one and shows its secret exactly once, in this response only."""
    form = _token_form(request, request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        kind = form.cleaned_data["kind"]
        if kind == ApiToken.Kind.CI and not request.user.has_perm(CI_TOKENS):
            raise PermissionDenied("You may not create CI tokens.")
        if not form.first_submission(request.user):
            messages.warning(
                request,
                "This form was already sent, and its token was created then; its secret is shown only once. "
                "If it was lost, revoke that token below and create a new one.",
            )
            return redirect("tokens")
        try:
            token, plain = token_create(
                name=form.cleaned_data["name"],
                kind=kind,
                actor=Actor.from_request(request),
                user=request.user if kind == ApiToken.Kind.PERSONAL else None,
                # A CI token made here answers for the person who made it: never more rights than they have.
                owner=request.user if kind == ApiToken.Kind.CI else None,
                integrations=form.cleaned_data["integrations"] if kind == ApiToken.Kind.CI else (),
                scopes=form.cleaned_data["scopes"],
                expires_at=form.expires_at,
            )
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            created = {"token": token, "plain": plain}
            form = _token_form(request)
    context = {"form": form, "created": created, "tokens": selectors.tokens_visible_to(request.user)}
    response = render(request, "ci_integrations/tokens.html", context)
    response["Cache-Control"] = "no-store"
    return response


@require_POST
@login_required
def token_revoke_view(request: HttpRequest, pk: int) -> HttpResponse:
    token = next((t for t in selectors.tokens_visible_to(request.user) if t.pk == pk), None)
    if token is None:
        raise Http404("No such token of yours.")
    try:
        token_revoke(token=token, actor=Actor.from_request(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Revoked token {token.name}.")
    return redirect("tokens")


# --- freeze windows --------------------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@permission(FREEZE)
def freeze_windows(request: HttpRequest) -> HttpResponse:
    form = FreezeWindowForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            window = freeze_window_create(actor=Actor.from_request(request), **form.cleaned_data)
        except ServiceError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(request, f"Freeze window {window.name!r} created.")
            return redirect("freeze_windows")
    context = {
        "form": form,
        "windows": selectors.freeze_windows_recent(),
        "upcoming": selectors.freeze_windows_next_by_environment(),
        "now": timezone.now(),
    }
    return render(request, "ci_integrations/freeze_windows.html", context)


@require_POST
@permission(FREEZE)
def freeze_window_end_view(request: HttpRequest, pk: int) -> HttpResponse:
    window = get_object_or_404(FreezeWindow, pk=pk)
    try:
        freeze_window_end(window=window, actor=Actor.from_request(request))
    except ServiceError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Freeze window {window.name!r} {'removed' if window.is_recurring else 'ended'}.")
    return redirect("freeze_windows")


# --- the emergency stop -------------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@permission(STOP)
def emergency_stop(request: HttpRequest) -> HttpResponse:
    """The switch: pull it with a reason, or release it."""
    form = EmergencyStopForm(request.POST or None)
    if request.method == "POST":
        actor = Actor.from_request(request)
        try:
            if request.POST.get("action") == "release":
                emergency_stop_release(actor=actor)
                messages.success(request, "Emergency stop released: promotions go again.")
                return redirect("emergency_stop")
            if form.is_valid():
                emergency_stop_pull(reason=form.cleaned_data["reason"], actor=actor)
                messages.success(request, "Emergency stop pulled: no promotion starts until it is released.")
                return redirect("emergency_stop")
        except ServiceError as exc:
            messages.error(request, exc.message)
    history = EmergencyStop.objects.order_by("-started_at", "-id")[:20]
    return render(request, "ci_integrations/emergency_stop.html", {"form": form, "history": history})
