"""API v1: one small view per operation. Each parses input with a serializer, calls one service and renders.

Visibility and scopes are in permissions.py, the error envelope in errors.py, Idempotency-Key in idempotency.py.
"""

from __future__ import annotations

from pathlib import Path

from django.http import HttpResponse
from django.views.decorators.http import require_GET
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from ci_integrations import selectors
from ci_integrations.api import parsers
from ci_integrations.api import serializers as s
from ci_integrations.api.errors import MAX_BODY_BYTES, PayloadTooLarge, error_body
from ci_integrations.api.idempotency import idempotency_claim, idempotency_store
from ci_integrations.api.pagination import PAGE_PARAMETERS, NewestFirst, cursor_page
from ci_integrations.api.permissions import HasScope, check_scope, request_token
from ci_integrations.api.schema import WRITE_ERRORS, api_operation
from ci_integrations.api.throttling import TokenRateThrottle
from ci_integrations.models import Artifact, Bucket, CheckResult, Integration, Promotion
from ci_integrations.selectors import AuditFilters
from ci_integrations.services.actors import Actor
from ci_integrations.services.approvals import promotion_approve, promotion_reject
from ci_integrations.services.artifacts import artifact_register, check_report
from ci_integrations.services.audit_verification import audit_verify_bounded
from ci_integrations.services.credentials import bucket_push_credentials
from ci_integrations.services.emergency_stop import emergency_stop_active, emergency_stop_pull, emergency_stop_release
from ci_integrations.services.errors import NotFound
from ci_integrations.services.imports import artifact_import
from ci_integrations.services.oidc_exchange import ExchangeRefused, ci_token_exchange
from ci_integrations.services.promotions import bucket_rollback, promotion_cancel, promotion_request, promotion_retry
from ci_integrations.services.tokens import (
    SCOPE_ARTIFACTS_WRITE,
    SCOPE_CHECKS_WRITE,
    SCOPE_PROMOTIONS_APPROVE,
    SCOPE_PROMOTIONS_REQUEST,
    SCOPE_READ,
)

CLI_PATH = Path(__file__).resolve().parent.parent / "cli" / "p2p.py"
REGISTRY_ERRORS = WRITE_ERRORS | {502, 504}
PROMOTION_LINKS = {
    "GetPromotion": ("promotion_detail", "id"),
    "ApprovePromotion": ("promotion_approve", "id"),
    "RejectPromotion": ("promotion_reject", "id"),
    "CancelPromotion": ("promotion_cancel", "id"),
    "RetryPromotion": ("promotion_retry", "id"),
}


class _Replay(Exception):
    def __init__(self, response: Response):
        self.response = response


