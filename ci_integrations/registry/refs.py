"""Image references: `host[:port]/path[:tag][@digest]`, with Docker Hub's defaults (docker.io, library/).

The grammar is the OCI distribution spec's (and github.com/distribution/reference's). Errors name the part that is
wrong, because these messages reach people typing references into CI configs and forms.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import InvalidReference

DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_COMPONENT_RE = re.compile(rf"^{_PATH_COMPONENT}$")
_REPOSITORY_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
# A tag and a verifiable digest as regular expressions that a whole value must match (fullmatch). They are written
# in the common subset of Python's and ECMA-262's syntax, so the API's schema can state the same rule.
TAG_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
DIGEST_PATTERN = r"sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128}"
_TAG_RE = re.compile(TAG_PATTERN)
_VERIFIABLE_DIGEST_RE = re.compile(DIGEST_PATTERN)
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
# A TCP port, 0 to 65535, and an IPv6 address in brackets (the eight-group forms with at most one "::").
PORT_PATTERN = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
_H16 = "[0-9a-fA-F]{1,4}"
IPV6_PATTERN = (
    rf"\[(?:(?:{_H16}:){{7}}{_H16}|(?:{_H16}:){{1,7}}:|(?:{_H16}:){{1,6}}:{_H16}|(?:{_H16}:){{1,5}}(?::{_H16}){{1,2}}"
    rf"|(?:{_H16}:){{1,4}}(?::{_H16}){{1,3}}|(?:{_H16}:){{1,3}}(?::{_H16}){{1,4}}|(?:{_H16}:){{1,2}}(?::{_H16}){{1,5}}"
    rf"|{_H16}:(?::{_H16}){{1,6}}|:(?:(?::{_H16}){{1,7}}|:))\]"
)
_HOST_RE = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{IPV6_PATTERN})(?::{PORT_PATTERN})?")
# A first path component is a registry host when it has a '.' or a ':' or is `localhost` (Docker's rule), and is then
# a valid host; anything else is the start of a Docker Hub repository.
_HOST_COMPONENT = (
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*:{PORT_PATTERN}|{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})+"
    rf"|localhost|{IPV6_PATTERN}(?::{PORT_PATTERN})?)"
)
# A first component that cannot be taken for a host: no '.' (a path component holds no ':').
_FIRST_PATH_COMPONENT = r"[a-z0-9]+(?:(?:_|__|-+)[a-z0-9]+)*"
# What parse_reference accepts, as one pattern (lengths aside: see MAX_REPOSITORY_LENGTH): a host and a path, a path
# of two or more components whose first is not host-like, or a single component (Docker Hub's library/).
IMAGE_REFERENCE_PATTERN = (
    rf"(?:{_HOST_COMPONENT}/{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*|{_FIRST_PATH_COMPONENT}(?:/{_PATH_COMPONENT})+"
    rf"|{_PATH_COMPONENT})(?::(?:{TAG_PATTERN}))?(?:@(?:{DIGEST_PATTERN}))?"
)
MAX_REPOSITORY_LENGTH = 255


def is_valid_tag(tag: str) -> bool:
    return isinstance(tag, str) and bool(_TAG_RE.fullmatch(tag))


def is_valid_repository(repository: str) -> bool:
    return (
        isinstance(repository, str)
        and len(repository) <= MAX_REPOSITORY_LENGTH
        and bool(_REPOSITORY_RE.match(repository))
    )


def is_valid_digest(digest: str) -> bool:
    """sha256:<64 lowercase hex> or sha512:<128 lowercase hex>; other algorithms cannot be verified here."""
    return isinstance(digest, str) and bool(_VERIFIABLE_DIGEST_RE.fullmatch(digest))


def is_valid_host(host: str) -> bool:
    return isinstance(host, str) and bool(_HOST_RE.fullmatch(host))


def check_tag(tag: str) -> str:
    if not is_valid_tag(tag):
        raise InvalidReference(
            f"invalid tag {tag!r}: use up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"
        )
    return tag


def check_digest(digest: str) -> str:
    if not is_valid_digest(digest):
        raise InvalidReference(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex> (or sha512:<128 hex>)")
    return digest


def check_repository(repository: str) -> str:
    if not isinstance(repository, str) or not repository:
        raise InvalidReference("repository is empty")
    if len(repository) > MAX_REPOSITORY_LENGTH:
        raise InvalidReference(f"repository is longer than {MAX_REPOSITORY_LENGTH} characters")
    for component in repository.split("/"):
        if not _PATH_COMPONENT_RE.match(component):
            hint = " (must be lowercase)" if component.lower() != component else ""
            raise InvalidReference(
                f"invalid repository path component {component!r} in {repository!r}{hint}: use lowercase letters and "
                "digits separated by '.', '_', '__' or '-'"
            )
    return repository


def check_reference(reference: str) -> str:
    """A manifest reference: a tag or a digest."""
    if isinstance(reference, str) and ":" in reference:
        return check_digest(reference)
    return check_tag(reference)


@dataclass(frozen=True)
class ImageReference:
    """A parsed, normalised image reference. `tag` and `digest` may both be set (the digest wins)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag (Docker's default "latest")."""
        return self.digest or self.tag or "latest"

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def docker_hub_repository(repository: str) -> str:
    """Docker Hub's name for a repository: official images (one path component) live under library/."""
    return (
        f"library/{repository}" if isinstance(repository, str) and repository and "/" not in repository else repository
    )


def _looks_like_host(component: str) -> bool:
    # Docker's rule: the first component is a registry host if it has a '.' or ':' or is localhost.
    return "." in component or ":" in component or component == "localhost" or component.startswith("[")


def parse_reference(text: str) -> ImageReference:
    """Parse `host[:port]/path[:tag][@sha256:…]`; raises InvalidReference naming the wrong part."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReference("image reference is empty")
    if text != text.strip() or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise InvalidReference(f"image reference {text!r} contains whitespace or control characters")
    if "://" in text:
        raise InvalidReference(f"image reference {text!r} must not contain a URL scheme; write host/repository:tag")
    remainder, digest = text, None
    if "@" in remainder:
        remainder, _, digest = remainder.partition("@")
        check_digest(digest)
    host = DOCKER_HUB
    first, slash, rest = remainder.partition("/")
    if slash and _looks_like_host(first):
        if not is_valid_host(first):
            raise InvalidReference(f"invalid registry host {first!r} in {text!r}")
        host, remainder = first, rest
    tag = None
    last_slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > last_slash:
        remainder, tag = remainder[:colon], remainder[colon + 1 :]
        check_tag(tag)
    repository = remainder
    if host in _DOCKER_HUB_ALIASES:
        host = DOCKER_HUB
        repository = docker_hub_repository(repository)
    if not repository:
        raise InvalidReference(f"image reference {text!r} has no repository")
    check_repository(repository)
    if len(host) + 1 + len(repository) > MAX_REPOSITORY_LENGTH:
        raise InvalidReference(f"image name {host}/{repository} is longer than {MAX_REPOSITORY_LENGTH} characters")
    return ImageReference(registry=host, repository=repository, tag=tag, digest=digest)


@dataclass(frozen=True)
class RegistrySpec:
    """A registry as the Django side describes it; providers turn it into an endpoint and auth.

    url: "https://host[:port]" (or "http://…" for plain-HTTP local registries). credentials: None means ambient (the
    cloud's default chain, or anonymous for generic); else {"username", "password"} or provider-specific keys.
    options: provider settings (region, project, location, tenant_id, subscription_id, resource_group, …) and
    transport tuning (connect_timeout, read_timeout, retry_attempts, retry_base_delay, verify_tls, ca_bundle).
    guard: called as guard(scheme, host, port) before every request the client sends for this registry (the first,
    each redirect hop, each token request); it raises DestinationRefused to refuse. None connects anywhere. See
    `destinations.address_guard`.
    """

    provider: str
    url: str
    options: dict = field(default_factory=dict)
    credentials: dict | None = field(default=None, repr=False)
    guard: Callable[[str, str, int], None] | None = field(default=None, repr=False)

    def __hash__(self) -> int:  # options/credentials are dicts; identity of a registry is provider + url
        return hash((self.provider, self.url))


@dataclass(frozen=True)
class RepositorySettings:
    """How to create the repository when it is missing (a bucket's `create_repository: true`).

    immutable_tags: ECR IMMUTABLE tag mutability, Artifact Registry immutable tags. scan_on_push: ECR basic scanning
    on push. encryption: ECR "AES256" or "KMS" ("" for the registry's default); kms_key: the KMS key (ECR) or the
    Cloud KMS key name (Artifact Registry CMEK).
    """

    immutable_tags: bool = False
    scan_on_push: bool = False
    encryption: str = ""
    kms_key: str = ""


@dataclass(frozen=True)
class ImageLocation:
    """One image on one registry: repository plus a tag or digest.

    `create`, when set, allows creating the repository before a push (ECR and Artifact Registry need one to exist).
    """

    registry: RegistrySpec
    repository: str
    reference: str
    create: RepositorySettings | None = None

    def __post_init__(self) -> None:
        # Docker Hub (and its pull-through mirrors) serve official images under library/: "nginx" is library/nginx
        # there, as `docker pull nginx` means (distribution/reference, ParseNormalizedNamed).
        if (self.registry.provider or "").lower() == "dockerhub":
            object.__setattr__(self, "repository", docker_hub_repository(self.repository))

    def __str__(self) -> str:
        host = self.registry.url.split("://", 1)[-1].rstrip("/")
        separator = "@" if ":" in self.reference else ":"
        return f"{host}/{self.repository}{separator}{self.reference}"
