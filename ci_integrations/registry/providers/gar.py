"""Google Artifact Registry (and gcr.io hosts, which GAR now serves): an access token as Basic oauth2accesstoken.

Push credentials for CI are a token of a service account impersonated for the bucket (see push_credentials).
Fast path: a new tag on an image already in the same repository is one Artifact Registry API call (create or move
the tag), with no manifest or blob traffic.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from dataclasses import dataclass
from urllib.parse import quote

from .. import budget as budgets
from ..auth import BasicCredentials, CredentialSource
from ..client import Manifest
from ..errors import (
    AccessDenied,
    AuthenticationError,
    CannotScope,
    DeadlineExceeded,
    RegistryError,
    TagConflict,
    remember_secret,
)
from ..refs import ImageLocation, RegistrySpec, RepositorySettings, check_repository
from . import Provider, PushCredentials, PushScope

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
REPOSITORY_CREATE_SECONDS = 60
PUSH_TOKEN_SECONDS = 3600  # what CI gets; google-auth's impersonation allows up to 12 hours
_GCR_LOCATIONS = {"gcr.io": "us", "us.gcr.io": "us", "eu.gcr.io": "europe", "asia.gcr.io": "asia"}
log = logging.getLogger(__name__)
_lock = threading.Lock()
_credentials: dict[tuple, object] = {}


def google_credentials(spec: RegistrySpec):
    """google-auth credentials: a stored service-account key, else Application Default Credentials."""
    creds = spec.credentials or {}
    info = creds.get("service_account_info") or creds.get("service_account_json")
    if info:
        from google.oauth2 import service_account

        if isinstance(info, str):
            info = json.loads(info)
        return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    import google.auth

    credentials, _ = google.auth.default(scopes=SCOPES)
    return credentials


def artifact_registry_client(spec: RegistrySpec):
    from google.cloud import artifactregistry_v1

    return artifactregistry_v1.ArtifactRegistryClient(credentials=_cached_credentials(spec))


def _cached_credentials(spec: RegistrySpec):
    """The spec's google-auth credentials, made once; None when none are stored and Application Default
    Credentials are absent (remembered too: looking for them probes the GCE metadata server, which takes seconds)."""
    key = (spec.url, json.dumps(spec.credentials or {}, sort_keys=True, default=str))
    with _lock:
        if key in _credentials:
            return _credentials[key]
        try:
            credentials = google_credentials(spec)
        except Exception as exc:
            if spec.credentials or type(exc).__name__ != "DefaultCredentialsError":
                raise
            log.info("no Google credentials stored or found for %s; pulling anonymously", spec.url)
            credentials = None
        _credentials[key] = credentials
        return credentials


@dataclass(frozen=True)
class GarPackage:
    project: str
    location: str
    repository: str
    package: str

    @property
    def repository_name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/repositories/{self.repository}"

    @property
    def parent(self) -> str:
        # Package ids are URL-encoded image paths ("team/app" → "team%2Fapp").
        return f"{self.repository_name}/packages/{quote(self.package, safe='')}"


def package_of(spec: RegistrySpec, repository: str) -> GarPackage | None:
    """Map host + image path to the Artifact Registry package; None when the path does not have that shape."""
    host = Provider().host(spec).split(":")[0]
    parts = repository.split("/")
    if host in _GCR_LOCATIONS:
        if len(parts) < 2:
            return None
        location = spec.options.get("location") or _GCR_LOCATIONS[host]
        return GarPackage(parts[0], location, host, "/".join(parts[1:]))
    location = spec.options.get("location") or (
        host[: -len("-docker.pkg.dev")] if host.endswith("-docker.pkg.dev") else None
    )
    if not location or len(parts) < 3:
        return None
    return GarPackage(parts[0], location, parts[1], "/".join(parts[2:]))


def _api_error(exc, what: str) -> RegistryError:
    """A google-api-core error as ours: 403 is AccessDenied, the rest a RegistryError with the API's message."""
    status = getattr(exc, "code", None)
    status = status if isinstance(status, int) else None
    kind = AccessDenied if status == 403 else RegistryError
    return kind(f"{what}: {getattr(exc, 'message', '') or type(exc).__name__}", status=status)


