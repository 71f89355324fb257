"""Who is acting: a signed-in person, an API token, or the system itself (jobs, reconciler)."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from typing import Any

from ci_integrations.models import ApiToken


@dataclass(frozen=True)
class Actor:
    """The subject of a service call, as recorded in the audit log.

    `user` is the person whose rights apply (a personal token acts as its user); `token` is set when the call came
    through the API; `request_id` ties audit entries to the HTTP request that caused them.
    """

    label: str
    user: Any = None
    token: ApiToken | None = None
    request_id: str = ""

    @property
    def is_ci_token(self) -> bool:
        """Whether the call came with a CI token (as opposed to a person, a personal token or the system)."""
        return self.token is not None and self.token.is_ci

    @property
    def person(self):
        """The active person acting (signed in, or through their personal token), or None: CI tokens, the system
        and deactivated users are nobody's hands."""
        if self.is_ci_token or self.user is None or not self.user.is_active:
            return None
        return self.user

    @property
    def requesting_person(self):
        """The person who counts as the requester of what this actor requests, or None.

        A person acting (signed in, or through a personal token) is themself; a CI token counts as its owner, or, for
        a system token that no person owns, as the person who made it (if a person did); a token exchanged for a CI
        run's ID token counts as the person who triggered the run, when the run's `actor` claim names one. Four-eyes
        bars this person from approving what they requested.
        """
        if self.is_ci_token:
            token = self.token
            if token.owner_id:
                return token.owner
            if token.triggered_by_id:
                return token.triggered_by
            return token.made_by if token.made_by_id else None
        return self.person

    @property
    def is_system_token(self) -> bool:
        """A CI token that no person owns or triggered: what it requests needs two approvers where four-eyes
        applies."""
        return self.is_ci_token and self.token.owner_id is None and self.token.triggered_by_id is None

    @classmethod
    def for_user(cls, user, *, request_id: str = "") -> Actor:
        return cls(label=user.get_username(), user=user, request_id=request_id)

    @classmethod
    def for_token(cls, token: ApiToken, *, request_id: str = "") -> Actor:
        if token.user_id:
            label = f"{token.user.get_username()} (token {token.name})"
        else:
            label = f"ci:{token.name}"
        return cls(label=label[:150], user=token.user if token.user_id else None, token=token, request_id=request_id)

    @classmethod
    def system(cls, what: str = "system") -> Actor:
        return cls(label=what)

    @classmethod
    def for_command(cls, command: str) -> Actor:
        """A management command, recorded with the operating-system user who ran it."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # containers may run under a uid with no passwd entry
            user = f"uid {os.getuid()}"
        return cls(label=f"manage.py {command} ({user})"[:150])

    @classmethod
    def from_request(cls, request) -> Actor:
        """The actor behind a Django or DRF request (session user or API token)."""
        request_id = getattr(request, "request_id", "")
        token = getattr(request, "auth", None)
        if isinstance(token, ApiToken):
            return cls.for_token(token, request_id=request_id)
        return cls.for_user(request.user, request_id=request_id)
