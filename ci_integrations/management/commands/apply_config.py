"""Apply a config file (registries, workflows, integrations) idempotently; --check shows the diff only."""

from django.core.management.base import BaseCommand, CommandError

from ci_integrations.encryption import CredentialsUnreadable
from ci_integrations.services.actors import Actor
from ci_integrations.services.config import ConfigError, config_apply, config_load


class Command(BaseCommand):
    help = "Create and update registries, workflows and integrations from a YAML file, in one transaction."

    def add_arguments(self, parser):
        parser.add_argument("file", help="the YAML config file")
        parser.add_argument("--check", action="store_true", help="print what would change and change nothing")

    def handle(self, *args, file: str, check: bool, **options):
        actor = Actor.for_command("apply_config")
        try:
            result = config_apply(data=config_load(file), actor=actor, source=file, check=check)
        except ConfigError as exc:
            for problem in exc.problems:
                self.stderr.write(f"{exc.source}: {problem}")
            raise CommandError(f"{file}: {len(exc.problems)} problem(s); nothing was applied.") from None
        except CredentialsUnreadable as exc:
            raise CommandError(f"{file}: {exc}; nothing was applied.") from None
        for line in result.changes:
            self.stdout.write(line)
        if not result.changes:
            self.stdout.write("No changes.")
        elif check:
            self.stdout.write(f"{len(result.changes)} change(s) would be made (--check: nothing applied).")
        else:
            self.stdout.write(f"{len(result.changes)} change(s) applied.")
