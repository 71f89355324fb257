"""Any OCI registry (Harbor, Quay, GitLab, distribution, …): anonymous or Basic credentials, bearer via challenge."""

from __future__ import annotations

from . import Provider


class GenericProvider(Provider):
    name = "generic"
