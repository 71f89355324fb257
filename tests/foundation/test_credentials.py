"""Stored secrets are encrypted with MultiFernet, rotate to the newest key, and a wrong key is an error."""

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from ci_integrations.encryption import CredentialsUnreadable
from ci_integrations.models import AuditEntry, Integration, Registry, Webhook

CREDENTIALS = {"username": "robot", "password": "s3cret-passw0rd"}


def new_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def stored(db, settings):
    """A registry and a webhook whose secrets are encrypted under an "old" key; returns that key."""
    old = new_key()
    settings.P2P_FERNET_KEYS = [old]
    registry = Registry(name="build", url="https://build.example.com")
    registry.set_credentials(CREDENTIALS)
    registry.save()
    webhook = Webhook(integration=Integration.objects.create(name="app"), url="https://hooks.example.com/x")
    webhook.set_secret("hook-secret")
    webhook.save()
    return old


def test_credentials_are_encrypted_at_rest(stored):
    row = Registry.objects.get(name="build")
    assert "s3cret" not in row.credentials_encrypted and "robot" not in row.credentials_encrypted
    assert Fernet(stored).decrypt(row.credentials_encrypted.encode())
    assert row.get_credentials() == CREDENTIALS


def test_ambient_registry_has_no_credentials(db):
    registry = Registry.objects.create(name="prod", url="https://prod.example.com")
    assert registry.get_credentials() is None and not registry.has_stored_credentials


def test_rotation_moves_every_secret_to_the_newest_key(stored, settings):
    newest = new_key()
    settings.P2P_FERNET_KEYS = [newest, stored]  # prepend the new key; the old one still decrypts
    out = io.StringIO()
    call_command("rotate_credentials", stdout=out)
    assert "Re-encrypted 2 stored secret(s)" in out.getvalue()

    settings.P2P_FERNET_KEYS = [newest]  # the old key is gone
    assert Registry.objects.get(name="build").get_credentials() == CREDENTIALS
    assert Webhook.objects.get().get_secret() == "hook-secret"
    entry = AuditEntry.objects.get(action="credentials.rotated")
    assert entry.after == {"count": 2, "registries": ["build"], "webhooks": [Webhook.objects.get().pk]}
    assert "s3cret" not in str(entry.after)


def test_without_rotation_removing_the_old_key_makes_secrets_unreadable(stored, settings):
    settings.P2P_FERNET_KEYS = [new_key()]
    with pytest.raises(CredentialsUnreadable, match="cannot be decrypted"):
        Registry.objects.get(name="build").get_credentials()


def test_a_wrong_key_is_an_error_never_empty_credentials(stored, settings):
    settings.P2P_FERNET_KEYS = [new_key()]
    registry = Registry.objects.get(name="build")
    with pytest.raises(CredentialsUnreadable):
        registry.get_credentials()
    with pytest.raises(CredentialsUnreadable):
        registry.spec()
    with pytest.raises(CredentialsUnreadable):
        Webhook.objects.get().get_secret()


def test_rotation_with_a_wrong_key_fails_clearly_and_changes_nothing(stored, settings):
    before = list(Registry.objects.values_list("credentials_encrypted", flat=True))
    settings.P2P_FERNET_KEYS = [new_key()]
    with pytest.raises(CommandError, match="registry 'build': stored credentials cannot be decrypted") as caught:
        call_command("rotate_credentials", stdout=io.StringIO())
    assert caught.value.returncode != 0
    assert list(Registry.objects.values_list("credentials_encrypted", flat=True)) == before
    assert not AuditEntry.objects.filter(action="credentials.rotated").exists()


def test_a_malformed_key_is_named(db, settings):
    settings.P2P_FERNET_KEYS = ["not-a-fernet-key"]
    with pytest.raises(CredentialsUnreadable, match="malformed key"):
        Registry(name="x", url="https://x.example.com").set_credentials(CREDENTIALS)
