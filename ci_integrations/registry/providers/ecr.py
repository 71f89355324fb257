"""Amazon ECR: Basic `AWS:<token>` from `get_authorization_token`, and a same-repository retag with put_image.

Push credentials for CI come from a role assumed with a session policy for one repository (see push_credentials).

The token lasts 12 hours; we keep it until 5 minutes before it expires. Blob mounting needs nothing special: ECR
hosts are per account and region, so "same host" is exactly "same account and region"; ECR mounts only when the
account's BLOB_MOUNTING setting is on, and otherwise answers the mount as an ordinary upload.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import threading
from dataclasses import replace

from .. import budget as budgets
from ..auth import BasicCredentials, CredentialSource
from ..client import Manifest
from ..errors import AccessDenied, AuthenticationError, CannotScope, NotFound, TagConflict, remember_secret
from ..refs import ImageLocation, RegistrySpec, RepositorySettings, check_repository
from . import Provider, PushCredentials, PushScope

_HOST_RE = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
REFRESH_MARGIN = dt.timedelta(minutes=5)
# A push credential's session: one hour is the most STS allows when the portal itself runs as an assumed role.
PUSH_SESSION_SECONDS = 3600
PUSH_ACTIONS = [
    "ecr:BatchCheckLayerAvailability",
    "ecr:BatchGetImage",
    "ecr:GetDownloadUrlForLayer",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:PutImage",
]
_tokens: dict[tuple, tuple[BasicCredentials, dt.datetime]] = {}
_lock = threading.Lock()


def ecr_client(spec: RegistrySpec):
    """A boto3 ECR client for the spec's region and credentials (ambient chain when none are stored)."""
    import boto3

    return boto3.client("ecr", region_name=region_of(spec), **aws_credentials(spec))


def sts_client(spec: RegistrySpec):
    """A boto3 STS client in the registry's region, with the portal's own credentials (stored, else ambient)."""
    import boto3

    return boto3.client("sts", region_name=region_of(spec), **aws_credentials(spec))


def aws_credentials(spec: RegistrySpec) -> dict:
    """boto3 keyword arguments for the spec's stored AWS keys; empty for the ambient chain."""
    creds = spec.credentials or {}
    if not creds.get("aws_access_key_id"):
        return {}
    remember_secret(creds.get("aws_secret_access_key"), creds.get("aws_session_token"))
    return {
        "aws_access_key_id": creds["aws_access_key_id"],
        "aws_secret_access_key": creds.get("aws_secret_access_key"),
        "aws_session_token": creds.get("aws_session_token"),
    }


def repository_arn(region: str, account: str, repository: str) -> str:
    """arn:<partition>:ecr:<region>:<account>:repository/<name>, in the partition the region belongs to."""
    partition = "aws-cn" if region.startswith("cn-") else "aws-us-gov" if region.startswith("us-gov-") else "aws"
    return f"arn:{partition}:ecr:{region}:{account}:repository/{repository}"


def push_session_policy(repository_arn: str) -> dict:
    """The session policy of a push credential: push and pull on one repository, and the login call (which IAM only
    knows on "*"; the token it gives carries the session's rights, so it reaches no other repository)."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "PushPullThisRepository", "Effect": "Allow", "Action": PUSH_ACTIONS, "Resource": repository_arn},
            {"Sid": "Login", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        ],
    }


def session_name(wanted: str) -> str:
    """An STS RoleSessionName (2–64 of [A-Za-z0-9+=,.@_-]) from a description such as 'p2p-shop-dev'."""
    cleaned = re.sub(r"[^A-Za-z0-9+=,.@_-]", "-", wanted)[:64]
    return cleaned if len(cleaned) >= 2 else "p2p-push"


def _aware(moment: dt.datetime | None) -> dt.datetime:
    if moment is None:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=PUSH_SESSION_SECONDS)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def region_of(spec: RegistrySpec) -> str:
    match = _HOST_RE.match(Provider().host(spec).split(":")[0])
    region = spec.options.get("region") or (match.group("region") if match else None)
    if not region:
        raise AuthenticationError(f"ECR registry {spec.url} needs options.region")
    return region


def registry_id_of(spec: RegistrySpec) -> str | None:
    match = _HOST_RE.match(Provider().host(spec).split(":")[0])
    return spec.options.get("registry_id") or (match.group("account") if match else None)


def _api_host(spec: RegistrySpec) -> str:
    return f"api.ecr.{region_of(spec)}.amazonaws.com"


def _sdk_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


def _sdk_error(exc: Exception, what: str) -> Exception:
    """Map botocore errors to ours without dragging botocore into the module's imports."""
    code = _sdk_code(exc)
    message = f"{what}: {code or type(exc).__name__}"
    if code in ("AccessDeniedException", "UnrecognizedClientException", "ExpiredTokenException"):
        return AccessDenied(message, code=code)
    if code in ("RepositoryNotFoundException", "ImageNotFoundException"):
        return NotFound(message, code=code)
    return exc


