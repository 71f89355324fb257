#!/usr/bin/env python3
"""P7: the CI register endpoint under load, on gunicorn + PostgreSQL, driven from a second process.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/p2p_bench .venv/bin/python bench/api_load.py

What it does:
1. migrates the database at DATABASE_URL (PostgreSQL only), starts a real docker-registry, pushes one image and
   N more manifests (same layers, distinct annotations, so distinct digests), creates an integration, a bucket and a
   CI token;
2. starts gunicorn (gthread workers, production settings: DEBUG off, real keys) on a free port;
3. drives POST /api/v1/integrations/<name>/artifacts/ from a separate process with keep-alive connections on
   several threads, in two phases:
   - "re-register": the same tag and digest again and again (the idempotent path CI retries hit: 200);
   - "fresh": a new tag and a new digest each time (a real registration: new artifact, arrival, 2 audit entries: 201);
   every request does the manifest HEAD against the registry, as in production;
4. verifies the audit chain afterwards and prints a table against P7 (>= 300 req/s, p99 <= 150 ms, 0 errors);
5. prints each phase's CPU per request split by component (the portal's gunicorn processes, PostgreSQL, the registry,
   the load driver), read from /proc around each phase, with the rate at which everything but the portal would
   fill this machine's cores: where that ceiling is under 300 req/s, no portal can show P7 on this machine.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
P7_RPS, P7_P99_MS = 300, 150


# --- the load driver (runs in its own process) ---------------------------------------------------------------------


def drive(url: str, token: str, path: str, bodies_file: str, threads: int) -> dict:
    """POST every body in `bodies_file` (one JSON per line) over `threads` keep-alive connections; a line "GET"
    sends a GET instead (the baseline)."""
    bodies = Path(bodies_file).read_text().splitlines()
    host, _, port = url.split("://", 1)[1].partition(":")
    counter = itertools.count()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Connection": "keep-alive"}

    def worker() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        mine, codes = [], {}
        while True:
            index = next(counter)
            if index >= len(bodies):
                break
            started = time.perf_counter()
            try:
                if bodies[index] == "GET":
                    connection.request("GET", path, headers=headers)
                else:
                    connection.request("POST", path, body=bodies[index], headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=30)
                status = 0
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
            mine.append(time.perf_counter() - started)
            codes[status] = codes.get(status, 0) + 1
        with lock:
            latencies.extend(mine)
            for code, count in codes.items():
                statuses[code] = statuses.get(code, 0) + count

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "latencies": latencies,
        "statuses": statuses,
        "errors": errors[:5],
    }


# --- the bench (sets everything up, runs gunicorn, reports) --------------------------------------------------------


def production_environment(database_url: str, redis_url: str) -> dict:
    from cryptography.fernet import Fernet

    var_dir = Path(tempfile.mkdtemp(prefix="p2p-bench-"))
    (var_dir / "static").mkdir()
    return {
        **os.environ,
        "P2P_VAR_DIR": str(var_dir),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "P2P_FERNET_KEYS": Fernet.generate_key().decode(),
        "P2P_TOKEN_PEPPERS": f"bench={secrets.token_urlsafe(32)}",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "0",
        "SECURE_HSTS_SECONDS": "0",
        "P2P_API_TOKEN_RATE": "10000000/minute",
        "LOG_LEVEL": "WARNING",
        "DATABASE_CONN_MAX_AGE": "600",
    }


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def _postgres_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as handle:
                    if handle.read().strip() in ("postgres", "postmaster"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


class CpuMeter:
    """CPU seconds used by the web server (master and workers), PostgreSQL (every server process on this machine)
    and the registry, between two readings; so a phase's CPU per request can be split by component."""

    def __init__(self, gunicorn_pid: int, registry_pid: int) -> None:
        self.gunicorn_pid, self.registry_pid = gunicorn_pid, registry_pid

    def read(self) -> dict[str, float]:
        web = [self.gunicorn_pid, *_children(self.gunicorn_pid)]
        return {
            "portal": sum(_cpu_seconds(pid) for pid in web),
            "postgres": sum(_cpu_seconds(pid) for pid in _postgres_pids()),
            "registry": _cpu_seconds(self.registry_pid),
        }


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def run_phase(
    name: str, base_url: str, token: str, path: str, bodies: list[dict], threads: int, meter: CpuMeter
) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as handle:
        handle.write("\n".join(body if body == "GET" else json.dumps(body) for body in bodies))
    command = [sys.executable, __file__, "--drive", base_url, "--path", path, "--bodies", handle.name]
    command += ["--threads", str(threads)]
    # The token goes through the environment, never the command line (visible in ps).
    before = meter.read()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "P2P_BENCH_TOKEN": token})
    after = meter.read()
    os.unlink(handle.name)
    if result.returncode != 0:
        raise SystemExit(f"driver failed: {result.stderr}")
    report = json.loads(result.stdout)
    latencies = report["latencies"]
    cpu = {component: after[component] - before[component] for component in after}
    cpu["driver"] = report["cpu_seconds"]
    return {
        "cpu_ms": {component: 1000 * seconds / max(1, len(latencies)) for component, seconds in cpu.items()},
        "phase": name,
        "requests": len(latencies),
        "rps": len(latencies) / report["seconds"],
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "statuses": report["statuses"],
        "errors": report["errors"],
    }


