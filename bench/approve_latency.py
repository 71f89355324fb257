"""P8: approve click → copy job running, with a real `manage.py p2p_worker` process. Target ≤ 1 s.

Measures, per round: the approve service call itself, approve → job running (the promotion's started_at, written by
the worker when it claims the row), and approve → succeeded (a small image copied between two registries).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/p2p_bench REDIS_URL=redis://127.0.0.1:6379/14 \
        .venv/bin/python bench/approve_latency.py --rounds 20

The database must be migrated (`manage.py migrate`); the benchmark adds its own uniquely named integration, users
and registries, and empties nothing (the audit log is append-only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2p_portal.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth.models import Group, User  # noqa: E402
from django.utils import timezone  # noqa: E402
from rq import Worker  # noqa: E402

from ci_integrations.models import Bucket, Integration, Promotion, Registry, Workflow, WorkflowStep  # noqa: E402
from ci_integrations.services.actors import Actor  # noqa: E402
from ci_integrations.services.approvals import promotion_approve  # noqa: E402
from ci_integrations.services.artifacts import artifact_register  # noqa: E402
from ci_integrations.services.background import get_queue  # noqa: E402
from ci_integrations.services.promotions import promotion_request  # noqa: E402
from tests.support.images import push_random_image  # noqa: E402
from tests.support.registry_server import start_registry  # noqa: E402


def setup_world(build_url: str, production_url: str):
    suffix = uuid.uuid4().hex[:8]
    build = Registry.objects.create(name=f"bench-build-{suffix}", url=build_url)
    production = Registry.objects.create(name=f"bench-prod-{suffix}", url=production_url)
    workflow = Workflow.objects.create(name=f"bench-{suffix}")
    WorkflowStep.objects.create(
        workflow=workflow,
        position=1,
        from_env="staging",
        to_env="prod",
        required_approvals=1,
        approver_group=Group.objects.get(name="release-managers"),
    )
    integration = Integration.objects.create(name=f"bench-{suffix}", workflow=workflow)
    staging = Bucket.objects.create(
        integration=integration, env="staging", position=0, registry=build, repository=f"bench-{suffix}/app"
    )
    Bucket.objects.create(
        integration=integration, env="prod", position=1, registry=production, repository=f"bench-{suffix}/app"
    )
    managers = Group.objects.get(name="release-managers")
    requester = User.objects.create(username=f"bench-requester-{suffix}")
    approver = User.objects.create(username=f"bench-approver-{suffix}")
    requester.groups.add(managers)
    approver.groups.add(managers)
    return integration, staging, requester, approver


def start_worker(simple: bool) -> subprocess.Popen:
    command = [sys.executable, "manage.py", "p2p_worker", "--no-reconciler"] + (["--simple"] if simple else [])
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    connection = get_queue("promotions").connection
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(w.pid == process.pid for w in Worker.all(connection=connection)):
            return process
        time.sleep(0.05)
    process.kill()
    raise SystemExit("the worker did not register with Redis within 30 s")


def wait_until(pk: int, states: tuple[str, ...], timeout: float = 60) -> Promotion:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        promotion = Promotion.objects.get(pk=pk)
        if promotion.state in states:
            return promotion
        time.sleep(0.005)
    raise SystemExit(f"promotion {pk} did not reach {states} in {timeout} s")


def summarise(name: str, values: list[float]) -> str:
    values = sorted(values)
    p90 = values[max(0, int(round(0.9 * len(values))) - 1)]
    return (
        f"| {name:<28} | {values[0] * 1000:8.1f} | {statistics.median(values) * 1000:8.1f} | {p90 * 1000:8.1f} "
        f"| {values[-1] * 1000:8.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--simple", action="store_true", help="run jobs in the worker process instead of forking")
    args = parser.parse_args()

    build, production = start_registry(), start_registry()
    worker = None
    try:
        integration, staging, requester, approver = setup_world(build.url, production.url)
        worker = start_worker(args.simple)
        call, running, succeeded = [], [], []
        for round_ in range(args.rounds):
            tag = f"v{round_}"
            push_random_image(build.url, staging.repository, tag)
            artifact, _, _ = artifact_register(
                integration=integration, env="staging", tag=tag, actor=Actor.system("ci")
            )
            promotion = promotion_request(artifact=artifact, to_env="prod", actor=Actor.for_user(requester))
            clicked = timezone.now()
            started = time.perf_counter()
            promotion_approve(promotion=promotion, actor=Actor.for_user(approver), comment="bench")
            call.append(time.perf_counter() - started)
            done = wait_until(promotion.pk, (Promotion.State.SUCCEEDED, Promotion.State.FAILED))
            if done.state != Promotion.State.SUCCEEDED:
                raise SystemExit(f"promotion {done.pk} failed: {done.error}")
            running.append((done.started_at - clicked).total_seconds())
            succeeded.append((done.finished_at - clicked).total_seconds())
        median_running = statistics.median(running)
        print(f"\nP8 approve → job running, {args.rounds} rounds, {'simple' if args.simple else 'forking'} worker")
        print(f"| {'measure (ms)':<28} | {'min':>8} | {'median':>8} | {'p90':>8} | {'max':>8} |")
        print(f"|{'-' * 30}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
        print(summarise("approve service call", call))
        print(summarise("approve → job running", running))
        print(summarise("approve → copy succeeded", succeeded))
        verdict = "meets" if max(running) <= 1.0 else "MISSES"
        print(f"\nbar ≤ 1000 ms: median {median_running * 1000:.0f} ms, max {max(running) * 1000:.0f} ms: {verdict}")
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
        build.stop()
        production.stop()


if __name__ == "__main__":
    main()
