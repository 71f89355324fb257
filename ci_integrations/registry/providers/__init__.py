"""Providers turn a RegistrySpec into an endpoint, credentials and (optionally) a server-side fast path.

Each provider lives in its own module and is loaded on first use, so a worker that only talks to ECR never imports
the Google or Azure SDKs (they cost tens of MiB of memory and seconds of import time).
"""

from __future__ import annotations

import importlib
import threading

from ..auth import Authenticator, BasicCredentials, CredentialSource, TokenFetcher, fetch_docker_token
from ..client import Endpoint, Manifest, RegistryClient
from ..errors import InvalidReference
from ..refs import ImageLocation, RegistrySpec
from ..transport import RetryPolicy, Timeouts

PROVIDERS = {
    "generic": "ci_integrations.registry.providers.generic.GenericProvider",
    "dockerhub": "ci_integrations.registry.providers.dockerhub.DockerHubProvider",
    "ecr": "ci_integrations.registry.providers.ecr.EcrProvider",
    "gar": "ci_integrations.registry.providers.gar.GarProvider",
    "acr": "ci_integrations.registry.providers.acr.AcrProvider",
}
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

    def same_registry(self, a: RegistrySpec, b: RegistrySpec) -> bool:
        return self.host(a) == provider_for(b).host(b)

    def fast_copy(self, src: ImageLocation, dst: ImageLocation, manifest: Manifest) -> str | None:
        """Copy server-side if this provider can; return the fast path's name, or None to use the plain path."""
        return None

    def push_credentials(self, spec: RegistrySpec) -> dict:
        """Short-lived credentials for `docker login`; generic Basic credentials are returned as they are."""
        source = self.credential_source(spec)
        creds = source() if source else None
        return {
            "username": creds.username if creds else None,
            "password": creds.password if creds else None,
            "expires_at": None,
            "registry": self.host(spec),
        }


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
    if ".dkr.ecr." in host and host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
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
    )
