"""Registry credentials: handing push credentials to CI, and rotating the key of secrets stored at rest.

May import: models, registry, audit, secrets.
"""

from __future__ import annotations

from django.db import transaction

from ci_integrations import registry
from ci_integrations.encryption import CredentialsUnreadable, reencrypt
from ci_integrations.models import Bucket, Registry, Webhook
from ci_integrations.registry import errors as registry_errors
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.errors import NotAllowed, RegistryUnavailable, StateConflict
from ci_integrations.services.registry_budget import registry_timeout, web_budget


def bucket_push_credentials(*, bucket: Bucket, actor: Actor) -> dict:
    """Short-lived credentials that can pull and push the bucket's repository and nothing else. Audited.

    Only a bucket with allow_push_credentials that is one of its workflow's entry environments (or allows direct
    registration) hands them out, and only when its registry can scope them to that one repository: a bearer token
    from the registry's token service, an ECR login of the bucket's push role narrowed to the repository, or a token
    of the bucket's impersonated Google service account. Anything wider (the stored password, a registry-wide token)
    is never handed out: StateConflict says what to configure. The audit entry records who, bucket, repository,
    scope, identity and expiry, never the secret.
    """
    if not bucket.allow_push_credentials:
        raise NotAllowed(
            f"bucket {bucket} does not hand out push credentials (allow_push_credentials is off)",
            details={"env": bucket.env},
        )
    refusal = bucket.direct_arrival_refusal()
    if refusal is not None:
        message, entries = refusal
        raise NotAllowed(message, code="not_entry_environment", details={"env": bucket.env, "entry": entries})
    _repository_is_the_buckets_own(bucket)
    scope = registry.PushScope(
        repository=bucket.repository,
        role_arn=bucket.push_role_arn,
        service_account=bucket.push_service_account,
        session_name=f"p2p-{bucket.integration.name}-{bucket.env}",
    )
    try:
        with web_budget("push credentials"):
            issued = registry.push_credentials(bucket.registry.spec(), scope)
    except registry_errors.DeadlineExceeded as exc:
        raise registry_timeout(exc, registry_name=bucket.registry.name) from None
    except registry_errors.CannotScope as exc:
        raise StateConflict(
            f"bucket {bucket} cannot hand out push credentials: {exc.message}",
            code="cannot_scope",
            details={"env": bucket.env, "registry": bucket.registry.name, "provider": bucket.registry.provider},
        ) from None
    except registry_errors.RegistryError as exc:
        raise RegistryUnavailable(f"registry {bucket.registry.name}: {exc.message}") from None
    expires_at = issued.expires_at.isoformat()
    audit_record(
        actor=actor,
        action="push_credentials.issued",
        obj=bucket,
        integration=bucket.integration.name,
        environment=bucket.env,
        after={
            "registry": issued.registry,
            "repository": bucket.repository,
            "kind": issued.kind,
            "scope": issued.scope,
            "identity": issued.identity,
            "issuer": issued.issuer,
            "expires_at": expires_at,
        },
    )
    return {
        "registry": issued.registry,
        "type": issued.kind,
        "username": issued.username,
        "password": issued.password,
        "token": issued.token,
        "scope": issued.scope,
        "expires_at": expires_at,
        "repository": bucket.repository,
        "image": bucket.image_name,
    }


def _repository_is_the_buckets_own(bucket: Bucket) -> None:
    """Refuse when another bucket that takes no direct pushes shares the repository: a credential for it would write
    that bucket's tags too (a later environment's, or another integration's)."""
    sharing = (
        Bucket.objects.filter(registry__url=bucket.registry.url, repository=bucket.repository)
        .exclude(pk=bucket.pk)
        .select_related("integration__workflow")
    )
    for other in sharing:
        if other.direct_arrival_refusal() is not None:
            raise StateConflict(
                f"bucket {bucket} shares repository {bucket.repository} with bucket {other}, which images reach by "
                "promotion only; a push credential would write its tags too. Give each bucket its own repository.",
                code="shared_repository",
                details={"env": bucket.env, "shared_with": str(other)},
            )


def credentials_rotate(*, actor: Actor) -> int:
    """Re-encrypt every stored secret under the newest P2P_FERNET_KEYS key, in one audited transaction.

    Returns how many secrets were re-encrypted. If any one cannot be decrypted, CredentialsUnreadable names it and
    nothing is changed, so a wrong key never leaves a mix of old and new ciphertexts behind.
    """
    with transaction.atomic():
        registries = list(Registry.objects.select_for_update().exclude(credentials_encrypted="").order_by("pk"))
        webhooks = list(Webhook.objects.select_for_update().exclude(secret_encrypted="").order_by("pk"))
        for registry in registries:
            try:
                registry.credentials_encrypted = reencrypt(registry.credentials_encrypted)
            except CredentialsUnreadable as exc:
                raise CredentialsUnreadable(f"registry {registry.name!r}: {exc}") from None
        for webhook in webhooks:
            try:
                webhook.secret_encrypted = reencrypt(webhook.secret_encrypted)
            except CredentialsUnreadable as exc:
                raise CredentialsUnreadable(f"webhook #{webhook.pk} ({webhook.url}): {exc}") from None
        Registry.objects.bulk_update(registries, ["credentials_encrypted"])
        Webhook.objects.bulk_update(webhooks, ["secret_encrypted"])
        rotated = len(registries) + len(webhooks)
        audit_record(
            actor=actor,
            action="credentials.rotated",
            after={
                "registries": [registry.name for registry in registries],
                "webhooks": [webhook.pk for webhook in webhooks],
                "count": rotated,
            },
            reason="re-encrypted under the newest P2P_FERNET_KEYS key",
        )
    return rotated
