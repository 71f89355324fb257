"""`manage.py promotions_resume`: release the emergency stop; waiting promotions are queued on the next scheduler
pass."""

from django.core.management.base import BaseCommand, CommandError

from ci_integrations.services.actors import Actor
from ci_integrations.services.emergency_stop import emergency_stop_release
from ci_integrations.services.errors import ServiceError


class Command(BaseCommand):
    help = "Release the emergency stop; promotions that waited are queued again by the scheduler. Audited."

    def handle(self, *args, **options):
        try:
            emergency_stop_release(actor=Actor.for_command("promotions_resume"))
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write("Emergency stop released: promotions go again.")
