"""The API's published contract: what every v1 operation's OpenAPI description is built from.

A generated client (openapi-python-client, openapi-generator, openapi-typescript) must work on the first try, so each
operation states exactly what it accepts and answers. Describe a new operation with `api_operation` instead of a bare
`extend_schema`:

    @api_operation(
        operation_id="thing_create",
        request=s.ThingIn,                      # a StrictInput: unknown keys refused, additionalProperties false
        responses={201: s.ThingOut},            # lists: {200: cursor_page(s.ThingOut)} (see pagination.py)
        errors=WRITE_ERRORS | {502},            # the error statuses it can answer; READ_ERRORS for a GET
        personal_only=True,                     # only personal tokens (and signed-in sessions) may call it
        links={201: {"GetThing": ("thing_detail", "id")}},   # OpenAPI links for stateful clients and testing
    )

It adds the error answers (`ErrorOut`, `{error: {code, message, details}}`, each status with its meaning),
`Retry-After` on 429, the `Idempotency-Key` header on POST, and the security schemes (`ciToken`, `personalToken`).
Field rules come from input_rules.py through the serializers' validators, never from text written here.
"""

from __future__ import annotations

from collections import defaultdict

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema

from ci_integrations.api import idempotency
from ci_integrations.api.serializers import ErrorOut, StrictInput

ERROR_MEANINGS = {
    400: "Bad input: `message` and `details` name each field that is wrong (code `invalid`, or `parse_error` for a "
    "body that is not JSON).",
    401: "No token, or a malformed, unknown, revoked or expired one (code `unauthenticated`).",
    403: "The token's scope or the user's role does not allow this (code `forbidden`).",
    404: "No such object, or not visible to this token (code `not_found`).",
    409: "The object's state or the workflow's policy refuses it; `details.unmet` lists every unmet condition (codes "
    "`conflict`, `policy`), or this Idempotency-Key's first request is still running (`idempotency_in_flight`).",
    413: "The body is larger than 1 MiB (code `too_large`).",
    415: "The body is not `application/json` (code `unsupported_media_type`).",
    422: "Well-formed, but not processable as it stands: an Idempotency-Key reused with another body "
    "(`idempotency_mismatch`), or a value the portal cannot use (code `unprocessable`).",
    429: "Over the token's rate limit (code `rate_limited`); `Retry-After` says when to retry.",
    502: "The registry (or cloud) could not be reached, did not answer in time after retries, or answered with an "
    "error (code `registry`).",
    504: "A registry did not answer within the request's time (`P2P_REGISTRY_WEB_TIMEOUT`); `message` names it (code "
    "`registry_timeout`). Registrations on other registries are not held up.",
}
READ_ERRORS = frozenset({400, 401, 403, 404, 429})
WRITE_ERRORS = READ_ERRORS | {409, 413, 415, 422}

RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    int,
    OpenApiParameter.HEADER,
    required=True,
    description="seconds to wait before retrying",
    response=[429],
)
IDEMPOTENCY_KEY = OpenApiParameter(
    idempotency.HEADER,
    {"type": "string", "pattern": idempotency.KEY_PATTERN},
    OpenApiParameter.HEADER,
    description="Makes a retry safe: the same key with the same body replays the first answer (with "
    "`Idempotent-Replayed: true`) for 24 hours; with another body it is 422.",
)
# Alternatives: any one of them authenticates (a signed-in session serves the browsable docs).
ANY_TOKEN = [{"ciToken": []}, {"personalToken": []}, {"cookieAuth": []}]
PERSONAL_ONLY = [{"personalToken": []}, {"cookieAuth": []}]

# (operation id, status) → OpenAPI links, filled by api_operation and written into the schema by add_links.
_LINKS: dict[tuple[str, str], dict] = defaultdict(dict)


def api_operation(
    *,
    operation_id: str,
    responses: dict,
    request=None,
    errors: frozenset[int] = READ_ERRORS,
    parameters: list | None = None,
    personal_only: bool = False,
    links: dict[int, dict[str, tuple[str, str]]] | None = None,
    method: str = "",
    anonymous: bool = False,
    idempotency_key: bool = True,
):
    """`extend_schema` for one v1 operation, with its error answers, headers, security and links (see above).

    `links` maps a status to {link name: (target operation id, the target's path parameter)}; the parameter takes
    the answer's `id`. `method` is only needed when it is not obvious from `request` (a POST without a body).
    `anonymous` operations take no token (the OIDC exchange); `idempotency_key=False` where no token means no key."""
    documented = dict(responses)
    for status in sorted(errors):
        documented.setdefault(status, OpenApiResponse(response=ErrorOut, description=ERROR_MEANINGS[status]))
    is_post = request is not None or method.upper() == "POST"
    params = [*(parameters or []), RETRY_AFTER]
    if is_post and idempotency_key and not anonymous:
        params.append(IDEMPOTENCY_KEY)
    for status, targets in (links or {}).items():
        for name, (target, parameter) in targets.items():
            _LINKS[(operation_id, str(status))][name] = {
                "operationId": target,
                "parameters": {parameter: "$response.body#/id"},
            }
    return extend_schema(
        operation_id=operation_id,
        request=request,
        responses=documented,
        parameters=params,
        auth=[] if anonymous else PERSONAL_ONLY if personal_only else ANY_TOKEN,
    )


def add_links(result, generator, request, public):
    """drf-spectacular postprocessing hook: write the links api_operation collected into their responses."""
    for methods in result.get("paths", {}).values():
        for operation in methods.values():
            for status, response in operation.get("responses", {}).items():
                links = _LINKS.get((operation.get("operationId"), status))
                if links:
                    response["links"] = links
    return result


class StrictInputExtension(OpenApiSerializerExtension):
    """Request bodies (StrictInput) refuse unknown keys, and the schema says so."""

    target_class = StrictInput
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        schema["additionalProperties"] = False
        if " ".join(schema.get("description", "").split()) == " ".join(StrictInput.__doc__.split()):  # the base's
            del schema["description"]
        return schema