class EcrProvider(Provider):
    name = "ecr"
    # ECR answers a mount as an ordinary upload (202) unless the account turned BLOB_MOUNTING on and both
    # repositories share encryption settings; `blob_mounting: true` says the account did.
    mounts_by_default = False
    # Amazon ECR service quotas: "Layer size: 52,000 MiB" (maximum size of a layer, not adjustable).
    max_layer = (52_000 * 1024 * 1024, "ECR's limit of 52,000 MiB per layer")

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
            answer = budgets.bounded(
                lambda: client.get_authorization_token(**({"registryIds": [registry_id]} if registry_id else {})),
                doing="ECR get_authorization_token",
                host=_api_host(spec),
            )
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

    def repository_exists(self, spec: RegistrySpec, repository: str) -> bool | None:
        """describe_repositories: ECR refuses a push into a repository that does not exist (no create on push)."""
        ids = {"registryId": registry_id_of(spec)} if registry_id_of(spec) else {}
        try:
            budgets.bounded(
                lambda: ecr_client(spec).describe_repositories(repositoryNames=[repository], **ids),
                doing="ECR describe_repositories",
                host=_api_host(spec),
            )
        except Exception as exc:
            if _sdk_code(exc) == "RepositoryNotFoundException":
                return False
            raise _sdk_error(exc, "ECR describe_repositories") from None
        return True

    def create_repository(self, spec: RegistrySpec, repository: str, settings: RepositorySettings) -> None:
        """create_repository with the bucket's tag mutability, scan-on-push and encryption (ECR API reference,
        CreateRepository); one created meanwhile by someone else is fine."""
        ids = {"registryId": registry_id_of(spec)} if registry_id_of(spec) else {}
        encryption = {}
        if settings.encryption:
            encryption = {"encryptionType": settings.encryption.upper()}
            if settings.kms_key:
                encryption["kmsKey"] = settings.kms_key
        try:
            budgets.bounded(
                lambda: ecr_client(spec).create_repository(
                    repositoryName=repository,
                    imageTagMutability="IMMUTABLE" if settings.immutable_tags else "MUTABLE",
                    imageScanningConfiguration={"scanOnPush": settings.scan_on_push},
                    **({"encryptionConfiguration": encryption} if encryption else {}),
                    **ids,
                ),
                doing="ECR create_repository",
                host=_api_host(spec),
            )
        except Exception as exc:
            if _sdk_code(exc) != "RepositoryAlreadyExistsException":
                raise _sdk_error(exc, f"ECR create_repository {repository}") from None

    def push_credentials(self, spec: RegistrySpec, scope: PushScope) -> PushCredentials:
        """An ECR login that can push and pull one repository only, valid for at most PUSH_SESSION_SECONDS.

        ECR tokens carry the rights of whoever asked for them, and the portal's own role can write every repository.
        So the portal assumes the bucket's push role with a session policy naming only that repository's ARN (the
        session's rights are the intersection of the role's and the policy's) and asks for the token as that session.
        """
        repository = check_repository(scope.repository)
        if not scope.role_arn:
            raise CannotScope(
                f"ECR registry {self.host(spec)}: an ECR login is good for every repository the caller's role can "
                "reach, so none is handed out without a role to narrow: set the bucket's push_role_arn to a role "
                "the portal may assume (sts:AssumeRole) that can push to this repository"
            )
        region, account = region_of(spec), registry_id_of(spec)
        if not account:
            raise CannotScope(f"ECR registry {spec.url}: set options.registry_id (the account) to name the repository")
        arn = repository_arn(region, account, repository)
        try:
            answer = budgets.bounded(
                lambda: sts_client(spec).assume_role(
                    RoleArn=scope.role_arn,
                    RoleSessionName=session_name(scope.session_name),
                    Policy=json.dumps(push_session_policy(arn), separators=(",", ":")),
                    DurationSeconds=PUSH_SESSION_SECONDS,
                ),
                doing="STS assume_role",
                host=f"sts.{region}.amazonaws.com",
            )
        except Exception as exc:
            raise _sdk_error(exc, f"STS assume_role {scope.role_arn}") from None
        session = answer["Credentials"]
        remember_secret(session["SecretAccessKey"], session["SessionToken"])
        narrowed = replace(
            spec,
            credentials={
                "aws_access_key_id": session["AccessKeyId"],
                "aws_secret_access_key": session["SecretAccessKey"],
                "aws_session_token": session["SessionToken"],
            },
        )
        try:
            token = budgets.bounded(
                lambda: ecr_client(narrowed).get_authorization_token(registryIds=[account]),
                doing="ECR get_authorization_token",
                host=_api_host(spec),
            )
        except Exception as exc:
            raise _sdk_error(exc, "ECR get_authorization_token (as the push role)") from None
        data = token["authorizationData"][0]
        username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
        remember_secret(password)
        # An ECR token lives 12 hours but dies with the session behind it; report the earlier of the two.
        expires_at = min(_aware(data.get("expiresAt")), _aware(session.get("Expiration")))
        return PushCredentials(
            registry=self.host(spec),
            kind="basic",
            username=username,
            password=password,
            scope=arn,
            expires_at=expires_at,
            identity=answer.get("AssumedRoleUser", {}).get("Arn", scope.role_arn),
            issuer="ecr:GetAuthorizationToken",
        )

    def fast_copy(self, src: ImageLocation, dst: ImageLocation, manifest: Manifest, *, notify=None) -> str | None:
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