class GarProvider(Provider):
    name = "gar"

    def credential_source(self, spec: RegistrySpec) -> CredentialSource | None:
        creds = spec.credentials or {}
        if creds.get("username") and creds.get("password"):
            return super().credential_source(spec)  # _json_key or a pre-fetched token

        def source(refresh: bool = False) -> BasicCredentials | None:
            # No stored credentials and no Application Default Credentials: anonymous, which public images
            # (gcr.io/distroless/..., public Artifact Registry repositories) allow.
            if _cached_credentials(spec) is None:
                return None
            return BasicCredentials("oauth2accesstoken", self.access_token(spec, refresh=refresh)[0])

        return source

    def access_token(self, spec: RegistrySpec, *, refresh: bool = False) -> tuple[str, object]:
        credentials = _cached_credentials(spec)
        if credentials is None:
            raise AuthenticationError(
                f"{self.host(spec)}: no Google credentials are stored and Application Default Credentials are absent"
            )
        with _lock:
            if refresh or not getattr(credentials, "valid", False):
                import google.auth.transport.requests

                try:
                    budgets.bounded(
                        lambda: credentials.refresh(google.auth.transport.requests.Request()),
                        doing="a Google access token",
                        host="oauth2.googleapis.com",
                    )
                except DeadlineExceeded:
                    raise
                except Exception as exc:
                    raise AuthenticationError(f"could not get a Google access token: {type(exc).__name__}") from None
            return credentials.token, getattr(credentials, "expiry", None)

    def push_credentials(self, spec: RegistrySpec, scope: PushScope) -> PushCredentials:
        """An access token of the bucket's push service account, which the portal impersonates for at most
        PUSH_TOKEN_SECONDS; never the portal's own token.

        A Google access token is good for every API and resource its account may touch, and the portal's account
        can write every repository it promotes into. The push account should hold only Artifact Registry Writer on
        the bucket's Artifact Registry repository; the portal needs Service Account Token Creator on it.
        """
        check_repository(scope.repository)
        if not scope.service_account:
            raise CannotScope(
                f"Artifact Registry {self.host(spec)}: the portal's own access token is good for every repository and "
                "API it may use, so it is never handed out: set the bucket's push_service_account to a service "
                "account that can write this repository only (the portal needs roles/iam.serviceAccountTokenCreator "
                "on it)"
            )
        source = _cached_credentials(spec)
        if source is None:
            raise AuthenticationError(
                f"{self.host(spec)}: impersonating {scope.service_account} needs the portal's own Google credentials,"
                " and none are stored or found"
            )
        if scope.service_account == getattr(source, "service_account_email", None):
            raise CannotScope(
                f"push_service_account {scope.service_account} is the portal's own account; name one that can write "
                "this repository only"
            )
        from google.auth import impersonated_credentials
        from google.auth.transport.requests import Request

        target = impersonated_credentials.Credentials(
            source_credentials=source,
            target_principal=scope.service_account,
            target_scopes=SCOPES,  # Artifact Registry's Docker endpoint accepts no narrower OAuth scope
            lifetime=PUSH_TOKEN_SECONDS,
        )
        try:
            budgets.bounded(
                lambda: target.refresh(Request()), doing="generateAccessToken", host="iamcredentials.googleapis.com"
            )
        except DeadlineExceeded:
            raise
        except Exception as exc:
            raise AuthenticationError(
                f"could not impersonate {scope.service_account}: {type(exc).__name__} (does the portal hold "
                "roles/iam.serviceAccountTokenCreator on it?)"
            ) from None
        remember_secret(target.token)
        expiry = target.expiry or dt.datetime.now(dt.UTC) + dt.timedelta(seconds=PUSH_TOKEN_SECONDS)
        return PushCredentials(
            registry=self.host(spec),
            kind="basic",
            username="oauth2accesstoken",
            password=target.token,
            scope=scope.repository,
            expires_at=expiry if expiry.tzinfo else expiry.replace(tzinfo=dt.UTC),
            identity=scope.service_account,
            issuer="iamcredentials.generateAccessToken",
        )

    def repository_exists(self, spec: RegistrySpec, repository: str) -> bool | None:
        """Whether the Artifact Registry repository (the path's second part on pkg.dev) exists: a push into a
        missing one is refused. None for paths that do not map to one."""
        package = package_of(spec, repository)
        if package is None:
            return None
        from google.api_core import exceptions as google_errors

        try:
            budgets.bounded(
                lambda: artifact_registry_client(spec).get_repository(name=package.repository_name),
                doing="Artifact Registry get_repository",
                host="artifactregistry.googleapis.com",
            )
        except google_errors.NotFound:
            return False
        except google_errors.GoogleAPICallError as exc:
            raise _api_error(exc, "Artifact Registry get_repository") from None
        return True

    def create_repository(self, spec: RegistrySpec, repository: str, settings: RepositorySettings) -> None:
        """A DOCKER-format repository with the bucket's immutable tags and CMEK key (REST reference,
        projects.locations.repositories.create); waits for the operation, at most REPOSITORY_CREATE_SECONDS."""
        package = package_of(spec, repository)
        if package is None:
            raise CannotScope(f"{repository} does not name an Artifact Registry repository (project/repository/...)")
        from google.api_core import exceptions as google_errors
        from google.cloud import artifactregistry_v1

        wanted = artifactregistry_v1.Repository(
            format_=artifactregistry_v1.Repository.Format.DOCKER,
            docker_config=artifactregistry_v1.Repository.DockerRepositoryConfig(immutable_tags=settings.immutable_tags),
            kms_key_name=settings.kms_key,
        )
        try:
            operation = artifact_registry_client(spec).create_repository(
                parent=f"projects/{package.project}/locations/{package.location}",
                repository_id=package.repository,
                repository=wanted,
            )
            operation.result(timeout=REPOSITORY_CREATE_SECONDS)
        except google_errors.AlreadyExists:
            return
        except google_errors.GoogleAPICallError as exc:
            raise _api_error(exc, f"Artifact Registry create_repository {package.repository}") from None

    def fast_copy(self, src: ImageLocation, dst: ImageLocation, manifest: Manifest, *, notify=None) -> str | None:
        if (
            src.registry.provider != "gar"
            or not self.same_registry(src.registry, dst.registry)
            or src.repository != dst.repository
            or ":" in dst.reference
            or not dst.registry.options.get("fast_path", True)
        ):
            return None
        package = package_of(dst.registry, dst.repository)
        if package is None:
            return None
        from google.api_core import exceptions as google_errors
        from google.cloud import artifactregistry_v1
        from google.protobuf import field_mask_pb2

        client = artifact_registry_client(dst.registry)
        name = f"{package.parent}/tags/{dst.reference}"
        tag = artifactregistry_v1.Tag(name=name, version=f"{package.parent}/versions/{manifest.digest}")
        try:
            client.create_tag(parent=package.parent, tag_id=dst.reference, tag=tag)
        except google_errors.AlreadyExists:
            try:
                client.update_tag(tag=tag, update_mask=field_mask_pb2.FieldMask(paths=["version"]))
            except google_errors.FailedPrecondition as exc:  # immutable tags
                raise TagConflict(f"{dst} is an immutable tag in Artifact Registry: {exc.message}") from None
        return "gar-tag"
