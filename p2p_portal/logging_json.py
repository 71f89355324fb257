"""`LOG_FORMAT=json`: one JSON object per log line, with the request, person, token and promotion it concerns.

What a line may say is fixed here (time, level, logger, message, request_id, user, token, promotion, exception):
arbitrary `extra=` fields are never copied out, so a secret passed along to a log call cannot leak through them.
The token is named by its key id only, never its secret.

Context comes from where the work happens: the middleware binds the request being served (its id, and the person
or token once authentication has looked them up; reading them never triggers a query of its own), and a job binds
the promotion it runs (`log_context(promotion=…)`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from django.utils.functional import empty

_context: ContextVar[dict | None] = ContextVar("p2p_log_context", default=None)
# URL names whose `pk` is a promotion's id (UI and API).
PROMOTION_ROUTES = {"promotion", "approval_panel", "promotion_approve", "promotion_reject", "promotion_cancel"}
PROMOTION_ROUTES |= {"promotion_retry", "api-promotion", "api-promotion-approve", "api-promotion-reject"}
PROMOTION_ROUTES |= {"api-promotion-cancel", "api-promotion-retry"}


@contextmanager
def log_context(**fields) -> Iterator[None]:
    """Add `fields` (e.g. promotion=12) to every line logged inside the block, on this thread or task."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class RequestLogContextMiddleware:
    """Bind the request being served, so lines logged while serving it name it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with log_context(request=request):
            return self.get_response(request)


def _loaded_user(request):
    """The request's user if authentication already loaded it (a lazy user is never loaded just to log)."""
    user = getattr(request, "user", None)
    if user is None or getattr(user, "_wrapped", None) is empty:
        return None
    return user if getattr(user, "is_authenticated", False) else None


def request_fields(request) -> dict:
    """request_id, user, token and promotion of a Django request, as far as they are known."""
    fields = {}
    if getattr(request, "request_id", None):
        fields["request_id"] = request.request_id
    user = _loaded_user(request)
    if user is not None:
        fields["user"] = user.get_username()
    token = getattr(request, "auth", None)
    if getattr(token, "key_id", None):
        fields["token"] = token.key_id
    match = getattr(request, "resolver_match", None)
    if match is not None and match.url_name in PROMOTION_ROUTES and "pk" in match.kwargs:
        fields["promotion"] = match.kwargs["pk"]
    return fields


class JsonFormatter(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        """time (UTC, ISO 8601 with milliseconds), level, logger, message, then whatever context is known."""
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = dict(_context.get() or {})
        # django.request's own lines (4xx, 5xx) are written after the middleware returned: they carry the request.
        request = context.pop("request", None) or getattr(record, "request", None)
        if request is not None and hasattr(request, "META"):
            line.update(request_fields(request))
        line.update(
            {key: value for key, value in context.items() if key in ("promotion", "import_job", "webhook_delivery")}
        )
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)
