"""Errors services raise. The API maps them to HTTP statuses and the UI to messages; the text is for people."""

from __future__ import annotations


class ServiceError(Exception):
    """Base: `code` is stable for machines, `message` says what is wrong, `details` carries specifics."""

    code = "error"
    http_status = 400

    def __init__(self, message: str, *, details: dict | list | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.details = details if details is not None else {}
        if code:
            self.code = code


class InvalidInput(ServiceError):
    """Bad input; `details` maps the field to what is wrong with it."""

    code = "invalid"
    http_status = 400


class NotAllowed(ServiceError):
    """The actor may not do this (role, approver group, four-eyes, token scope)."""

    code = "forbidden"
    http_status = 403


class NotFound(ServiceError):
    """The named object does not exist (or is not visible to the actor)."""

    code = "not_found"
    http_status = 404


class StateConflict(ServiceError):
    """The object is not in a state that allows this (already approved, finished, cancelled…)."""

    code = "conflict"
    http_status = 409


class PolicyViolation(StateConflict):
    """A workflow policy refuses the request; `unmet` names every condition not met."""

    code = "policy"

    def __init__(self, unmet: list[str]):
        super().__init__("; ".join(unmet), details={"unmet": unmet})
        self.unmet = unmet


class RegistryUnavailable(ServiceError):
    """The registry could not be reached or answered with an error; the message says which and why."""

    code = "registry"
    http_status = 502


class RegistryTimeout(RegistryUnavailable):
    """The registry did not answer within the time a web request waits for it (P2P_REGISTRY_WEB_TIMEOUT)."""

    code = "registry_timeout"
    http_status = 504
