"""P6 and P11: the dashboard's main pages, the insights page and API, and the /metrics scrape, over a small and a large
database (500k artifacts, 1M audit entries).

Seeds a separate PostgreSQL database (dropped and re-created each run), first small (1k artifacts, 1k audit entries),
measures, then grows it to the large size and measures again. Rows go in with COPY; the audit entries form one
valid hash chain, computed here with the same canonical bytes the audit service uses. Each page is requested in
process through Django's test client with production settings (middleware, view, queries and template: the server's
share of a request); the table shows the median of N requests and the number of queries.

    .venv/bin/python bench/ui_bench.py [--artifacts 500000] [--audit 1000000] [--runs 15]
    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/p2p_ui_bench (default)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BENCH_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/p2p_ui_bench")
INTEGRATIONS = 50
ENVS = ["qa", "staging", "prod"]
ACTIONS = [
    "artifact.registered",
    "arrival.recorded",
    "check.reported",
    "promotion.requested",
    "promotion.approved",
    "promotion.queued",
    "promotion.started",
    "promotion.succeeded",
]
ACTORS = [f"user{i:02d}" for i in range(20)] + ["ci:build", "p2p-worker"]
GENESIS = "0" * 64
START = datetime(2025, 11, 1, tzinfo=UTC)
METRICS_TOKEN = "bench-metrics-token"
# Median server time allowed per page (ms): P6 for the dashboard's pages, P11 for insights and the scrape.
BAR_MS = {"insights": 200, "api: dora": 200, "metrics": 50}


def bar_ms(name: str) -> int:
    """The bar for the page called `name`: P11's for insights and /metrics, else P6's 100 ms."""
    return next((ms for prefix, ms in BAR_MS.items() if name.startswith(prefix)), 100)


def recreate_database() -> None:
    import psycopg

    parts = urlsplit(BENCH_URL)
    name = parts.path.lstrip("/")
    admin_url = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def setup_django() -> None:
    """Production settings (DEBUG off, real keys, collected static files), as the pages are served in production."""
    from api_load import production_environment

    os.environ.update(production_environment(BENCH_URL, os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/12")))
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ["P2P_METRICS_TOKEN"] = METRICS_TOKEN
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2p_portal.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("collectstatic", interactive=False, verbosity=0)


class Seeder:
    """Bulk rows with explicit ids, so the arrivals, checks and promotions can point at what was just copied in."""

    def __init__(self):
        from django.db import connection

        self.connection = connection
        self.rng = random.Random(6)
        self.next_id = {"artifact": 1, "arrival": 1, "promotion": 1, "checkresult": 1}
        self.integrations: list[tuple[int, str, int]] = []  # (id, name, workflow_id)
        self.buckets: dict[tuple[int, str], int] = {}
        self.steps: dict[tuple[int, str], int] = {}
        self.users: dict[str, object] = {}

    def load(self) -> None:
        """Pick up the people and integrations of an existing bench database (for --measure-only)."""
        from django.contrib.auth.models import User

        from ci_integrations.models import Integration

        self.users = {user.username: user for user in User.objects.all()}
        self.integrations = [(i.pk, i.name, i.workflow_id) for i in Integration.objects.order_by("name")]

    def copy(self, table: str, columns: list[str], rows) -> int:
        raw = self.connection.connection
        count = 0
        with raw.cursor() as cursor:
            with cursor.copy(f"COPY ci_integrations_{table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
        return count

    def base(self) -> None:
        """Registries, a workflow, 50 integrations × 3 buckets, and the people."""
        from django.contrib.auth.models import Group, User

        from ci_integrations.models import Bucket, Integration, Registry, Workflow, WorkflowStep

        managers = Group.objects.get(name="release-managers")
        reg = Registry.objects.create(name="bench", url="http://127.0.0.1:1")
        workflow = Workflow.objects.create(name="bench-path")
        for position, (src, dst, approvals) in enumerate([("qa", "staging", 1), ("staging", "prod", 2)]):
            step = WorkflowStep.objects.create(
                workflow=workflow,
                position=position,
                from_env=src,
                to_env=dst,
                required_approvals=approvals,
                approver_group=managers,
                required_checks=["functional"],
            )
            self.steps[(workflow.pk, dst)] = step.pk
        for i in range(INTEGRATIONS):
            integration = Integration.objects.create(name=f"svc-{i:03d}", workflow=workflow)
            self.integrations.append((integration.pk, integration.name, workflow.pk))
            for position, env in enumerate(ENVS):
                bucket = Bucket.objects.create(
                    integration=integration, env=env, position=position, registry=reg, repository=f"svc-{i:03d}/{env}"
                )
                self.buckets[(integration.pk, env)] = bucket.pk
        for name, group in (
            ("release1", "release-managers"),
            ("release2", "release-managers"),
            ("auditor", "auditors"),
        ):
            user = User.objects.create_user(username=name, password="bench-password-1")
            user.groups.add(Group.objects.get(name=group))
            self.users[name] = user

    def artifacts(self, count: int, *, span_days: float, end: datetime) -> None:
        """`count` artifacts spread over the integrations, each in qa; every 10th also in staging, every 50th in
        prod (through a succeeded promotion); one check each; a few promotions pending or recently failed."""
        first = self.next_id["artifact"]
        ids = range(first, first + count)
        start = end - timedelta(days=span_days)
        step_seconds = span_days * 86400 / max(count, 1)

        def created(i: int) -> datetime:
            return start + timedelta(seconds=(i - first) * step_seconds)

        def integration_of(i: int):
            return self.integrations[i % INTEGRATIONS]

        def digest(i: int) -> str:
            return "sha256:" + hashlib.sha256(f"artifact-{i}".encode()).hexdigest()

        self.copy(
            "artifact",
            [
                "id",
                "integration_id",
                "digest",
                "media_type",
                "size",
                "git_sha",
                "branch",
                "build_url",
                "labels",
                "created_at",
                "created_by",
            ],
            (
                (
                    i,
                    integration_of(i)[0],
                    digest(i),
                    "application/vnd.oci.image.manifest.v1+json",
                    50_000_000,
                    hashlib.sha1(str(i).encode()).hexdigest(),
                    "main",
                    f"https://ci.example.com/{i}",
                    json.dumps({"build": i}),
                    created(i),
                    "ci:build",
                )
                for i in ids
            ),
        )
        self.copy(
            "checkresult",
            ["id", "artifact_id", "name", "status", "url", "reported_at", "reported_by"],
            (
                (
                    self.next_id["checkresult"] + n,
                    i,
                    "functional",
                    "passed" if i % 17 else "failed",
                    "",
                    created(i) + timedelta(minutes=5),
                    "ci:build",
                )
                for n, i in enumerate(ids)
            ),
        )
        self.next_id["checkresult"] += count

        promotions = []
        arrivals = []
        now = datetime.now(UTC)
        for i in ids:
            integration_id, _, workflow_id = integration_of(i)
            at = created(i)
            arrivals.append((self.buckets[(integration_id, "qa")], i, f"1.{i}.0", "push", None, at, "ci:build"))
            for env, every, after in (("staging", 10, 30), ("prod", 50, 90)):
                if i % every:
                    continue
                pid = self.next_id["promotion"]
                self.next_id["promotion"] += 1
                source = "qa" if env == "staging" else "staging"
                moved = at + timedelta(minutes=after)
                promotions.append(
                    (
                        pid,
                        integration_id,
                        "promotion",
                        self.steps[(workflow_id, env)],
                        i,
                        digest(i),
                        self.buckets[(integration_id, source)],
                        self.buckets[(integration_id, env)],
                        f"1.{i}.0",
                        f"1.{i}.0",
                        "succeeded",
                        1,
                        None,
                        "user01",
                        "",
                        "",
                        moved,
                        moved,
                        moved,
                        moved,
                        moved,
                        moved,
                        "",
                        1,
                        4,
                        4,
                        4096,
                        4096,
                        "",
                        "",
                        digest(i),
                    )
                )
                arrivals.append(
                    (self.buckets[(integration_id, env)], i, f"1.{i}.0", "promotion", pid, moved, "p2p-worker")
                )
        # The newest artifacts: some wait for approval, some failed recently.
        for n, i in enumerate(list(ids)[-30:]):
            integration_id, _, workflow_id = integration_of(i)
            pid = self.next_id["promotion"]
            self.next_id["promotion"] += 1
            state = "pending_approval" if n % 3 else "failed"
            promotions.append(
                (
                    pid,
                    integration_id,
                    "promotion",
                    self.steps[(workflow_id, "staging")],
                    i,
                    digest(i),
                    self.buckets[(integration_id, "qa")],
                    self.buckets[(integration_id, "staging")],
                    f"1.{i}.0",
                    f"1.{i}.0",
                    state,
                    1,
                    self.users["release1"].pk,
                    "release1",
                    "bench",
                    "",
                    now,
                    now,
                    None,
                    None,
                    now if state == "failed" else None,
                    None,
                    "",
                    0,
                    0,
                    0,
                    0,
                    0,
                    "",
                    "boom" if state == "failed" else "",
                    "",
                )
            )
        self.copy(
            "promotion",
            [
                "id",
                "integration_id",
                "kind",
                "step_id",
                "artifact_id",
                "digest",
                "from_bucket_id",
                "to_bucket_id",
                "source_tag",
                "tag",
                "state",
                "required_approvals",
                "requested_by_id",
                "requested_by_label",
                "reason",
                "freeze_override_reason",
                "created_at",
                "updated_at",
                "queued_at",
                "started_at",
                "finished_at",
                "heartbeat_at",
                "job_id",
                "attempts",
                "blobs_total",
                "blobs_done",
                "bytes_total",
                "bytes_done",
                "log",
                "error",
                "result_digest",
            ],
            promotions,
        )
        first_arrival = self.next_id["arrival"]
        self.copy(
            "arrival",
            ["id", "bucket_id", "artifact_id", "tag", "how", "promotion_id", "arrived_at", "arrived_by"],
            ((first_arrival + n, *row) for n, row in enumerate(arrivals)),
        )
        self.next_id["arrival"] += len(arrivals)
        self.next_id["artifact"] += count
        with self.connection.cursor() as cursor:
            cursor.execute(
                """UPDATE ci_integrations_bucket b SET current_arrival_id = (
                       SELECT a.id FROM ci_integrations_arrival a WHERE a.bucket_id = b.id
                       ORDER BY a.arrived_at DESC, a.id DESC LIMIT 1)"""
            )
            for table in ("artifact", "arrival", "promotion", "checkresult"):
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('ci_integrations_{table}', 'id'), "
                    f"(SELECT max(id) FROM ci_integrations_{table}))"
                )

    def audit(self, count: int, *, span_days: float, end: datetime) -> None:
        """Append `count` entries to the chain, hashed exactly as services.audit does, then COPY them in."""
        from ci_integrations.models import AuditEntry
        from ci_integrations.services.audit import EXPORT_FIELDS, _timestamp_text

        head = AuditEntry.objects.order_by("-id").values_list("hash", "timestamp").first()
        previous = head[0] if head else GENESIS
        start = max(end - timedelta(days=span_days), head[1] + timedelta(microseconds=1) if head else START)
        step = (end - start) / max(count, 1)
        rng = self.rng

        def rows():
            nonlocal previous
            for n in range(count):
                integration = self.integrations[rng.randrange(INTEGRATIONS)][1]
                action = ACTIONS[n % len(ACTIONS)]
                entry = {
                    "timestamp": start + step * n,
                    "actor": ACTORS[rng.randrange(len(ACTORS))],
                    "action": action,
                    "object_type": action.split(".")[0],
                    "object_id": str(n),
                    "object_repr": f"{integration}#{n}",
                    "integration": integration,
                    "environment": ENVS[n % 3],
                    "before": None,
                    "after": {"n": n, "state": "ok"},
                    "reason": "",
                    "request_id": f"bench{n}",
                }
                body = dict(entry, timestamp=_timestamp_text(entry["timestamp"]))
                canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
                digest = hashlib.sha256(canonical + previous.encode()).hexdigest()
                yield (
                    entry["timestamp"],
                    entry["actor"],
                    action,
                    entry["object_type"],
                    entry["object_id"],
                    entry["object_repr"],
                    integration,
                    entry["environment"],
                    None,
                    json.dumps(entry["after"]),
                    "",
                    entry["request_id"],
                    previous,
                    digest,
                )
                previous = digest

        self.copy(
            "auditentry",
            [field for field in EXPORT_FIELDS if field != "id"],
            rows(),
        )

    def analyze(self) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute("ANALYZE")


def measure(pages: list[tuple[str, object, str]], runs: int) -> dict[str, tuple[float, int]]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from ci_integrations.metrics import settled_forget

    # /metrics adds up settled promotions once per process every five minutes; the bench grows the database 500-fold
    # in less than that, which a running portal never does, so each measurement starts from its own addition.
    settled_forget()
    results = {}
    for name, client, url in pages:
        for _ in range(2):  # warm caches and connections
            assert client.get(url).status_code == 200, (name, url)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (name, url, response.status_code)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        results[name] = (statistics.median(times), len(queries))
    return results


def pages_to_measure(seeder: Seeder) -> list[tuple[str, object, str]]:
    from django.test import Client

    from ci_integrations.models import AuditEntry, Promotion

    manager, auditor, scraper = Client(), Client(), Client(HTTP_AUTHORIZATION=f"Bearer {METRICS_TOKEN}")
    manager.force_login(seeder.users["release2"])
    auditor.force_login(seeder.users["auditor"])
    newest = AuditEntry.objects.order_by("-id").values_list("id", flat=True).first()
    middle = newest // 2
    pending = Promotion.objects.filter(state="pending_approval").order_by("-id").values_list("id", flat=True).first()
    busiest = seeder.integrations[0][1]
    return [
        ("overview", manager, "/"),
        ("integration", manager, f"/integrations/{busiest}/"),
        ("approvals", manager, "/approvals/"),
        ("promotion", manager, f"/promotions/{pending}/"),
        ("audit: newest", auditor, "/audit/"),
        ("audit: integration", auditor, f"/audit/?integration={busiest}"),
        ("audit: action", auditor, "/audit/?action=promotion.succeeded"),
        ("audit: actor+env", auditor, "/audit/?actor=user07&environment=prod"),
        ("audit: deep page", auditor, f"/audit/?before={middle}"),
        ("audit: date range", auditor, "/audit/?since=2026-01-01&until=2026-01-31"),
        ("insights: prod 30 days", manager, "/insights/"),
        ("insights: prod 90 days", manager, "/insights/?days=90"),
        ("insights: integration", manager, f"/insights/?integration={busiest}&days=90"),
        ("api: dora json", manager, "/api/v1/insights/dora/?days=90"),
        ("api: dora csv", manager, "/api/v1/insights/dora/?format=csv"),
        ("metrics", scraper, "/metrics"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-artifacts", type=int, default=1_000)
    parser.add_argument("--small-audit", type=int, default=1_000)
    parser.add_argument("--artifacts", type=int, default=500_000)
    parser.add_argument("--audit", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--verify", action="store_true", help="also time a full chain verification at the end")
    parser.add_argument("--measure-only", action="store_true", help="measure the existing large database again")
    args = parser.parse_args()

    if args.measure_only:
        setup_django()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        seeder = Seeder()
        seeder.load()
        seeder.analyze()
        for name, (ms, queries) in measure(pages_to_measure(seeder), args.runs).items():
            print(f"{name:<22} {ms:>9.1f} ms {queries:>4} queries")
        return

    recreate_database()
    setup_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    seeder = Seeder()
    seeder.base()
    now = datetime.now(UTC)
    began = time.perf_counter()
    seeder.artifacts(args.small_artifacts, span_days=2, end=now - timedelta(days=400))
    seeder.audit(args.small_audit, span_days=2, end=now - timedelta(days=400))
    seeder.analyze()
    print(
        f"seeded small ({args.small_artifacts} artifacts, {args.small_audit} audit entries) "
        f"in {time.perf_counter() - began:.1f}s",
        flush=True,
    )
    small = measure(pages_to_measure(seeder), args.runs)

    began = time.perf_counter()
    seeder.artifacts(args.artifacts - args.small_artifacts, span_days=365, end=now - timedelta(hours=1))
    print(f"seeded artifacts, arrivals, checks, promotions in {time.perf_counter() - began:.1f}s", flush=True)
    began = time.perf_counter()
    seeder.audit(args.audit - args.small_audit, span_days=365, end=now - timedelta(minutes=1))
    seeder.analyze()
    print(f"seeded the audit chain in {time.perf_counter() - began:.1f}s", flush=True)
    large = measure(pages_to_measure(seeder), args.runs)

    from ci_integrations.models import Arrival, Artifact, AuditEntry, Promotion

    sizes = (
        f"{Artifact.objects.count()} artifacts, {Arrival.objects.count()} arrivals, "
        f"{Promotion.objects.count()} promotions, {AuditEntry.objects.count()} audit entries"
    )
    print(f"\nP6/P11 pages: median of {args.runs} requests (in-process, server time), queries per request")
    print(f"large database: {sizes}\n")
    header = f"{'page':<22} {'small ms':>9} {'queries':>8} {'large ms':>9} {'queries':>8}  verdict"
    print(header)
    print("-" * len(header))
    for name in small:
        s_ms, s_q = small[name]
        l_ms, l_q = large[name]
        bar = bar_ms(name)
        verdict = "ok" if l_ms <= bar and l_q <= 12 and l_q == s_q else f"MISSES {'P6' if bar == 100 else 'P11'}"
        print(f"{name:<22} {s_ms:>9.1f} {s_q:>8} {l_ms:>9.1f} {l_q:>8}  {verdict}")

    if args.verify:
        from ci_integrations.services.audit import audit_verify

        began = time.perf_counter()
        report = audit_verify()
        print(f"\naudit_verify over {report.entries} entries: ok={report.ok} in {time.perf_counter() - began:.1f}s")


if __name__ == "__main__":
    main()
