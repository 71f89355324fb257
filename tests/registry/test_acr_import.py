"""ACR import (issue 15 item 9): a timeout, progress lines for the promotion's log, the documented limits checked
up front, and the plain copy when an import cannot or does not finish. The management API is faked at the SDK
boundary (its poller); the plain copy runs against real docker-registry processes.

Source: Microsoft Learn, "Import container images to a container registry", limitations: at most 50 manifests per
imported image; from a public registry, layers of at most 2 GiB.
"""

from __future__ import annotations

import pytest

from ci_integrations.registry import RegistrySpec, copy_image
from ci_integrations.registry.budget import time_budget
from ci_integrations.registry.errors import CopyStopped
from ci_integrations.registry.providers import acr
from tests.registry.conftest import FAST, location
from tests.registry.fault_proxy import tls_certificate
from tests.support.images import get_manifest_digest, push_index, push_random_image

AZURE = {"subscription_id": "sub-1", "resource_group": "rg-1", **FAST}
LOGIN = {"username": "u", "password": "p"}


class Poller:
    """An import's long-running operation: done after `polls` looks (never, with None)."""

    def __init__(self, polls: int | None, on_done=None):
        self.polls, self.looks, self.on_done = polls, 0, on_done

    def done(self) -> bool:
        self.looks += 1
        finished = self.polls is not None and self.looks > self.polls
        if finished and self.on_done is not None:
            self.on_done()
            self.on_done = None
        return finished

    def status(self) -> str:
        return "Succeeded" if self.polls is not None and self.looks > self.polls else "InProgress"

    def result(self):
        return None


class FakeImports:
    def __init__(self, poller_for):
        self.registries = self
        self.poller_for = poller_for
        self.imports: list = []

    def begin_import_image(self, resource_group, registry_name, parameters):
        self.imports.append(parameters)
        return self.poller_for(parameters)


@pytest.fixture
def quick_polls(monkeypatch):
    monkeypatch.setattr(acr, "IMPORT_POLL_SECONDS", 0.05)
    monkeypatch.setattr(acr, "IMPORT_PROGRESS_SECONDS", 0.2)


def _acr(url: str, **options) -> RegistrySpec:
    return RegistrySpec("acr", url, options={**AZURE, **options}, credentials=LOGIN)


def test_an_import_that_does_not_finish_in_time_falls_back_to_the_plain_copy_with_progress_lines(
    registry, other_registry, monkeypatch, quick_polls
):
    api = FakeImports(lambda parameters: Poller(None))
    monkeypatch.setattr(acr, "management_client", lambda spec: api)
    digest = push_random_image(registry.url, "team/api", "1.0")
    lines: list[str] = []

    summary = copy_image(
        location(_acr(registry.url), "team/api", "1.0"),
        location(_acr(other_registry.url, import_timeout=0.6), "prod/api", "1.0"),
        notify=lines.append,
    )

    assert len(api.imports) == 1 and summary.fast_path is None and summary.blobs_copied == 3
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    assert any("started (waiting up to 1 s)" in line for line in lines)
    assert any("still running after" in line and "InProgress" in line for line in lines)
    assert any("not finished after 1 s" in line and "copying through the portal" in line for line in lines)


def test_an_import_that_finishes_reports_it_and_moves_no_bytes_through_the_portal(
    registry, other_registry, monkeypatch, quick_polls
):
    def poller(parameters):
        repository, _, digest = parameters.source.source_image.partition("@")
        target, _, tag = parameters.target_tags[0].partition(":")
        # ACR's servers do the copy; here a plain copy between the two local registries stands in for them.
        return Poller(
            3,
            on_done=lambda: copy_image(
                location(registry.url, repository, digest), location(other_registry.url, target, tag)
            ),
        )

    api = FakeImports(poller)
    monkeypatch.setattr(acr, "management_client", lambda spec: api)
    digest = push_random_image(registry.url, "team/api", "1.0")
    lines: list[str] = []

    summary = copy_image(
        location(_acr(registry.url), "team/api", "1.0"),
        location(_acr(other_registry.url), "prod/api", "1.0"),
        notify=lines.append,
    )

    assert summary.fast_path == "acr-import" and summary.bytes_transferred == 0
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    assert any(line.endswith("s") and ": finished in " in line for line in lines)


def test_an_index_over_the_import_manifest_limit_is_copied_the_plain_way_without_asking_acr(
    registry, other_registry, monkeypatch
):
    api = FakeImports(lambda parameters: Poller(0))
    monkeypatch.setattr(acr, "management_client", lambda spec: api)
    monkeypatch.setattr(acr, "IMPORT_MAX_MANIFESTS", 2)  # the index and its two platforms make three
    digest = push_index(registry.url, "team/api", "1.0")
    lines: list[str] = []

    summary = copy_image(
        location(_acr(registry.url), "team/api", "1.0"),
        location(_acr(other_registry.url), "prod/api", "1.0"),
        notify=lines.append,
    )

    assert api.imports == [] and summary.fast_path is None
    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") == digest
    assert any("3 manifests, over ACR import's limit of 2" in line for line in lines)


def test_a_layer_over_2_gib_from_a_public_registry_is_copied_the_plain_way(
    registry, other_registry, proxy_factory, monkeypatch, tmp_path
):
    api = FakeImports(lambda parameters: Poller(0))
    monkeypatch.setattr(acr, "management_client", lambda spec: api)
    monkeypatch.setattr(acr, "PUBLIC_IMPORT_MAX_LAYER_BYTES", 4096)  # stands in for 2 GiB
    digest = push_random_image(registry.url, "library/nginx", "1.0", layers=1, layer_size=64 * 1024)
    certificate, key = tls_certificate(str(tmp_path))
    public = proxy_factory(registry.url, tls=(certificate, key))  # an https registry, no credentials: public
    lines: list[str] = []

    summary = copy_image(
        location(
            RegistrySpec("generic", public.url, options={**FAST, "ca_bundle": certificate}), "library/nginx", "1.0"
        ),
        location(_acr(other_registry.url), "prod/nginx", "1.0"),
        notify=lines.append,
    )

    assert api.imports == [] and summary.fast_path is None
    assert get_manifest_digest(other_registry.url, "prod/nginx", "1.0") == digest
    assert any("over ACR import's limit of 2 GiB per layer from a public registry" in line for line in lines)


def test_a_cancel_stops_the_wait_for_an_import_and_no_plain_copy_follows(
    registry, other_registry, monkeypatch, quick_polls
):
    with time_budget(None, what="test") as budget:
        api = FakeImports(lambda parameters: Poller(None, on_done=None))
        monkeypatch.setattr(acr, "management_client", lambda spec: api)
        push_random_image(registry.url, "team/api", "1.0")
        lines: list[str] = []

        def notify(line: str) -> None:
            lines.append(line)
            if "still running" in line:
                budget.stop("cancelled by alice")

        with pytest.raises(CopyStopped):
            copy_image(
                location(_acr(registry.url), "team/api", "1.0"),
                location(_acr(other_registry.url), "prod/api", "1.0"),
                notify=notify,
            )

    assert get_manifest_digest(other_registry.url, "prod/api", "1.0") is None
    assert not any("copying through the portal" in line for line in lines)


def test_import_limits_are_the_documented_ones():
    assert acr.IMPORT_MAX_MANIFESTS == 50 and acr.PUBLIC_IMPORT_MAX_LAYER_BYTES == 2 * 1024**3
