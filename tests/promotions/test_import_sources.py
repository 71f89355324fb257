"""Where an import may read from: registries configured in the portal and hosts in P2P_IMPORT_ALLOWED_HOSTS, never
an internal address no configured registry lives at, on the request and on every connection the worker makes.

Registries are real docker-registry processes on loopback. This machine cannot look public names up, so the one fake
is DNS: `fake_dns` answers for the made-up names the tests use, and everything else resolves as usual.
"""

import socket

import pytest
from django.test import Client

from ci_integrations.models import AuditEntry, ImportJob, Registry
from ci_integrations.services.actors import Actor
from ci_integrations.services.tokens import token_create
from tests.promotions.slow_proxy import SlowProxy
from tests.registry.fault_proxy import FaultProxy
from tests.support.images import get_manifest_digest, push_random_image
from tests.support.registry_server import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
PUBLIC_ADDRESS = "93.184.215.14"  # a global unicast address, as a real outside registry would have


@pytest.fixture
def fake_dns(monkeypatch):
    """Answers for names in the returned dict (name -> IPv4 address); every other name resolves as usual."""
    names: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (names[host], int(port or 0)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names


def import_request(world, source: str):
    """POST an import as CI does, with a CI token of the world's integration."""
    _, plain = token_create(
        name="ci", kind="ci", actor=Actor.system("test"), integrations=[world.integration], system=True
    )
    return Client().post(
        f"/api/v1/integrations/{world.integration.name}/imports/",
        {"source": source},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {plain}",
    )


def test_an_import_from_a_host_neither_configured_nor_listed_is_refused_with_403_naming_it(world, rq_queues):
    response = import_request(world, "builds.elsewhere.example:5000/team/app:1.0")

    assert response.status_code == 403, response.content
    error = response.json()["error"]
    assert error["code"] == "forbidden" and "builds.elsewhere.example:5000" in error["message"]
    assert "P2P_IMPORT_ALLOWED_HOSTS" in error["message"]
    assert error["details"]["host"] == "builds.elsewhere.example:5000"
    assert not ImportJob.objects.exists() and all(not queue.job_ids for queue in rq_queues.values())


def test_an_import_from_a_host_under_an_allowed_wildcard_is_copied(
    world, rq_queues, run_worker, settings, fake_dns, monkeypatch
):
    # An outside registry with a public name, reached (as registry traffic often is) through an HTTP proxy.
    settings.P2P_IMPORT_ALLOWED_HOSTS = ["*.builds.example.com"]
    fake_dns["mirror.builds.example.com"] = PUBLIC_ADDRESS
    proxy = SlowProxy(world.build_url)
    proxy.throttled = False
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    try:
        digest = push_random_image(world.build_url, "outside/app", "w-1", layers=1)
        response = import_request(world, "http://mirror.builds.example.com:5000/outside/app:w-1")
        assert response.status_code == 202, response.content
        run_worker()
    finally:
        proxy.close()

    job = ImportJob.objects.get(pk=response.json()["id"])
    assert job.state == ImportJob.State.SUCCEEDED, job.error
    assert set(proxy.hosts) == {"mirror.builds.example.com:5000"}
    world.qa.refresh_from_db()
    assert world.qa.current_arrival.artifact.digest == digest
    # The import is in the audit log with what it read and its copy summary (p2p_copy_bytes_total counts it).
    entry = AuditEntry.objects.get(action="artifact.imported", object_id=str(job.pk))
    assert entry.after["source"] == "http://mirror.builds.example.com:5000/outside/app:w-1"
    assert entry.after["digest"] == digest and entry.after["copy"]["bytes_transferred"] > 0


def test_a_listed_host_that_resolves_to_cloud_metadata_is_refused(world, settings, fake_dns):
    settings.P2P_IMPORT_ALLOWED_HOSTS = ["*.builds.example.com", "169.254.169.254"]
    fake_dns["metadata.builds.example.com"] = "169.254.169.254"

    for source in ("metadata.builds.example.com/team/app:1", "169.254.169.254/team/app:1"):
        response = import_request(world, source)

        assert response.status_code == 403, response.content
        message = response.json()["error"]["message"]
        assert "resolves to 169.254.169.254, a link-local address" in message
    assert not ImportJob.objects.exists()


def test_a_loopback_port_where_no_registry_is_configured_is_refused_even_when_listed(world, settings):
    settings.P2P_IMPORT_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    port = free_port()

    for source in (f"127.0.0.1:{port}/team/app:1", f"localhost:{world.build_url.rsplit(':', 1)[1]}/team/app:1"):
        response = import_request(world, source)

        assert response.status_code == 403, response.content
        assert "a loopback address" in response.json()["error"]["message"]
    assert not ImportJob.objects.exists()


def test_a_configured_registrys_redirect_to_cloud_metadata_fails_the_job_with_a_clear_message(
    world, rq_queues, run_worker
):
    proxy = FaultProxy(world.build_url)
    try:
        Registry.objects.create(name="build-mirror", url=proxy.url)
        push_random_image(world.build_url, "outside/app", "r-1", layers=1)
        proxy.redirect(path=r"/blobs/sha256:", to="http://169.254.169.254/latest/meta-data/iam/security-credentials/")
        host = proxy.url.split("://", 1)[1]
        response = import_request(world, f"{host}/outside/app:r-1")
        assert response.status_code == 202, response.content
        run_worker()
    finally:
        proxy.stop()

    job = ImportJob.objects.get(pk=response.json()["id"])
    expected = "refused to connect to 169.254.169.254:80: it resolves to 169.254.169.254, a link-local address"
    assert job.state == ImportJob.State.FAILED and expected in job.error, job.error
    assert expected in AuditEntry.objects.get(action="artifact.import_failed", object_id=str(job.pk)).reason
    assert get_manifest_digest(world.build_url, world.qa.repository, "r-1") is None


def test_an_import_stores_the_registrys_status_never_a_page_it_served(world, rq_queues, run_worker):
    proxy = FaultProxy(world.build_url)
    try:
        Registry.objects.create(name="build-mirror", url=proxy.url)
        page = b"<html>internal admin console: db password hunter2</html>"
        html = {"Content-Type": "text/html"}
        proxy.add("status", method="GET", path="/manifests/", status=404, body=page, headers=html, times=None)
        host = proxy.url.split("://", 1)[1]
        response = import_request(world, f"{host}/outside/app:p-1")
        assert response.status_code == 202, response.content
        run_worker()
    finally:
        proxy.stop()

    job = ImportJob.objects.get(pk=response.json()["id"])
    audit = AuditEntry.objects.get(action="artifact.import_failed", object_id=str(job.pk))
    assert job.state == ImportJob.State.FAILED and "HTTP 404" in job.error, job.error
    for text in (job.error, audit.reason, str(audit.after)):
        assert "admin console" not in text and "hunter2" not in text
