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
from ci_integrations.services.errors import NotAllowed, RegistryUnavailable


def bucket_push_credentials(*, bucket: Bucket, actor: Actor) -> dict:
    """Short-lived credentials for CI to push into the bucket's registry, if the bucket allows it.

    Returns the registry's answer (username, password or token, expiry) with the bucket's repository and image name.
    """
    if not bucket.allow_push_credentials:
        raise NotAllowed(
            f"bucket {bucket} does not hand out push credentials (allow_push_credentials is off)",
            details={"env": bucket.env},
        )
    try:
        credentials = registry.push_credentials(bucket.registry.spec())
    except registry_errors.RegistryError as exc:
        raise RegistryUnavailable(f"registry {bucket.registry.name}: {exc}") from None
    body = {**credentials, "repository": bucket.repository, "image": bucket.image_name}
    if body.get("expires_at") is not None:
        body["expires_at"] = str(body["expires_at"])
    return body


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
