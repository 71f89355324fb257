"""Repositories that must exist before a push (ECR; Artifact Registry), created when the bucket allows it.

ECR answers a push into a missing repository with NAME_UNKNOWN ("The repository with name '…' does not exist"):
it never creates one on push (Amazon ECR User Guide, "Creating a private repository"). Artifact Registry refuses a
push into a missing repository unless the project turned on "create on push" for gcr.io domains. Registries that
create repositories on push (distribution, Harbor projects aside, Docker Hub, GHCR) answer None to "exists?".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .providers import provider_for
from .refs import ImageLocation
from .transport import RetryNotice, announce

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepositoryState:
    """exists: True, False, or None when the registry creates repositories on push (nothing to check).
    creatable: whether the bucket allows creating it (`create_repository: true`)."""

    exists: bool | None
    creatable: bool

    @property
    def will_be_created(self) -> bool:
        return self.exists is False and self.creatable

    @property
    def blocks_the_copy(self) -> bool:
        return self.exists is False and not self.creatable


def repository_state(location: ImageLocation) -> RepositoryState:
    """Whether location's repository exists (one cloud API call for ECR and Artifact Registry, none otherwise)."""
    provider = provider_for(location.registry)
    return RepositoryState(
        exists=provider.repository_exists(location.registry, location.repository),
        creatable=location.create is not None,
    )


def ensure_repository(location: ImageLocation, *, notify: RetryNotice | None = None) -> bool:
    """Create location's repository when it is missing and its bucket allows it; True when it was created (and
    `notify`, the promotion's log, is told).

    Without `create`, nothing is asked: a missing repository then fails the push with the registry's own words.
    """
    if location.create is None:
        return False
    provider = provider_for(location.registry)
    if provider.repository_exists(location.registry, location.repository) is not False:
        return False
    provider.create_repository(location.registry, location.repository, location.create)
    announce(
        notify,
        f"created repository {location.repository} on {provider.host(location.registry)} (create_repository)",
        logger=log,
    )
    return True
