"""Write the current registries, workflows and integrations in the apply_config format (never any secret)."""

from django.core.management.base import BaseCommand

from ci_integrations.services.config import config_dump, config_export


class Command(BaseCommand):
    help = "Export registries, workflows and integrations as YAML that apply_config accepts."

    def add_arguments(self, parser):
        parser.add_argument("-o", "--output", help="write to this file instead of standard output")

    def handle(self, *args, output: str | None, **options):
        text = config_dump(config_export())
        if output:
            with open(output, "w", encoding="utf-8") as handle:
                handle.write(text)
            self.stderr.write(f"Wrote {output}")
        else:
            self.stdout.write(text, ending="")
