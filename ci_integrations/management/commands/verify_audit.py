"""Walk the audit chain: OK with the count and head hash, or the first broken entry and a non-zero exit.

With --checkpoints DIR the chain is also held against every signed checkpoint in DIR, which shows a truncated tail
or a history rewritten and re-hashed; each checkpoint's signature is checked with the public key first.
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from redis.exceptions import RedisError

from ci_integrations.services.audit import audit_verify, audit_verify_checkpoints
from ci_integrations.services.audit_verification import audit_verification_remember


class Command(BaseCommand):
    help = "Verify the audit log's hash chain (and its signed checkpoints); exits 1 naming the first broken entry."

    def add_arguments(self, parser):
        parser.add_argument("--checkpoints", metavar="DIR", help="also verify against the signed checkpoints in DIR")
        parser.add_argument(
            "--public-key",
            action="append",
            dest="public_keys",
            metavar="KEY",
            help="trust checkpoints signed with this public key (base64 or PEM; repeatable) instead of the "
            "portal's configured keys; use the key you recorded from the audit page",
        )

    def handle(self, *args, checkpoints: str | None, public_keys: list[str] | None, **options):
        if checkpoints:
            directory = Path(checkpoints)
            if not directory.is_dir():
                raise CommandError(f"{checkpoints} is not a directory")
            try:
                report = audit_verify_checkpoints(directory=directory, public_keys=public_keys)
            except ValueError as error:
                raise CommandError(f"--public-key: {error}") from None
        else:
            report = audit_verify()
        try:
            audit_verification_remember(report)
        except RedisError as error:  # the verdict stands without Redis; only the badge and the metric miss it
            self.stderr.write(f"(not recorded for the audit page and /metrics: Redis: {error})")
        if not report.ok and report.broken_id is None:
            raise CommandError(f"BROKEN: {report.problem}")  # a checkpoint file or key, before any entry was read
        if not report.ok:
            raise CommandError(
                f"BROKEN at entry {report.broken_id}: {report.problem} "
                f"({report.entries} entries verified before it, last good hash {report.head})"
            )
        line = f"OK {report.entries} entries, head {report.head}"
        if checkpoints:
            line += f"; {report.checkpoints} signed checkpoint(s) match"
        self.stdout.write(line)