class ApiView(APIView):
    """Base of every v1 view: token auth, scopes, per-token throttling, JSON only, Idempotency-Key on POST."""

    permission_classes = [HasScope]
    throttle_classes = [TokenRateThrottle]
    parser_classes = [parsers.BoundedJSONParser]
    renderer_classes = [JSONRenderer]
    scopes: dict[str, str] = {"GET": SCOPE_READ}
    # False for views whose answer holds secrets: an Idempotency-Key is honoured while the request runs, but the
    # answer is never stored for replay (a repeat is answered afresh).
    store_idempotent_response = True
    _idempotency_record = None

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY_BYTES:
            raise PayloadTooLarge()
        token = request_token(request)
        if request.method == "POST" and token is not None:
            claim = idempotency_claim(request, token)
            if isinstance(claim, Response):
                raise _Replay(claim)
            self._idempotency_record = claim

    def handle_exception(self, exc):
        if isinstance(exc, _Replay):
            return exc.response
        return super().handle_exception(exc)

    def finalize_response(self, request, response, *args, **kwargs):
        if self._idempotency_record is not None:
            record, self._idempotency_record = self._idempotency_record, None
            idempotency_store(record, response, keep=self.store_idempotent_response)
        return super().finalize_response(request, response, *args, **kwargs)

    def actor(self) -> Actor:
        return Actor.from_request(self.request)

    @staticmethod
    def parse(serializer_class, data) -> dict:
        serializer = serializer_class(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


# --- lookups: everything outside the caller's integrations is "not found" -----------------------------------------


def integration_for(request, name: str) -> Integration:
    integration = selectors.integration_visible_to(Actor.from_request(request), name)
    if integration is None:
        raise NotFound(f"no integration named {name!r}")
    return integration


def artifact_for(request, pk: int) -> Artifact:
    artifact = selectors.artifact_visible_to(Actor.from_request(request), pk)
    if artifact is None:
        raise NotFound(f"no artifact {pk}")
    return artifact


def promotion_for(request, pk: int) -> Promotion:
    promotion = selectors.promotion_visible_to(Actor.from_request(request), pk)
    if promotion is None:
        raise NotFound(f"no promotion {pk}")
    return promotion


def bucket_for(integration: Integration, env: str) -> Bucket:
    bucket = selectors.bucket_of(integration, env)
    if bucket is None:
        raise NotFound(f"integration {integration.name!r} has no bucket {env!r}", details={"env": env})
    return bucket


def artifact_by_reference(integration: Integration, reference: str, *, env: str | None = None) -> Artifact:
    artifact = selectors.artifact_by_reference(integration, reference, env=env)
    if artifact is None:
        where = f" in {env}" if env else ""
        raise NotFound(f"integration {integration.name!r} has no artifact {reference!r}{where}")
    return artifact


# --- integrations -----------------------------------------------------------------------------------------------


class IntegrationListView(ApiView):
    @api_operation(operation_id="integrations_list", responses={200: s.IntegrationOut(many=True)})
    def get(self, request):
        """Integrations visible to the token, each with its buckets and what each bucket runs."""
        integrations = selectors.integrations_with_buckets(self.actor())
        return Response(s.IntegrationOut(integrations, many=True).data)


class IntegrationDetailView(ApiView):
    @api_operation(operation_id="integration_detail", responses={200: s.IntegrationOut})
    def get(self, request, name: str):
        """One integration visible to the caller, with its buckets and what each environment runs now."""
        integration = selectors.integrations_with_buckets(self.actor(), name=name).first()
        if integration is None:
            raise NotFound(f"no integration named {name!r}")
        return Response(s.IntegrationOut(integration).data)


# --- artifacts ----------------------------------------------------------------------------------------------------


class ArtifactsView(ApiView):
    scopes = {"GET": SCOPE_READ, "POST": SCOPE_ARTIFACTS_WRITE}

    @api_operation(
        operation_id="artifacts_search",
        parameters=[s.ArtifactSearchIn, *PAGE_PARAMETERS],
        responses={200: cursor_page(s.ArtifactOut)},
    )
    def get(self, request, name: str):
        """Search an integration's artifacts by environment (arrived there), tag and digest; newest first."""
        integration = integration_for(request, name)
        query = self.parse(s.ArtifactSearchIn, request.query_params)
        artifacts = selectors.artifacts_search(
            integration=integration, env=query.get("env", ""), tag=query.get("tag", ""), digest=query.get("digest", "")
        )
        return NewestFirst().page(artifacts, request, self, s.ArtifactOut)

    @api_operation(
        operation_id="artifacts_register",
        request=s.RegisterIn,
        responses={200: s.RegisterOut, 201: s.RegisterOut},
        errors=REGISTRY_ERRORS,
        links={
            status_code: {"GetArtifact": ("artifact_detail", "id"), "ReportCheck": ("checks_report", "id")}
            for status_code in (200, 201)
        },
    )
    def post(self, request, name: str):
        """Register an image already pushed to the env's bucket: 201 when new there, 200 when already registered."""
        integration = integration_for(request, name)
        data = self.parse(s.RegisterIn, request.data)
        artifact, arrival, created = artifact_register(
            integration=integration,
            env=data["env"],
            tag=data["tag"],
            digest=data.get("digest"),
            metadata=data.get("metadata"),
            actor=self.actor(),
        )
        # Built from what is at hand: no extra queries on the hot path of every CI pipeline.
        body = {
            "id": artifact.pk,
            "digest": artifact.digest,
            "integration": integration.name,
            "env": data["env"],
            "tag": arrival.tag,
            "created": created,
            "arrival": arrival.pk,
            "arrived_at": arrival.arrived_at,
        }
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class ArtifactDetailView(ApiView):
    @api_operation(operation_id="artifact_detail", responses={200: s.ArtifactOut})
    def get(self, request, pk: int):
        """One artifact (an image by digest) with its checks and arrivals."""
        artifact = artifact_for(request, pk)
        return Response(s.ArtifactOut(artifact).data)


class ImportCreateView(ApiView):
    scopes = {"POST": SCOPE_ARTIFACTS_WRITE}

    @api_operation(
        operation_id="artifacts_import",
        request=s.ImportIn,
        responses={202: s.JobOut},
        errors=REGISTRY_ERRORS,
        links={202: {"GetJob": ("job_detail", "id")}},
    )
    def post(self, request, name: str):
        """Copy an image from an outside build registry into the integration's first bucket; follow the job."""
        integration = integration_for(request, name)
        data = self.parse(s.ImportIn, request.data)
        job = artifact_import(
            integration=integration,
            source=data["source"],
            source_credentials=data.get("source_credentials") or None,
            tag=data.get("tag"),
            metadata=data.get("metadata"),
            actor=self.actor(),
        )
        return Response(s.JobOut(job).data, status=status.HTTP_202_ACCEPTED)


class JobDetailView(ApiView):
    @api_operation(operation_id="job_detail", responses={200: s.JobOut})
    def get(self, request, pk: int):
        """An import job's state, and its result once it has ended."""
        job = selectors.import_job_visible_to(self.actor(), pk)
        if job is None:
            raise NotFound(f"no job {pk}")
        return Response(s.JobOut(job).data)


class CheckReportView(ApiView):
    scopes = {"POST": SCOPE_CHECKS_WRITE}

    @api_operation(operation_id="checks_report", request=s.CheckIn, responses={201: s.CheckOut}, errors=WRITE_ERRORS)
    def post(self, request, pk: int):
        """Report a named check as passed or failed; the latest report wins."""
        artifact = artifact_for(request, pk)
        data = self.parse(s.CheckIn, request.data)
        result: CheckResult = check_report(
            artifact=artifact, name=data["name"], status=data["status"], url=data.get("url", ""), actor=self.actor()
        )
        return Response(s.CheckOut(result).data, status=status.HTTP_201_CREATED)


# --- promotions ---------------------------------------------------------------------------------------------------


def promotion_response(promotion: Promotion, *, status_code: int = 200) -> Response:
    return Response(s.PromotionOut(selectors.promotion_as_shown(promotion.pk)).data, status=status_code)


class PromotionCreateView(ApiView):
    scopes = {"POST": SCOPE_PROMOTIONS_REQUEST}

    @api_operation(
        operation_id="promotions_request",
        request=s.PromotionIn,
        responses={201: s.PromotionOut},
        errors=WRITE_ERRORS,
        links={201: PROMOTION_LINKS},
    )
    def post(self, request):
        """Request a promotion along the integration's workflow; 409 lists every unmet policy condition."""
        data = self.parse(s.PromotionIn, request.data)
        integration = integration_for(request, data["integration"])
        artifact = artifact_by_reference(integration, data["artifact"], env=data.get("from_env"))
        promotion = promotion_request(
            artifact=artifact,
            to_env=data["to_env"],
            from_env=data.get("from_env"),
            actor=self.actor(),
            tag=data.get("tag"),
            reason=data.get("reason", ""),
            freeze_override_reason=data.get("freeze_override_reason", ""),
            not_before=data.get("not_before"),
        )
        return promotion_response(promotion, status_code=status.HTTP_201_CREATED)


class PromotionDetailView(ApiView):
    @api_operation(operation_id="promotion_detail", responses={200: s.PromotionOut})
    def get(self, request, pk: int):
        """State, progress, the log's tail, the error and the approvals of one promotion."""
        return Response(s.PromotionOut(promotion_for(request, pk)).data)


class PromotionApproveView(ApiView):
    scopes = {"POST": SCOPE_PROMOTIONS_APPROVE}

    @api_operation(
        operation_id="promotion_approve",
        request=s.CommentIn,
        responses={200: s.PromotionOut},
        errors=WRITE_ERRORS,
        personal_only=True,
    )
    def post(self, request, pk: int):
        """Approve (personal tokens only; four-eyes and the approver group apply)."""
        promotion = promotion_for(request, pk)
        data = self.parse(s.CommentIn, request.data)
        promotion = promotion_approve(promotion=promotion, actor=self.actor(), comment=data["comment"])
        return promotion_response(promotion)


class PromotionRejectView(ApiView):
    scopes = {"POST": SCOPE_PROMOTIONS_APPROVE}

    @api_operation(
        operation_id="promotion_reject",
        request=s.CommentIn,
        responses={200: s.PromotionOut},
        errors=WRITE_ERRORS,
        personal_only=True,
    )
    def post(self, request, pk: int):
        """Reject a pending promotion: the request ends (personal tokens only; the approver group applies)."""
        promotion = promotion_for(request, pk)
        data = self.parse(s.CommentIn, request.data)
        promotion = promotion_reject(promotion=promotion, actor=self.actor(), comment=data["comment"])
        return promotion_response(promotion)


class PromotionCancelView(ApiView):
    scopes = {"POST": SCOPE_PROMOTIONS_REQUEST}

    @api_operation(
        operation_id="promotion_cancel", request=s.CommentIn, responses={200: s.PromotionOut}, errors=WRITE_ERRORS
    )
    def post(self, request, pk: int):
        """Cancel a promotion that has not started copying (pending approval, approved or queued); the comment is the
        reason."""
        promotion = promotion_for(request, pk)
        data = self.parse(s.CommentIn, request.data)
        promotion = promotion_cancel(promotion=promotion, actor=self.actor(), reason=data["comment"])
        return promotion_response(promotion)


class PromotionRetryView(ApiView):
    scopes = {"POST": SCOPE_PROMOTIONS_REQUEST}

    @api_operation(
        operation_id="promotion_retry", request=s.CommentIn, responses={200: s.PromotionOut}, errors=WRITE_ERRORS
    )
    def post(self, request, pk: int):
        """Queue a failed promotion again: the same digest, with the approvals it already has."""
        promotion = promotion_for(request, pk)
        self.parse(s.CommentIn, request.data)
        promotion = promotion_retry(promotion=promotion, actor=self.actor())
        return promotion_response(promotion)


class RollbackView(ApiView):
    scopes = {"POST": SCOPE_PROMOTIONS_REQUEST}

    @api_operation(
        operation_id="bucket_rollback",
        request=s.RollbackIn,
        responses={201: s.PromotionOut},
        errors=WRITE_ERRORS,
        links={201: {"GetPromotion": ("promotion_detail", "id")}},
    )
    def post(self, request, name: str):
        """Return a bucket to an artifact that arrived there before (by artifact id or digest)."""
        integration = integration_for(request, name)
        data = self.parse(s.RollbackIn, request.data)
        bucket = bucket_for(integration, data["env"])
        artifact = artifact_by_reference(integration, data["to"], env=bucket.env)
        arrival = selectors.arrival_in(bucket, artifact)
        if arrival is None:
            raise NotFound(
                f"artifact {artifact.short_digest} never arrived in {bucket}; "
                "only earlier arrivals can be rolled back to",
                details={"to": data["to"]},
            )
        promotion = bucket_rollback(
            bucket=bucket,
            to_arrival=arrival,
            actor=self.actor(),
            reason=data["reason"],
            freeze_override_reason=data.get("freeze_override_reason", ""),
        )
        return promotion_response(promotion, status_code=status.HTTP_201_CREATED)


class PushCredentialsView(ApiView):
    scopes = {"POST": SCOPE_ARTIFACTS_WRITE}
    store_idempotent_response = False  # the answer is a registry password or token

    @api_operation(
        operation_id="push_credentials",
        request=s.PushCredentialsIn,
        responses={200: s.PushCredentialsOut},
        errors=REGISTRY_ERRORS,
    )
    def post(self, request, name: str):
        """Short-lived credentials that can pull and push the bucket's repository and no other (audited).

        403 unless the bucket allows push credentials and is where its workflow starts; 409 when its registry cannot
        scope credentials to one repository (the message says what to configure)."""
        integration = integration_for(request, name)
        data = self.parse(s.PushCredentialsIn, request.data)
        body = bucket_push_credentials(bucket=bucket_for(integration, data["env"]), actor=self.actor())
        return Response(s.PushCredentialsOut(body).data)


# --- audit ----------------------------------------------------------------------------------------------------------


class AuditListView(ApiView):
    @api_operation(
        operation_id="audit_list",
        parameters=[s.AuditQueryIn, *PAGE_PARAMETERS],
        responses={200: cursor_page(s.AuditEntryOut)},
    )
    def get(self, request):
        """Audit entries, newest first, cursor-paginated. CI tokens see their integrations' entries only."""
        if not self.actor().is_ci_token:
            check_scope(request, SCOPE_READ, permission="ci_integrations.view_auditentry")
        query = self.parse(s.AuditQueryIn, request.query_params)
        entries = selectors.audit_entries_visible_to(self.actor(), AuditFilters(**query))
        return NewestFirst().page(entries, request, self, s.AuditEntryOut)


class AuditVerifyView(ApiView):
    permissions = {"GET": "ci_integrations.export_auditentry"}

    @api_operation(operation_id="audit_verify", responses={200: s.AuditVerifyOut}, personal_only=True)
    def get(self, request):
        """Verify the chain after its newest signed checkpoint (bounded), or answer with the last background run."""
        answer = audit_verify_bounded()
        report, last_run = answer.report, answer.last_background_run or {}
        body = {
            "ok": report.ok if report else last_run.get("ok"),
            "entries": report.entries if report else last_run.get("entries"),
            "head": report.head if report else last_run.get("head"),
            "broken_id": report.broken_id if report else last_run.get("broken_id"),
            "problem": report.problem if report else last_run.get("problem", ""),
            "scope": answer.scope,
            "checkpoint": answer.checkpoint.as_dict() if answer.checkpoint else None,
            "public_key": answer.public_key,
            "queued": answer.queued,
            "verified_at": last_run.get("verified_at"),
        }
        return Response(s.AuditVerifyOut(body).data)


# --- CI's OIDC token exchange ---------------------------------------------------------------------------------------


class OidcExchangeView(ApiView):
    # The ID token in the body is the credential: no API token, no scope; throttled per address.
    authentication_classes: list = []
    permission_classes: list = []
    store_idempotent_response = False  # the answer is a token

    @api_operation(
        operation_id="auth_oidc_exchange",
        request=s.OidcExchangeIn,
        responses={201: s.OidcExchangeOut},
        errors=WRITE_ERRORS,
        anonymous=True,
    )
    def post(self, request):
        """Exchange a CI job's OIDC ID token (GitHub Actions, GitLab CI, …) for a short-lived CI token.

        401 names the check that failed (algorithm, issuer, key, signature, exp, nbf, iat, audience, claims); every
        exchange and every refusal is audited."""
        data = self.parse(s.OidcExchangeIn, request.data)
        try:
            exchange = ci_token_exchange(id_token=data["token"], request_id=getattr(request, "request_id", ""))
        except ExchangeRefused as refusal:
            return Response(
                error_body(refusal.code, refusal.message, refusal.details),
                status=status.HTTP_401_UNAUTHORIZED,
                headers={"WWW-Authenticate": 'Bearer realm="p2p", error="invalid_token"'},
            )
        body = {
            "token": exchange.plain,
            "expires_at": exchange.expires_at,
            "integrations": exchange.integrations,
            "scopes": exchange.token.scopes,
        }
        return Response(s.OidcExchangeOut(body).data, status=status.HTTP_201_CREATED)


# --- the emergency stop -------------------------------------------------------------------------------------------


class StopView(ApiView):
    # People only (platform admins and release managers hold use_emergency_stop); CI tokens never.
    scopes = {"GET": SCOPE_READ, "POST": SCOPE_PROMOTIONS_REQUEST, "DELETE": SCOPE_PROMOTIONS_REQUEST}
    permissions = {"POST": "ci_integrations.use_emergency_stop", "DELETE": "ci_integrations.use_emergency_stop"}

    @api_operation(operation_id="stop_status", responses={200: s.StopOut})
    def get(self, request):
        """The emergency stop in force; 404 when promotions run normally."""
        stop = emergency_stop_active()
        if stop is None:
            raise NotFound("the emergency stop is not pulled")
        return Response(s.StopOut(stop).data)

    @api_operation(
        operation_id="stop_pull", request=s.StopIn, responses={201: s.StopOut}, errors=WRITE_ERRORS, personal_only=True
    )
    def post(self, request):
        """Pull the emergency stop: no new promotion, queued ones held, running copies finish; 409 if pulled."""
        data = self.parse(s.StopIn, request.data)
        stop = emergency_stop_pull(reason=data["reason"], actor=self.actor())
        return Response(s.StopOut(stop).data, status=status.HTTP_201_CREATED)

    @api_operation(
        operation_id="stop_release",
        responses={200: s.StopOut},
        errors=WRITE_ERRORS,
        personal_only=True,
        method="DELETE",
    )
    def delete(self, request):
        """Release the emergency stop: waiting promotions are queued again within P2P_SCHEDULER_SECONDS."""
        return Response(s.StopOut(emergency_stop_release(actor=self.actor())).data)


# --- the CLI --------------------------------------------------------------------------------------------------------


@require_GET
def cli_download(request) -> HttpResponse:
    """The `p2p` CLI as one file, for `curl -o p2p $P2P_URL/api/v1/cli/p2p`; no token needed."""
    response = HttpResponse(CLI_PATH.read_bytes(), content_type="text/x-python; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="p2p"'
    return response
