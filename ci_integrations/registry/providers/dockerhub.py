"""Docker Hub: the API lives at registry-1.docker.io whatever name people use; tokens come from auth.docker.io."""

from __future__ import annotations

from dataclasses import replace

from ..client import Endpoint
from ..refs import RegistrySpec, docker_hub_repository
from . import Provider, PushCredentials, PushScope

_HUB_NAMES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", "hub.docker.com"}


class DockerHubProvider(Provider):
    name = "dockerhub"

    def endpoint(self, spec: RegistrySpec) -> Endpoint:
        endpoint = super().endpoint(spec) if spec.url else Endpoint("https://registry-1.docker.io")
        if endpoint.host.lower() in _HUB_NAMES:
            return Endpoint("https://registry-1.docker.io", verify=endpoint.verify)
        return endpoint  # a pull-through mirror of Hub

    def login_host(self, spec: RegistrySpec) -> str:
        host = self.host(spec)
        return "docker.io" if host == "registry-1.docker.io" else host  # the name images and `docker login` use

    def push_credentials(self, spec: RegistrySpec, scope: PushScope) -> PushCredentials:
        """A token for the repository as Docker Hub names it (`nginx` is library/nginx)."""
        return super().push_credentials(spec, replace(scope, repository=docker_hub_repository(scope.repository)))
