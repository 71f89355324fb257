"""Who may call what: token scopes and the user's Django permissions. Which integrations a caller can see is the
selectors' visibility rule.

- A CI token may use the scopes it was given, on the integrations it was given. It holds no user rights, so it can
  never approve or reject.
- A personal token (or a signed-in session on the browsable docs) acts as its user: the user's Django permissions
  apply, further narrowed by the token's scopes.
"""

from __future__ import annotations

from rest_framework.permissions import BasePermission

from ci_integrations.models import ApiToken
from ci_integrations.services.errors import NotAllowed
from ci_integrations.services.policy import ci_token_owner_refusal
from ci_integrations.services.tokens import (
    SCOPE_ARTIFACTS_WRITE,
    SCOPE_CHECKS_WRITE,
    SCOPE_PROMOTIONS_APPROVE,
    SCOPE_PROMOTIONS_REQUEST,
    SCOPE_READ,
)

# The Django permission a person needs for what each scope allows; None means any signed-in user.
SCOPE_PERMISSIONS = {
    SCOPE_READ: None,
    SCOPE_ARTIFACTS_WRITE: "ci_integrations.add_artifact",
    SCOPE_CHECKS_WRITE: "ci_integrations.add_checkresult",
    SCOPE_PROMOTIONS_REQUEST: "ci_integrations.request_promotion",
    SCOPE_PROMOTIONS_APPROVE: "ci_integrations.approve_promotion",
}


def request_token(request) -> ApiToken | None:
    return request.auth if isinstance(request.auth, ApiToken) else None


def check_scope(request, scope: str, *, permission: str | None = None) -> None:
    """Raise NotAllowed unless the caller's token carries `scope` and its user holds the matching permission."""
    token = request_token(request)
    if token is not None and token.is_ci and scope == SCOPE_PROMOTIONS_APPROVE:
        raise NotAllowed("CI tokens cannot approve or reject promotions; use a personal token.")
    if token is not None and scope not in token.scopes:
        raise NotAllowed(
            f"token {token.key_id} lacks the {scope!r} scope (it has: {', '.join(token.scopes) or 'none'})",
            details={"required_scope": scope},
        )
    if token is not None and token.is_ci:
        if permission is not None:
            raise NotAllowed("CI tokens cannot do this; use a personal token.", details={"required": permission})
        needed = SCOPE_PERMISSIONS.get(scope)
        if needed and (refusal := ci_token_owner_refusal(token, needed)):
            raise NotAllowed(refusal, details={"required_permission": needed})
        return
    for needed in (SCOPE_PERMISSIONS.get(scope), permission):
        if needed and not request.user.has_perm(needed):
            raise NotAllowed(
                f"user {request.user.get_username()} lacks the {needed.split('.')[-1]} permission",
                details={"required_permission": needed},
            )


class HasScope(BasePermission):
    """Checks the view's `scopes` (method → scope) and optional `permissions` (method → Django permission)."""

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        scope = getattr(view, "scopes", {}).get(request.method)
        if request.method in ("HEAD", "OPTIONS"):
            scope = getattr(view, "scopes", {}).get("GET", SCOPE_READ)
        if scope is None:
            # No handler means DRF answers 405; a handler without a declared scope is refused, never left open.
            return not hasattr(view, request.method.lower())
        check_scope(request, scope, permission=getattr(view, "permissions", {}).get(request.method))
        return True
