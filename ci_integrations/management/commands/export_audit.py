"""Export the audit log as CSV or JSON Lines; the file ends with the chain's head hash."""

from django.core.management.base import BaseCommand

from ci_integrations.models import AuditEntry
from ci_integrations.services.audit import audit_export_csv, audit_export_jsonl

EXPORTERS = {"csv": audit_export_csv, "jsonl": audit_export_jsonl}


class Command(BaseCommand):
    help = "Export every audit entry, oldest first, as CSV or JSON Lines ending with the head hash."

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=sorted(EXPORTERS), default="jsonl")
        parser.add_argument("-o", "--output", help="write to this file instead of standard output")

    def handle(self, *args, format: str, output: str | None, **options):
        entries = AuditEntry.objects.order_by("id").iterator(chunk_size=2000)
        chunks = EXPORTERS[format](entries)
        if output:
            with open(output, "w", encoding="utf-8", newline="") as handle:
                handle.writelines(chunks)
            self.stderr.write(f"Wrote {output}")
        else:
            for chunk in chunks:
                self.stdout.write(chunk, ending="")
