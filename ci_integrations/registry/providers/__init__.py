"""Providers turn a RegistrySpec into an endpoint, credentials and (optionally) a server-side fast path.

Each provider lives in its own module and is loaded on first use, so a worker that only talks to ECR never imports
the Google or Azure SDKs (they cost tens of MiB of memory and seconds of import time).
"""

from __future__ import annotations

import datetime as dt
import importlib
import threading
from dataclasses import dataclass, field

from ..auth import (
    Authenticator,
    BasicCredentials,
    CredentialSource,
    TokenFetcher,
    describe_url,
    fetch_docker_token,
    repository_scope,
)
from ..client import Endpoint, Manifest, RegistryClient
from ..errors import CannotScope, InvalidReference
from ..refs import ImageLocation, RegistrySpec, RepositorySettings, check_repository
from ..transport import RetryPolicy, Timeouts

PROVIDERS = {
    "generic": "ci_integrations.registry.providers.generic.GenericProvider",
    "dockerhub": "ci_integrations.registry.providers.dockerhub.DockerHubProvider",
    "ecr": "ci_integrations.registry.providers.ecr.EcrProvider",
    "gar": "ci_integrations.registry.providers.gar.GarProvider",
    "acr": "ci_integrations.registry.providers.acr.AcrProvider",
}


# Per-layer limits documented by registries that run as generic ones here. GHCR: "layers ... 10 GB each", and an
# upload must finish within 10 minutes (docs.github.com, "Working with the Container registry").
KNOWN_LAYER_LIMITS: dict[str, tuple[int, str]] = {
    "ghcr.io": (10 * 1000**3, "GHCR's limit of 10 GB per layer"),
}


@dataclass(frozen=True)
class PushScope:
    """What a push credential is for: one repository, and the bucket's settings that let a cloud scope it.

    role_arn (ECR): a role the portal may assume; the session is narrowed to the repository by a session policy.
    service_account (GAR): a service account the portal may impersonate, holding write access to that repository
    only. session_name names the session in the cloud's own logs (CloudTrail) so a push can be traced to a bucket.
    """

    repository: str
    role_arn: str = ""
    service_account: str = ""
    session_name: str = "p2p-push"


@dataclass(frozen=True)
class PushCredentials:
    """A credential for one repository. kind "bearer": send `token` as `Authorization: Bearer` (Docker's config.json
    `registrytoken`, `--registry-token` of oras, skopeo, crane); kind "basic": `docker login` with username and
    password. `identity` and `issuer` say who the registry will see and who issued it (for the audit log)."""

    registry: str
    kind: str
    scope: str
    expires_at: dt.datetime
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    identity: str = ""
    issuer: str = ""


_loaded: dict[str, Provider] = {}
_lock = threading.Lock()


