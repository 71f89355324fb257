"""Walk the audit chain: OK with the count and head hash, or the first broken entry and a non-zero exit."""

from django.core.management.base import BaseCommand, CommandError

from ci_integrations.services.audit import audit_verify


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exits 1 naming the first broken entry."

    def handle(self, *args, **options):
        report = audit_verify()
        if not report.ok:
            raise CommandError(
                f"BROKEN at entry {report.broken_id}: {report.problem} "
                f"({report.entries} entries verified before it, last good hash {report.head})"
            )
        self.stdout.write(f"OK {report.entries} entries, head {report.head}")
