"""A real Prometheus (Debian's `prometheus`) scrapes the portal's /metrics on a live server, and a metric is read
back through Prometheus's own HTTP API; its alert rules pass `promtool check rules` and `promtool test rules`."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from ci_integrations.models import Promotion, Registry
from tests.insights.conftest import History, at

pytestmark = [pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "observability" / "alerts.yml"
RULE_TESTS = ROOT / "docs" / "observability" / "alerts.test.yml"
TOKEN = "scrape-token-for-tests-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def needs(command: str) -> str:
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"{command} is missing: `make test` installs Debian's prometheus package")
    return path


def query(base: str, expression: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)["data"]["result"]


def test_prometheus_scrapes_the_portal_and_answers_with_its_figures(transactional_db, live_server, settings, tmp_path):
    prometheus = needs("prometheus")
    settings.P2P_METRICS_TOKEN = TOKEN
    history = History(registry=Registry.objects.create(name="scraped", url="http://127.0.0.1:5999"))
    for day in (11, 12, 13):
        artifact = history.artifact("shop", created_at=at(day, 0))
        Promotion.objects.create(
            integration=history.integration("shop"),
            artifact=artifact,
            digest=artifact.digest,
            to_bucket=history.buckets["shop", "prod"],
            tag="t",
            state=Promotion.State.PENDING_APPROVAL,
        )
    target = live_server.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: p2p\n"
        "    metrics_path: /metrics\n"
        f"    authorization: {{type: Bearer, credentials: {TOKEN}}}\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - the child writes to it
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        deadline = time.monotonic() + 60
        result = []
        while time.monotonic() < deadline:
            try:
                result = query(base, 'p2p_pending_approvals{env="prod"}')
            except OSError:
                result = []  # not listening yet
            if result:
                break
            time.sleep(0.5)
        assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert float(result[0]["value"][1]) == 3
        assert result[0]["metric"]["job"] == "p2p"
        up = query(base, 'up{job="p2p"}')
        assert up and up[0]["value"][1] == "1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_alert_rules_are_valid_and_their_unit_tests_pass():
    promtool = needs("promtool")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


@pytest.mark.django_db
def test_the_grafana_dashboard_only_charts_metrics_the_portal_exposes():
    dashboard = json.loads((ROOT / "docs" / "observability" / "grafana-dashboard.json").read_text())
    import django_rq

    from ci_integrations.metrics import PortalCollector
    from ci_integrations.services.audit_verification import RESULT_KEY

    redis = django_rq.get_connection("default")
    redis.set(RESULT_KEY, json.dumps({"ok": True, "verified_at": "2026-03-14T08:00:00+00:00"}))  # else it is absent
    try:
        exposed = {family.name for family in PortalCollector().collect()}
    finally:
        redis.delete(RESULT_KEY)
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(expressions) >= 6
    for expression in expressions:
        names = {word for word in _metric_names(expression)}
        assert names, expression
        unknown = {n for n in names if not any(n == e or n.startswith(e + "_") for e in exposed)}
        assert not unknown, (expression, unknown)


def _metric_names(expression: str) -> set[str]:
    """The p2p_* names an expression reads."""
    import re

    return set(re.findall(r"\bp2p_[a-z_]+", expression))
