"""Create an API token and print it once, as the last line of the output.

CI token:       manage.py create_token --name ci-shop --integration shop [--integration …] --owner alice
                    [--scopes read,artifacts:write] [--expires 30d]
System token:   manage.py create_token --name ci-nightly --integration shop --system   (no person owns it)
Personal token: manage.py create_token --name laptop --user alice [--scopes …] [--expires 90d]

A CI token answers for its owner: it never has more rights than the owner has when it is used, it stops working when
the owner is deactivated, and the owner counts as the requester of what it requests. A system token has no owner, so
what it requests needs two approvers where four-eyes applies. CI tokens expire after P2P_CI_TOKEN_MAX_AGE at the
latest.
"""

import re
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ci_integrations.models import ApiToken, Integration
from ci_integrations.services.actors import Actor
from ci_integrations.services.errors import ServiceError
from ci_integrations.services.tokens import CI_SCOPES, token_create

UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_expiry(text: str) -> timedelta:
    match = re.fullmatch(r"(\d{1,5})([mhdw])", text.strip())
    if not match or int(match.group(1)) == 0:
        raise CommandError(f"--expires {text!r}: use a number and a unit, e.g. 30m, 12h, 90d or 4w")
    return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})


def _user(username: str):
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise CommandError(f"no user named {username!r}")
    return user


class Command(BaseCommand):
    help = "Create a CI token (--integration) or a personal token (--user); the token is printed last, once."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="what the token is for, e.g. ci-shop-main")
        parser.add_argument("--integration", action="append", default=[], help="integration name (repeatable)")
        parser.add_argument("--user", help="username: makes a personal token acting as that user")
        parser.add_argument("--owner", help="username of the person a CI token answers for (required for CI tokens)")
        parser.add_argument(
            "--system", action="store_true", help="a CI token no person owns (its requests need two approvers)"
        )
        parser.add_argument(
            "--scopes",
            default="",
            help=f"comma-separated; CI: {','.join(CI_SCOPES)}; personal may add promotions:approve (default: all)",
        )
        parser.add_argument(
            "--expires", help="lifetime such as 90d, 12h or 4w (default: never; CI tokens: P2P_CI_TOKEN_MAX_AGE)"
        )

    def handle(self, *args, **options):
        if bool(options["user"]) == bool(options["integration"]):
            raise CommandError("give either --integration (CI token) or --user (personal token)")
        kind = ApiToken.Kind.PERSONAL if options["user"] else ApiToken.Kind.CI
        if kind == ApiToken.Kind.CI and bool(options["owner"]) == options["system"]:
            raise CommandError("a CI token needs --owner USERNAME (the person it answers for), or --system")
        if kind == ApiToken.Kind.PERSONAL and (options["owner"] or options["system"]):
            raise CommandError("--owner and --system are for CI tokens; a personal token acts as its --user")
        user = _user(options["user"]) if options["user"] else None
        owner = _user(options["owner"]) if options["owner"] else None
        integrations = []
        for name in options["integration"]:
            integration = Integration.objects.filter(name=name).first()
            if integration is None:
                raise CommandError(f"no integration named {name!r}")
            integrations.append(integration)
        scopes = [scope.strip() for scope in options["scopes"].split(",") if scope.strip()]
        expires_at = timezone.now() + parse_expiry(options["expires"]) if options["expires"] else None
        try:
            token, plain = token_create(
                name=options["name"],
                kind=kind,
                actor=Actor.for_command("create_token"),
                user=user,
                owner=owner,
                system=options["system"],
                integrations=integrations,
                scopes=scopes,
                expires_at=expires_at,
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        expiry = f"{token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else "never"
        answers = f", owned by {owner.get_username()}" if owner else (", a system token" if options["system"] else "")
        self.stdout.write(
            f"Created {token.get_kind_display().lower()} {token.name!r} (key id {token.key_id}){answers}, "
            f"scopes: {', '.join(token.scopes)}, expires: {expiry}"
        )
        self.stdout.write("Store it now; it cannot be shown again:")
        self.stdout.write(plain)
