"""`manage.py promotions_stop --reason "…"`: pull the emergency stop (no new promotion, queued ones held)."""

from django.core.management.base import BaseCommand, CommandError

from ci_integrations.services.actors import Actor
from ci_integrations.services.emergency_stop import emergency_stop_pull
from ci_integrations.services.errors import ServiceError


class Command(BaseCommand):
    help = "Stop every promotion: block new ones and hold queued ones; running copies finish. Audited."

    def add_arguments(self, parser):
        parser.add_argument("--reason", required=True, help="why; shown on every page")

    def handle(self, *args, **options):
        try:
            stop = emergency_stop_pull(reason=options["reason"], actor=Actor.for_command("promotions_stop"))
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Emergency stop pulled at {stop.started_at.isoformat(timespec='seconds')}: {stop.reason}")
