"""Copy one image between registries from the command line (no database needed): `copy_image SRC DST`."""

from __future__ import annotations

import json
import os

from django.core.management.base import BaseCommand, CommandError

from ci_integrations.registry import (
    ImageLocation,
    InvalidReference,
    RegistryError,
    RegistrySpec,
    copy_image,
    parse_reference,
)
from ci_integrations.registry.providers import provider_name_for_host


def _credentials(value: str | None, side: str) -> dict | None:
    env_name = f"P2P_{side.upper()}_CREDS"
    value = value or os.environ.get(env_name)
    if not value:
        return None
    username, sep, password = value.partition(":")
    if not sep or not username:
        raise CommandError(f"--{side}-creds (or {env_name}) must look like USER:PASS")
    return {"username": username, "password": password}


def _location(text: str, *, plain_http: bool, credentials: dict | None) -> ImageLocation:
    ref = parse_reference(text)
    provider = provider_name_for_host(ref.registry)
    scheme = "http" if plain_http else "https"
    url = f"{scheme}://{ref.registry}"
    return ImageLocation(RegistrySpec(provider, url, credentials=credentials), ref.repository, ref.reference)


class Command(BaseCommand):
    help = "Copy an image (or multi-arch index) by digest from SRC to DST, e.g. reg-a/team/app:1.0 reg-b/team/app:1.0"
    requires_system_checks: list = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("src", help="source image reference, host/repository:tag or @sha256:…")
        parser.add_argument("dst", help="destination image reference (the tag to write)")
        parser.add_argument("--plain-http", action="store_true", help="talk plain HTTP to both registries (local)")
        parser.add_argument("--src-creds", help="USER:PASS for the source (or env P2P_SRC_CREDS)")
        parser.add_argument("--dst-creds", help="USER:PASS for the destination (or env P2P_DST_CREDS)")
        parser.add_argument("--all-attached", action="store_true", help="also copy signatures, SBOMs, attestations")
        parser.add_argument("--expected-digest", help="refuse unless the source resolves to this digest")
        parser.add_argument("--parallelism", type=int, default=6, help="parallel blob streams (default 6)")
        parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")

    def handle(self, *args, **options):
        try:
            src = _location(
                options["src"],
                plain_http=options["plain_http"],
                credentials=_credentials(options["src_creds"], "src"),
            )
            dst = _location(
                options["dst"],
                plain_http=options["plain_http"],
                credentials=_credentials(options["dst_creds"], "dst"),
            )
            summary = copy_image(
                src,
                dst,
                parallelism=options["parallelism"],
                copy_attached=options["all_attached"],
                expected_digest=options["expected_digest"],
            )
        except InvalidReference as exc:
            raise CommandError(f"invalid reference: {exc.message}") from None
        except RegistryError as exc:
            raise CommandError(f"{type(exc).__name__}: {exc.message}") from None
        if options["json"]:
            self.stdout.write(json.dumps(summary.as_dict(), sort_keys=True))
            return
        moved = summary.bytes_transferred / (1024 * 1024)
        how = f" via {summary.fast_path}" if summary.fast_path else ""
        self.stdout.write(
            f"copied {src} -> {dst}{how}: {summary.digest} ({summary.media_type}), {summary.manifests} manifests, "
            f"blobs {summary.blobs_copied} copied / {summary.blobs_mounted} mounted / {summary.blobs_skipped} skipped, "
            f"{moved:.1f} MiB in {summary.seconds:.2f}s"
        )