class Provider:
    """Generic OCI behaviour; cloud providers override credentials, push_credentials and fast_copy."""

    name = "generic"

    def endpoint(self, spec: RegistrySpec) -> Endpoint:
        url = spec.url.strip().rstrip("/")
        if "://" not in url:
            url = f"https://{url}"
        scheme, _, rest = url.partition("://")
        if scheme not in ("http", "https"):
            raise InvalidReference(f"registry URL {spec.url!r} must start with https:// (or http:// for local ones)")
        host = rest.split("/", 1)[0]
        if not host:
            raise InvalidReference(f"registry URL {spec.url!r} has no host")
        verify: bool | str = spec.options.get("ca_bundle") or bool(spec.options.get("verify_tls", True))
        return Endpoint(base_url=f"{scheme}://{host}", verify=verify)

    def host(self, spec: RegistrySpec) -> str:
        return self.endpoint(spec).host

    def credential_source(self, spec: RegistrySpec) -> CredentialSource | None:
        creds = spec.credentials or {}
        if creds.get("username") is not None and creds.get("password") is not None:
            basic = BasicCredentials(str(creds["username"]), str(creds["password"]))
            return lambda refresh=False: basic
        return None

    def token_fetcher(self, spec: RegistrySpec) -> TokenFetcher:
        return fetch_docker_token

    def client(self, spec: RegistrySpec, *, pool_size: int = 16) -> RegistryClient:
        endpoint = self.endpoint(spec)
        authenticator = Authenticator(
            endpoint.host, self.credential_source(spec), token_fetcher=self.token_fetcher(spec)
        )
        return RegistryClient(
            endpoint,
            authenticator,
            policy=retry_policy(spec.options),
            timeouts=timeouts(spec.options),
            pool_size=pool_size,
            guard=spec.guard,
        )

    # Whether a cross-repository mount is expected to work without the registry's own opt-in (ECR needs its
    # BLOB_MOUNTING account setting); the `blob_mounting` option says so for one registry either way.
    mounts_by_default = True

    def mounts_blobs(self, spec: RegistrySpec) -> bool:
        """Whether preflight may count a blob in another repository of this registry as mounted, not moved."""
        value = spec.options.get("blob_mounting", self.mounts_by_default)
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")

    # The largest layer the registry documents that it takes, and the limit's name, for messages; None: unknown.
    max_layer: tuple[int, str] | None = None

    def layer_limit(self, spec: RegistrySpec) -> tuple[int, str] | None:
        """The largest layer spec's registry takes (bytes, and which limit that is), checked before a copy moves a
        byte: the registry's `max_layer_bytes` option, else what the provider or the host documents."""
        configured = spec.options.get("max_layer_bytes")
        if configured:
            return int(configured), "its max_layer_bytes setting"
        return KNOWN_LAYER_LIMITS.get(self.host(spec).lower(), self.max_layer)

    def repository_exists(self, spec: RegistrySpec, repository: str) -> bool | None:
        """Whether the repository exists, for registries where a push needs one (ECR, Artifact Registry); None when
        the registry creates repositories on push or cannot be asked."""
        return None

    def create_repository(self, spec: RegistrySpec, repository: str, settings: RepositorySettings) -> None:
        raise CannotScope(f"{self.name} registries create repositories on push; there is nothing to create")

    def same_registry(self, a: RegistrySpec, b: RegistrySpec) -> bool:
        return self.host(a) == provider_for(b).host(b)

    def fast_copy(self, src: ImageLocation, dst: ImageLocation, manifest: Manifest, *, notify=None) -> str | None:
        """Copy server-side if this provider can; return the fast path's name, or None to use the plain path.

        `notify` takes progress lines for the promotion's log."""
        return None

    def login_credentials(self, spec: RegistrySpec) -> BasicCredentials | None:
        """The registry-wide login the portal itself uses (stored, or fetched from the cloud), for another service of
        ours that pulls on our behalf (ACR import). Never for handing to CI: see push_credentials."""
        source = self.credential_source(spec)
        return source() if source else None

    def push_credentials(self, spec: RegistrySpec, scope: PushScope) -> PushCredentials:
        """Credentials that can pull and push `scope.repository` and nothing else, for as short a time as the
        registry allows.

        Generic OCI registries (distribution, Harbor, Docker Hub, GHCR, Quay, ACR): a bearer token for
        `repository:<repo>:pull,push` from the token service the registry names in its challenge, asked for with the
        portal's credentials. A registry with Basic auth only (or none) cannot scope anything: CannotScope.
        """
        repository = check_repository(scope.repository)
        wanted = repository_scope(repository, "pull", "push")
        with self.client(spec, pool_size=1) as client:
            token, lifetime, challenge = client.transport.scoped_token((wanted,))
        return PushCredentials(
            registry=self.login_host(spec),
            kind="bearer",
            token=token,
            scope=wanted,
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lifetime),
            issuer=describe_url(challenge.params["realm"]),
        )

    def login_host(self, spec: RegistrySpec) -> str:
        """The host name clients log in to (what `docker login` and image names use)."""
        return self.host(spec)


def provider_for(spec: RegistrySpec) -> Provider:
    name = (spec.provider or "generic").lower()
    with _lock:
        provider = _loaded.get(name)
        if provider is None:
            dotted = PROVIDERS.get(name)
            if dotted is None:
                known = ", ".join(PROVIDERS)
                raise InvalidReference(f"unknown registry provider {spec.provider!r}; use one of {known}")
            module_name, _, class_name = dotted.rpartition(".")
            provider = _loaded[name] = getattr(importlib.import_module(module_name), class_name)()
        return provider


def provider_name_for_host(host: str) -> str:
    """Guess the provider from a registry host (for references typed on the command line)."""
    host = host.lower().split(":", 1)[0]
    if (".dkr.ecr." in host or ".dkr.ecr-fips." in host) and host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return "ecr"
    if host.endswith("-docker.pkg.dev") or host == "gcr.io" or host.endswith(".gcr.io"):
        return "gar"
    if host.endswith(".azurecr.io") or host.endswith(".azurecr.cn") or host.endswith(".azurecr.us"):
        return "acr"
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return "dockerhub"
    return "generic"


def retry_policy(options: dict) -> RetryPolicy:
    default = RetryPolicy()
    return RetryPolicy(
        attempts=int(options.get("retry_attempts", default.attempts)),
        base_delay=float(options.get("retry_base_delay", default.base_delay)),
        max_delay=float(options.get("retry_max_delay", default.max_delay)),
        max_retry_after=float(options.get("retry_max_after", default.max_retry_after)),
    )


def timeouts(options: dict) -> Timeouts:
    default = Timeouts()
    return Timeouts(
        connect=float(options.get("connect_timeout", default.connect)),
        read=float(options.get("read_timeout", default.read)),
        stall=float(options.get("stall_timeout", default.stall)),
    )