def wait_until_up(url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("gunicorn did not come up")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--bodies", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=3000, help="requests per phase")
    parser.add_argument("--threads", type=int, default=8, help="client threads (keep-alive connections)")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    parser.add_argument("--worker-threads", type=int, default=4, help="threads per gunicorn worker")
    args = parser.parse_args()

    if args.drive:
        print(json.dumps(drive(args.drive, os.environ["P2P_BENCH_TOKEN"], args.path, args.bodies, args.threads)))
        return

    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (it is migrated and written to)")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/12")
    env = production_environment(database_url, redis_url)
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "p2p_portal.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    import requests

    from ci_integrations.models import Bucket, Integration, Registry
    from ci_integrations.services.actors import Actor
    from ci_integrations.services.audit import audit_verify
    from ci_integrations.services.tokens import token_create
    from tests.support.images import image_manifest, put_manifest
    from tests.support.registry_server import free_port, start_registry

    registry_server = start_registry()
    gunicorn = None
    try:
        suffix = uuid.uuid4().hex[:8]
        repository = f"bench-{suffix}/app"
        registry = Registry.objects.create(name=f"bench-{suffix}", url=registry_server.url)
        integration = Integration.objects.create(name=f"bench-{suffix}")
        Bucket.objects.create(integration=integration, env="dev", registry=registry, repository=repository)
        _, token = token_create(
            name=f"bench-{suffix}", kind="ci", integrations=[integration], actor=Actor.system("bench"), system=True
        )

        # One image, then N manifests over the same blobs with distinct annotations: distinct digests, one PUT each.
        body, media_type = image_manifest(registry_server.url, repository, layers=2, layer_size=4096)
        put_manifest(registry_server.url, repository, "base", body, media_type)
        manifest = json.loads(body)
        started = time.perf_counter()
        session = requests.Session()
        lock = threading.Lock()
        tags = [f"fresh-{n}" for n in range(args.requests)]
        queue = iter(tags)

        def push() -> None:
            while True:
                with lock:
                    tag = next(queue, None)
                if tag is None:
                    return
                variant = json.dumps({**manifest, "annotations": {"bench": tag}}, indent=3).encode()
                put_manifest(registry_server.url, repository, tag, variant, media_type)

        pushers = [threading.Thread(target=push) for _ in range(8)]
        for thread in pushers:
            thread.start()
        for thread in pushers:
            thread.join()
        session.close()
        print(f"pushed {len(tags) + 1} manifests in {time.perf_counter() - started:.1f}s", file=sys.stderr)

        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        gunicorn = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "p2p_portal.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--worker-class",
                "gthread",
                "--workers",
                str(args.workers),
                "--threads",
                str(args.worker_threads),
                "--keep-alive",
                "30",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )
        wait_until_up(base_url)
        path = f"/api/v1/integrations/{integration.name}/artifacts/"
        meter = CpuMeter(gunicorn.pid, registry_server.process.pid)
        register = [{"env": "dev", "tag": "base"}]
        warmup = run_phase("warm-up", base_url, token, path, register * 200, args.threads, meter)
        phases = [
            ("baseline GET /healthz", "/healthz", ["GET"] * args.requests),
            ("baseline GET integration", f"/api/v1/integrations/{integration.name}/", ["GET"] * args.requests),
            ("re-register (200)", path, register * args.requests),
            ("fresh register (201)", path, [{"env": "dev", "tag": tag, "metadata": {"git_sha": tag}} for tag in tags]),
        ]
        results = [run_phase(name, base_url, token, url, bodies, args.threads, meter) for name, url, bodies in phases]
    finally:
        if gunicorn is not None:
            gunicorn.send_signal(signal.SIGTERM)
            gunicorn.wait(timeout=30)
        registry_server.stop()

    chain = audit_verify()
    print()
    print(f"P7 register load: gunicorn gthread {args.workers}x{args.worker_threads}, {args.threads} client threads")
    print(f"{'phase':<22} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  statuses          P7")
    print("-" * 92)
    for row in [warmup, *results]:
        errors = sum(count for code, count in row["statuses"].items() if code not in ("200", "201"))
        passed = row["rps"] >= P7_RPS and row["p99_ms"] <= P7_P99_MS and errors == 0
        verdict = "" if row is warmup or row["phase"].startswith("baseline") else ("PASS" if passed else "FAIL")
        print(
            f"{row['phase']:<22} {row['requests']:>8} {row['rps']:>8.0f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f}"
            f"  {json.dumps(row['statuses']):<17} {verdict}"
        )
        for error in row["errors"]:
            print(f"    error: {error}")
    print(f"audit chain: {'intact' if chain.ok else 'BROKEN at ' + str(chain.broken_id)}, {chain.entries} entries")
    print(f"P7 bar: >= {P7_RPS} req/s, p99 <= {P7_P99_MS} ms, 0 errors, chain intact")
    print("baselines: the same server answering a one-query health check and an authenticated token read")

    cores = os.cpu_count() or 1
    print()
    print(f"CPU per request (ms), every component on this machine's {cores} cores:")
    print(f"{'phase':<26} {'portal':>7} {'postgres':>9} {'registry':>9} {'driver':>7} {'total':>7}  others' ceiling")
    print("-" * 92)
    for row in results:
        cpu = row["cpu_ms"]
        others = cpu["postgres"] + cpu["registry"] + cpu["driver"]
        ceiling = f"{1000 * cores / others:>6.0f} req/s" if others else ""
        print(
            f"{row['phase']:<26} {cpu['portal']:>7.2f} {cpu['postgres']:>9.2f} {cpu['registry']:>9.2f} "
            f"{cpu['driver']:>7.2f} {sum(cpu.values()):>7.2f}  {ceiling}"
        )
    print(
        f"{P7_RPS} req/s on {cores} cores leaves {1000 * cores / P7_RPS:.2f} ms of CPU per request for everything; "
        "'others' ceiling' is the rate at which PostgreSQL, the registry and the load driver alone would fill "
        "the machine (the portal at zero cost)."
    )


if __name__ == "__main__":
    main()
