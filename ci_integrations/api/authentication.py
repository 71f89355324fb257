"""Token authentication: `Authorization: Bearer p2p_…` (or `Token p2p_…`).

A personal token authenticates as its user; a CI token as a `CiTokenUser`, which holds no Django permissions, so what
it may do comes only from its integrations and scopes (see permissions.py). Failures are 401 with WWW-Authenticate.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed

from ci_integrations.models import ApiToken
from ci_integrations.services.tokens import TokenInvalid, token_authenticate

KEYWORDS = (b"bearer", b"token")


class CiTokenUser:
    """The request.user of a CI token: authenticated, but with no user rights of its own."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False
    pk = None
    id = None

    def __init__(self, token: ApiToken):
        self.token = token
        self.username = f"ci:{token.name}"

    def get_username(self) -> str:
        return self.username

    def has_perm(self, perm, obj=None) -> bool:
        return False

    def __str__(self) -> str:
        return self.username


class TokenAuthentication(BaseAuthentication):
    """`(user, ApiToken)` for a valid token, None when no token is sent, 401 for a bad one."""

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header or header[0].lower() not in KEYWORDS:
            return None
        if len(header) != 2:
            raise AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("malformed token: expected p2p_<key id>_<secret>_<checksum>") from None
        try:
            token = token_authenticate(raw)
        except TokenInvalid as exc:
            raise AuthenticationFailed(str(exc)) from None
        user = token.user if token.kind == ApiToken.Kind.PERSONAL else CiTokenUser(token)
        return user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="p2p"'


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = TokenAuthentication
    # Two names for one header: which kind of token an operation takes is part of its contract (approving needs a
    # personal token).
    name = ["ciToken", "personalToken"]

    def get_security_definition(self, auto_schema):
        bearer = {"type": "http", "scheme": "bearer", "bearerFormat": "p2p_<key id>_<secret>_<checksum>"}
        return [
            {**bearer, "description": "A CI token (`create_token --integration …`): its integrations and scopes only."},
            {**bearer, "description": "A personal token (`create_token --user …`): acts as its user."},
        ]
