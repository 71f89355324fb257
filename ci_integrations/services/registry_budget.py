"""How long a web request waits for a registry: every registry call of one request shares P2P_REGISTRY_WEB_TIMEOUT.

A registry that accepts connections and answers nothing would otherwise hold a web worker for minutes per request,
and a few such requests would stop the whole portal. Past the budget the request answers 504, naming the registry.

May import: the registry package, errors, Django settings.
"""

from __future__ import annotations

from django.conf import settings

from ci_integrations.registry import errors as registry_errors
from ci_integrations.registry.budget import time_budget
from ci_integrations.services.errors import RegistryTimeout


def web_budget(what: str):
    """A context in which registry calls give up after P2P_REGISTRY_WEB_TIMEOUT seconds in all."""
    seconds = float(settings.P2P_REGISTRY_WEB_TIMEOUT)
    return time_budget(seconds, what=f"the {seconds:g} s a web request waits for a registry ({what})")


def registry_timeout(exc: registry_errors.DeadlineExceeded, *, registry_name: str) -> RegistryTimeout:
    """The 504 for a registry that did not answer within the web budget."""
    host = f" ({exc.host})" if exc.host else ""
    return RegistryTimeout(
        f"registry {registry_name}{host} did not answer in time: {exc.message}",
        details={"registry": registry_name, "timeout_seconds": settings.P2P_REGISTRY_WEB_TIMEOUT},
    )
