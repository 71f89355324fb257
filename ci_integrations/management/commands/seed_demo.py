"""`manage.py seed_demo`: the `make run` demo, seeded once.

Two registries (demo-a on :5001, demo-b on :5002), a qa → staging → prod workflow (staging needs one approval and
prod two, from release-managers, never from the requester), the integration demo-shop with qa and staging on demo-a
and prod on demo-b, three small images registered into qa, and the users release1, release2, release3 (release
managers: prod's two approvals come from two who did not request it), auditor and admin. Passwords are generated on
the first run, kept in var/demo-passwords.txt and printed every time. For the insights page, two more
integrations (demo-catalog, demo-payments) get a few weeks of delivery history.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from ci_integrations.demo import push_demo_image, wait_for_registry
from ci_integrations.management.demo_history import PROFILES as HISTORY_PROFILES
from ci_integrations.management.demo_history import WEEKS, seed_delivery_history
from ci_integrations.models import Artifact, Integration
from ci_integrations.services.actors import Actor
from ci_integrations.services.artifacts import artifact_register, check_report
from ci_integrations.services.config import config_apply

INTEGRATION = "demo-shop"
USERS = {
    "release1": {"groups": ["release-managers"]},
    "release2": {"groups": ["release-managers"]},
    "release3": {"groups": ["release-managers"]},
    "auditor": {"groups": ["auditors"]},
    "admin": {"groups": ["platform-admins"], "is_staff": True},
}
BUILDS = [("1.0.0", "a1b2c3d", "main"), ("1.1.0", "b2c3d4e", "main"), ("1.2.0", "c3d4e5f", "main")]


def demo_config(url_a: str, url_b: str) -> dict:
    return {
        "registries": [
            {"name": "demo-a", "provider": "generic", "url": url_a},
            {"name": "demo-b", "provider": "generic", "url": url_b},
        ],
        "workflows": [
            {
                "name": "demo-path",
                "kind": "environment",
                "description": "qa, then staging (one approval), then prod (two approvals)",
                "steps": [
                    {
                        "from": "qa",
                        "to": "staging",
                        "approvals": 1,
                        "approver_group": "release-managers",
                        "required_checks": ["functional"],
                    },
                    {
                        "from": "staging",
                        "to": "prod",
                        "approvals": 2,
                        "rollback_approvals": 1,
                        "approver_group": "release-managers",
                        "required_checks": ["functional", "integration"],
                    },
                ],
            }
        ],
        "integrations": [
            {
                "name": INTEGRATION,
                "kind": "environment",
                "workflow": "demo-path",
                "description": "A demo web shop",
                "buckets": [
                    {"env": "qa", "registry": "demo-a", "repository": "demo-shop/qa"},
                    {"env": "staging", "registry": "demo-a", "repository": "demo-shop/staging"},
                    {"env": "prod", "registry": "demo-b", "repository": "demo-shop/prod"},
                ],
            },
            # Integrations with a few weeks of past deliveries (see demo_history.py), for the insights page.
            *[
                {
                    "name": name,
                    "kind": "environment",
                    "workflow": "demo-path",
                    "description": "Demo delivery history (no images in the registries)",
                    "buckets": [
                        {"env": "qa", "registry": "demo-a", "repository": f"{name}/qa"},
                        {"env": "staging", "registry": "demo-a", "repository": f"{name}/staging"},
                        {"env": "prod", "registry": "demo-b", "repository": f"{name}/prod"},
                    ],
                }
                for name, *_ in HISTORY_PROFILES
            ],
        ],
        # One recurring window: no promotions into prod over the weekend, London time.
        "freeze_windows": [
            {
                "name": "weekend",
                "kind": "deny",
                "rrule": "FREQ=WEEKLY;BYDAY=FR;BYHOUR=16;BYMINUTE=0",
                "duration": "64h",
                "timezone": "Europe/London",
                "environments": ["prod"],
            }
        ],
    }


class Command(BaseCommand):
    help = "Seed the demo (registries, workflow, demo-shop with images in qa, users) once, and print the passwords."

    def add_arguments(self, parser):
        parser.add_argument("--registry-a", default="http://127.0.0.1:5001")
        parser.add_argument("--registry-b", default="http://127.0.0.1:5002")
        parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the registries to answer")

    def handle(self, *args, registry_a: str, registry_b: str, wait: float, **options):
        passwords = self._users()
        if Artifact.objects.filter(integration__name=INTEGRATION).exists():
            self.stdout.write("The demo is already seeded.")
        else:
            for url in (registry_a, registry_b):
                wait_for_registry(url, timeout=wait)
            self._seed(registry_a, registry_b)
        self._print(passwords, Path(settings.VAR_DIR) / "demo-passwords.txt")

    def _users(self) -> dict[str, str]:
        """Create the demo users once; their passwords are generated then and kept in var/demo-passwords.txt."""
        path = Path(settings.VAR_DIR) / "demo-passwords.txt"
        known = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                name, _, password = line.partition(" ")
                if name and password:
                    known[name] = password
        User = get_user_model()
        with transaction.atomic():
            for name, spec in USERS.items():
                user, created = User.objects.get_or_create(
                    username=name, defaults={"is_staff": spec.get("is_staff", False)}
                )
                if created or name not in known:
                    known[name] = secrets.token_urlsafe(12)
                    user.set_password(known[name])
                    user.save()
                user.groups.set(Group.objects.filter(name__in=spec["groups"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{name} {known[name]}\n" for name in USERS), encoding="utf-8")
        path.chmod(0o600)
        return known

    def _seed(self, url_a: str, url_b: str) -> None:
        actor = Actor.system("seed_demo")
        config_apply(data=demo_config(url_a, url_b), actor=actor, source="seed_demo")
        integration = Integration.objects.get(name=INTEGRATION)
        for tag, git_sha, branch in BUILDS:
            push_demo_image(url_a, "demo-shop/qa", tag)
            artifact, _, _ = artifact_register(
                integration=integration,
                env="qa",
                tag=tag,
                metadata={
                    "git_sha": git_sha * 5 + "12345",
                    "branch": branch,
                    "build_url": f"https://ci.example.com/demo-shop/builds/{tag}",
                    "labels": {"team": "shop"},
                },
                actor=actor,
            )
            check_report(artifact=artifact, name="functional", status="passed", url="", actor=actor)
            check_report(artifact=artifact, name="integration", status="passed", url="", actor=actor)
            self.stdout.write(f"Registered demo-shop {tag} in qa: {artifact.digest}")
        deployments = seed_delivery_history()
        names = ", ".join(name for name, *_ in HISTORY_PROFILES)
        self.stdout.write(f"Wrote {WEEKS} weeks of delivery history for {names}: {deployments} prod deployments.")

    def _print(self, passwords: dict[str, str], path: Path) -> None:
        self.stdout.write("")
        self.stdout.write("P2P Portal demo: open http://127.0.0.1:8000/ and sign in as")
        for name, spec in USERS.items():
            self.stdout.write(f"  {name:<9} {passwords[name]:<18} ({', '.join(spec['groups'])})")
        self.stdout.write(f"(the passwords are kept in {path})")
