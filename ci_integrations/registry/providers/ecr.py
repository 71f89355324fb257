"""Amazon ECR: Basic `AWS:<token>` from `get_authorization_token`, and a same-repository retag with put_image.

The token lasts 12 hours; we keep it until 5 minutes before it expires. Blob mounting needs nothing special: ECR
hosts are per account and region, so "same host" is exactly "same account and region".
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import threading

from ..auth import BasicCredentials, CredentialSource
from ..client import Manifest
from ..errors import AccessDenied, AuthenticationError, NotFound, TagConflict, remember_secret
from ..refs import ImageLocation, RegistrySpec
from . import Provider

_HOST_RE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
REFRESH_MARGIN = dt.timedelta(minutes=5)
_tokens: dict[tuple, tuple[BasicCredentials, dt.datetime]] = {}
_lock = threading.Lock()


def ecr_client(spec: RegistrySpec):
    """A boto3 ECR client for the spec's region and credentials (ambient chain when none are stored)."""
    import boto3

    creds = spec.credentials or {}
    kwargs = {}
    if creds.get("aws_access_key_id"):
        remember_secret(creds.get("aws_secret_access_key"), creds.get("aws_session_token"))
        kwargs = {
            "aws_access_key_id": creds["aws_access_key_id"],
            "aws_secret_access_key": creds.get("aws_secret_access_key"),
            "aws_session_token": creds.get("aws_session_token"),
        }
    return boto3.client("ecr", region_name=region_of(spec), **kwargs)


def region_of(spec: RegistrySpec) -> str:
    match = _HOST_RE.match(Provider().host(spec).split(":")[0])
    region = spec.options.get("region") or (match.group("region") if match else None)
    if not region:
        raise AuthenticationError(f"ECR registry {spec.url} needs options.region")
    return region


def registry_id_of(spec: RegistrySpec) -> str | None:
    match = _HOST_RE.match(Provider().host(spec).split(":")[0])
    return spec.options.get("registry_id") or (match.group("account") if match else None)


def _sdk_error(exc: Exception, what: str) -> Exception:
    """Map botocore errors to ours without dragging botocore into the module's imports."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
    message = f"{what}: {code or type(exc).__name__}"
    if code in ("AccessDeniedException", "UnrecognizedClientException", "ExpiredTokenException"):
        return AccessDenied(message, code=code)
    if code in ("RepositoryNotFoundException", "ImageNotFoundException"):
        return NotFound(message, code=code)
    return exc


class EcrProvider(Provider):
    name = "ecr"

    def credential_source(self, spec: RegistrySpec) -> CredentialSource | None:
        creds = spec.credentials or {}
        if creds.get("username") and creds.get("password"):
            return super().credential_source(spec)  # a token someone already fetched
        return lambda refresh=False: self.token(spec, refresh=refresh)[0]

    def token(self, spec: RegistrySpec, *, refresh: bool = False) -> tuple[BasicCredentials, dt.datetime]:
        """The registry login for spec, from cache unless it is within REFRESH_MARGIN of expiring."""
        creds = spec.credentials or {}
        key = (region_of(spec), registry_id_of(spec), creds.get("aws_access_key_id"))
        now = dt.datetime.now(dt.UTC)
        with _lock:
            cached = _tokens.get(key)
        if cached and not refresh and cached[1] - REFRESH_MARGIN > now:
            return cached
        client = ecr_client(spec)
        registry_id = registry_id_of(spec)
        try:
            answer = client.get_authorization_token(**({"registryIds": [registry_id]} if registry_id else {}))
        except Exception as exc:
            raise _sdk_error(exc, "ECR get_authorization_token") from None
        data = answer["authorizationData"][0]
        username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
        expires_at = data.get("expiresAt") or now + dt.timedelta(hours=12)
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=dt.UTC)
        fresh = (BasicCredentials(username, password), expires_at)
        with _lock:
            _tokens[key] = fresh
        return fresh

    def push_credentials(self, spec: RegistrySpec) -> dict:
        creds = spec.credentials or {}
        if creds.get("username") and creds.get("password"):
            return super().push_credentials(spec)
        basic, expires_at = self.token(spec)
        return {
            "username": basic.username,
            "password": basic.password,
            "expires_at": expires_at.isoformat(),
            "registry": self.host(spec),
        }

    def fast_copy(self, src: ImageLocation, dst: ImageLocation, manifest: Manifest) -> str | None:
        """Same repository, new tag: put_image with the manifest ECR already has (no blob traffic at all)."""
        if (
            src.registry.provider != "ecr"
            or not self.same_registry(src.registry, dst.registry)
            or src.repository != dst.repository
            or ":" in dst.reference
        ):
            return None
        client = ecr_client(dst.registry)
        registry_id = registry_id_of(dst.registry)
        ids = {"registryId": registry_id} if registry_id else {}
        try:
            found = client.batch_get_image(
                repositoryName=dst.repository,
                imageIds=[{"imageDigest": manifest.digest}],
                acceptedMediaTypes=[manifest.media_type],
                **ids,
            )
        except Exception as exc:
            raise _sdk_error(exc, "ECR batch_get_image") from None
        if not found.get("images"):
            return None
        image = found["images"][0]
        try:
            client.put_image(
                repositoryName=dst.repository,
                imageManifest=image["imageManifest"],
                imageManifestMediaType=image.get("imageManifestMediaType") or manifest.media_type,
                imageTag=dst.reference,
                imageDigest=manifest.digest,
                **ids,
            )
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("ImageAlreadyExistsException", "ImageTagAlreadyExistsException"):
                # Either the tag already names this digest (fine) or it is an immutable tag holding another image.
                holder = client.batch_get_image(
                    repositoryName=dst.repository, imageIds=[{"imageTag": dst.reference}], **ids
                ).get("images") or [{}]
                existing = holder[0].get("imageId", {}).get("imageDigest")
                if existing == manifest.digest:
                    return "ecr-retag"
                raise TagConflict(
                    f"{dst} is an immutable tag in ECR and holds {existing}", code=code, existing_digest=existing
                ) from None
            raise _sdk_error(exc, "ECR put_image") from None
        return "ecr-retag"
