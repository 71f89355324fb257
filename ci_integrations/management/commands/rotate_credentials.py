"""Re-encrypt every stored registry credential and webhook secret under the newest P2P_FERNET_KEYS key."""

from django.core.management.base import BaseCommand, CommandError

from ci_integrations.encryption import CredentialsUnreadable
from ci_integrations.services.actors import Actor
from ci_integrations.services.credentials import credentials_rotate


class Command(BaseCommand):
    help = "Re-encrypt stored credentials under the first key of P2P_FERNET_KEYS (then older keys can be removed)."

    def handle(self, *args, **options):
        try:
            rotated = credentials_rotate(actor=Actor.for_command("rotate_credentials"))
        except CredentialsUnreadable as exc:
            raise CommandError(f"{exc}. Nothing was re-encrypted.") from None
        self.stdout.write(f"Re-encrypted {rotated} stored secret(s) under the newest key.")
