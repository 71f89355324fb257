"""Revoke an API token by key id (the part after `p2p_`), or by the whole token."""

from django.core.management.base import BaseCommand, CommandError

from ci_integrations.models import ApiToken
from ci_integrations.services.actors import Actor
from ci_integrations.services.errors import ServiceError
from ci_integrations.services.tokens import TokenInvalid, token_parse, token_revoke


class Command(BaseCommand):
    help = "Revoke an API token given its key id or the full token."

    def add_arguments(self, parser):
        parser.add_argument("token", help="key id (e.g. 3fK9x2LmQa7B) or the full p2p_… token")

    def handle(self, *args, **options):
        key_id = options["token"].strip()
        if key_id.startswith("p2p_"):
            try:
                key_id, _ = token_parse(key_id)
            except TokenInvalid as exc:
                raise CommandError(str(exc)) from None
        token = ApiToken.objects.filter(key_id=key_id).first()
        if token is None:
            raise CommandError(f"no token with key id {key_id!r}")
        try:
            token_revoke(token=token, actor=Actor.for_command("revoke_token"))
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Revoked {token.name!r} (key id {token.key_id}).")
