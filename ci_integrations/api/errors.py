"""The API's error envelope: every error is `{"error": {"code", "message", "details"}}`.

Service errors carry their own status and code; DRF's exceptions are mapped so 401 (who are you?) and 403 (you may
not) stay distinct, 400s name the field, and 429 keeps its Retry-After header.
"""

from __future__ import annotations

import logging
import traceback

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from ci_integrations.registry.errors import redact
from ci_integrations.services.errors import ServiceError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = f"Request body is larger than {MAX_BODY_BYTES} bytes."
    default_code = "too_large"


class IdempotencyMismatch(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "This Idempotency-Key was already used with a different request body."
    default_code = "idempotency_mismatch"


class IdempotencyInFlight(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "A request with this Idempotency-Key is still being processed; retry shortly."
    default_code = "idempotency_in_flight"


DRF_CODES = {
    exceptions.ParseError: "parse_error",
    exceptions.AuthenticationFailed: "unauthenticated",
    exceptions.NotAuthenticated: "unauthenticated",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
}


def error_body(code: str, message: str, details=None) -> dict:
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


def _flatten(detail, prefix: str = "") -> list[str]:
    """'field: message' lines from DRF's nested validation detail."""
    if isinstance(detail, dict):
        lines = []
        for key, value in detail.items():
            name = key if key != "non_field_errors" else ""
            lines += _flatten(value, f"{prefix}.{name}" if prefix and name else (name or prefix))
        return lines
    if isinstance(detail, list):
        lines = []
        for index, value in enumerate(detail):
            if isinstance(value, dict | list):
                lines += _flatten(value, f"{prefix}[{index}]")
            else:
                lines += _flatten(value, prefix)
        return lines
    return [f"{prefix}: {detail}" if prefix else str(detail)]


def _plain_detail(detail):
    if isinstance(detail, dict):
        return {key: _plain_detail(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_plain_detail(value) for value in detail]
    return str(detail)


def api_exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.http_status)
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    if isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    response = exception_handler(exc, context)  # sets WWW-Authenticate and Retry-After
    if response is None:
        # The traceback as text, redacted: exception messages from SDKs and HTTP libraries may quote credentials.
        logger.error("unhandled API error\n%s", redact("".join(traceback.format_exception(exc))))
        return Response(
            error_body("server_error", "The server failed to handle this request; it has been logged."),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    if isinstance(exc, exceptions.ValidationError):
        lines = _flatten(exc.detail)
        response.data = error_body("invalid", "; ".join(lines) or "invalid input", _plain_detail(exc.detail))
        return response
    code = next((c for cls, c in DRF_CODES.items() if isinstance(exc, cls)), None) or getattr(
        exc, "default_code", "error"
    )
    details = {}
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        details = {"retry_after_seconds": int(exc.wait) + 1}
    message = str(exc.detail) if not isinstance(exc.detail, dict | list) else "; ".join(_flatten(exc.detail))
    response.data = error_body(code, message, details)
    return response


@csrf_exempt
def json_not_found(request, *args, **kwargs) -> JsonResponse:
    """Unknown paths under /api/ answer in the envelope too, not with the HTML 404 page."""
    return JsonResponse(error_body("not_found", f"No API endpoint at {request.path}."), status=404)
