"""What changes: the diff between what an environment runs and the candidate, from two real registries' images.

Real PostgreSQL and docker-registry; the SBOMs and scans are attached the ways scanners attach them (a referrer
listed in the fallback index, a cosign `.att` DSSE envelope).
"""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from ci_integrations.models import ImageDiff, Registry
from ci_integrations.services.actors import Actor
from ci_integrations.services.artifacts import artifact_register
from ci_integrations.services.diffs import compare_url, preview_diff, promotion_diff
from ci_integrations.services.promotions import promotion_request
from tests.promotions.conftest import place
from tests.support.attachments import (
    SPDX,
    attach_vuln_attestation,
    push_fallback_index,
    push_referrer,
    referrer_entry,
)
from tests.support.images import get_manifest, push_blob, push_index, put_manifest
from tests.support.registry_server import free_port
from tests.support.sign_in import sign_in

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SARIF = "application/sarif+json"
BASE_LAYER = b"base layer both images share" * 100


def push_image(url: str, repository: str, tag: str, *, layers: list[bytes], config: dict) -> str:
    """An image of exactly these layers and this config (`config` is the image config's `config` object)."""
    descriptors = [{"mediaType": OCI_LAYER, "digest": push_blob(url, repository, d), "size": len(d)} for d in layers]
    blob = json.dumps({"architecture": "amd64", "os": "linux", "config": config, "rootfs": {"type": "layers"}}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": push_blob(url, repository, blob), "size": len(blob)},
        "layers": descriptors,
    }
    return put_manifest(url, repository, tag, json.dumps(manifest).encode(), OCI_MANIFEST)


def attach_sbom(url: str, repository: str, digest: str, document: dict, artifact_type: str = SPDX) -> None:
    sbom = push_referrer(url, repository, digest, artifact_type=artifact_type, payload=json.dumps(document).encode())
    size = len(get_manifest(url, repository, sbom)[0])
    push_fallback_index(url, repository, digest, [referrer_entry(sbom, size, artifact_type)])


def spdx(*packages: tuple[str, str]) -> dict:
    return {"spdxVersion": "SPDX-2.3", "packages": [{"name": n, "versionInfo": v} for n, v in packages]}


def trivy(*findings: tuple[str, str, str]) -> dict:
    vulns = [{"VulnerabilityID": i, "PkgName": p, "Severity": s} for i, p, s in findings]
    return {"SchemaVersion": 2, "Results": [{"Target": "image", "Vulnerabilities": vulns}]}


@pytest.fixture
def running_and_candidate(world):
    """staging runs v1; v2 waits in qa: one layer shared, one replaced, config, SBOM and scan changed."""
    url = world.build_url
    v1 = push_image(
        url,
        world.staging.repository,
        "v1",
        layers=[BASE_LAYER, b"app v1" * 500],
        config={
            "Labels": {"org.opencontainers.image.version": "1.0.0", "team": "pay", "old": "x"},
            "Env": ["PATH=/bin", "DB_PASSWORD=hunter2", "GONE=1"],
            "Entrypoint": ["/app"],
            "ExposedPorts": {"8080/tcp": {}},
        },
    )
    running = place(world, "staging", "v1", digest=v1)
    running.git_sha, running.repo_url = "a" * 40, "https://github.com/acme/checkout"
    running.save()
    running.checks.create(name="functional", status="failed")
    attach_sbom(url, world.staging.repository, v1, spdx(("openssl", "3.0.1"), ("zlib", "1.2"), ("left-pad", "1")))
    attach_vuln_attestation(
        url, world.staging.repository, v1, trivy(("CVE-1", "openssl", "CRITICAL"), ("CVE-2", "zlib", "LOW"))
    )

    v2 = push_image(
        url,
        world.qa.repository,
        "v2",
        layers=[BASE_LAYER, b"app v2 is larger" * 900],
        config={
            "Labels": {"org.opencontainers.image.version": "1.1.0", "team": "pay", "new": "y"},
            "Env": ["PATH=/bin", "DB_PASSWORD=correct-horse", "ADDED=1"],
            "Entrypoint": ["/app", "--serve"],
            "ExposedPorts": {"8080/tcp": {}, "9090/tcp": {}},
            "User": "1000",
        },
    )
    changelog = [{"sha": "b" * 40, "title": "Pay faster", "author": "ana"}]
    candidate, _, _ = artifact_register(
        integration=world.integration,
        env="qa",
        tag="v2",
        actor=Actor.system("ci"),
        metadata={"git_sha": "b" * 40, "repo_url": "https://github.com/acme/checkout", "changelog": changelog},
    )
    candidate.checks.create(name="functional", status="passed")
    attach_sbom(url, world.qa.repository, v2, spdx(("openssl", "3.0.7"), ("zlib", "1.2"), ("curl", "8.0")))
    attach_vuln_attestation(url, world.qa.repository, v2, trivy(("CVE-2", "zlib", "LOW"), ("CVE-9", "curl", "HIGH")))
    return running, candidate


def test_the_preview_names_commits_config_layers_packages_and_findings_that_change(world, running_and_candidate):
    running, candidate = running_and_candidate
    diff = preview_diff(artifact=candidate, to_env="staging")

    assert diff["before"]["digest"] == running.digest and diff["after"]["digest"] == candidate.digest
    assert diff["commits"]["compare_url"] == f"https://github.com/acme/checkout/compare/{'a' * 40}...{'b' * 40}"
    assert diff["commits"]["changelog"][0]["title"] == "Pay faster"

    config = diff["image"]["config"]
    assert [
        (label["name"], label["before"], label["after"], label["highlight"]) for label in config["labels"]["changed"]
    ] == [("org.opencontainers.image.version", "1.0.0", "1.1.0", True)]
    assert [label["name"] for label in config["labels"]["added"]] == ["new"]
    assert [label["name"] for label in config["labels"]["removed"]] == ["old"]
    assert config["env"] == {"added": ["ADDED"], "removed": ["GONE"], "changed": ["DB_PASSWORD"]}
    assert "hunter2" not in json.dumps(diff) and "correct-horse" not in json.dumps(diff)
    assert {s["name"] for s in config["settings"]} == {"entrypoint", "user"}
    assert config["ports"] == {"added": ["9090/tcp"], "removed": []}

    layers = diff["image"]["layers"]
    assert [x["size"] for x in layers["shared"]] == [len(BASE_LAYER)]
    assert layers["added_bytes"] == len(b"app v2 is larger" * 900)
    assert layers["removed_bytes"] == len(b"app v1" * 500)
    assert layers["total_change"] == len(b"app v2 is larger" * 900) - len(b"app v1" * 500)

    sbom = diff["image"]["sbom"]
    assert sbom["counts"] == {"added": 1, "removed": 1, "changed": 1, "total": 3}
    assert sbom["changed"] == [{"name": "openssl", "before": "3.0.1", "after": "3.0.7"}]
    assert sbom["added"] == [{"name": "curl", "version": "8.0"}]
    assert sbom["removed"] == [{"name": "left-pad", "version": "1"}]

    vulns = diff["image"]["vulnerabilities"]
    assert vulns["new"] == [{"id": "CVE-9", "package": "curl", "severity": "high"}]
    assert vulns["fixed"] == [{"id": "CVE-1", "package": "openssl", "severity": "critical"}]
    assert vulns["new_by_severity"]["high"] == 1 and vulns["fixed_by_severity"]["critical"] == 1

    assert {(c["name"], c["before"], c["after"]) for c in diff["checks"]} == {("functional", "failed", "passed")}
    assert next(m for m in diff["metadata"] if m["name"] == "git_sha")["changed"] is True


def test_the_registry_part_is_read_once_per_digest_pair(world, running_and_candidate):
    running, candidate = running_and_candidate
    first = preview_diff(artifact=candidate, to_env="staging")
    assert ImageDiff.objects.filter(before_digest=running.digest, after_digest=candidate.digest).count() == 1

    # With the registry gone, the second answer still comes from what was read the first time.
    Registry.objects.filter(pk=world.qa.registry_id).update(url=f"http://127.0.0.1:{free_port()}")
    world.qa.registry.refresh_from_db()
    again = preview_diff(artifact=candidate, to_env="staging")
    assert again["image"]["sbom"] == first["image"]["sbom"] and "cached_at" in again["image"]


def test_a_registry_that_is_down_gives_one_line_and_the_rest_of_the_diff(world, running_and_candidate, settings):
    _, candidate = running_and_candidate
    Registry.objects.filter(pk=world.qa.registry_id).update(url=f"http://127.0.0.1:{free_port()}")
    settings.P2P_COPY_RETRY_DELAYS = []

    diff = preview_diff(artifact=candidate, to_env="staging")

    assert "could not be read from the registry" in diff["image"]["unavailable"]
    assert diff["commits"]["compare_url"] and diff["checks"]
    assert not ImageDiff.objects.exists()  # a failure is not kept


def test_an_image_without_attachments_says_so_for_sbom_and_vulnerabilities(world):
    url = world.build_url
    v1 = push_image(url, world.staging.repository, "v1", layers=[b"one"], config={})
    place(world, "staging", "v1", digest=v1)
    push_image(url, world.qa.repository, "v2", layers=[b"two"], config={})
    candidate, _, _ = artifact_register(integration=world.integration, env="qa", tag="v2", actor=Actor.system("ci"))

    diff = preview_diff(artifact=candidate, to_env="staging")

    assert diff["image"]["sbom"]["unavailable"] == "the candidate carries no readable SBOM"
    assert diff["image"]["vulnerabilities"]["unavailable"] == "the candidate carries no readable vulnerability report"
    assert "git_sha and repo_url" in diff["commits"]["unavailable"]


def test_platforms_added_and_removed_are_named_for_an_index(world):
    url = world.build_url
    v1 = push_index(url, world.staging.repository, "v1", platforms=("linux/amd64", "linux/s390x"))
    place(world, "staging", "v1", digest=v1)
    push_index(url, world.qa.repository, "v2", platforms=("linux/amd64", "linux/arm64"))
    candidate, _, _ = artifact_register(integration=world.integration, env="qa", tag="v2", actor=Actor.system("ci"))

    platforms = preview_diff(artifact=candidate, to_env="staging")["image"]["platforms"]

    assert platforms["added"] == ["linux/arm64"] and platforms["removed"] == ["linux/s390x"]


def test_a_cyclonedx_sbom_and_a_sarif_report_are_read_too(world):
    url = world.build_url
    push_image(url, world.qa.repository, "v2", layers=[b"x"], config={})
    candidate, _, _ = artifact_register(integration=world.integration, env="qa", tag="v2", actor=Actor.system("ci"))
    cyclonedx = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "components": [{"name": "app", "version": "2", "components": [{"name": "nested-lib", "version": "0.3"}]}],
    }
    attach_sbom(url, world.qa.repository, candidate.digest, cyclonedx, "application/vnd.cyclonedx+json")
    sarif = {
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"rules": [{"id": "CVE-7", "properties": {"security-severity": "9.8"}}]}},
                "results": [{"ruleId": "CVE-7", "level": "error"}],
            }
        ],
    }
    report = push_referrer(
        url, world.qa.repository, candidate.digest, artifact_type=SARIF, payload=json.dumps(sarif).encode()
    )
    listed = json.loads(get_manifest(url, world.qa.repository, candidate.digest.replace(":", "-"))[0])["manifests"]
    size = len(get_manifest(url, world.qa.repository, report)[0])
    push_fallback_index(url, world.qa.repository, candidate.digest, [*listed, referrer_entry(report, size, SARIF)])

    image = preview_diff(artifact=candidate, to_env="staging")["image"]

    assert {p["name"] for p in image["sbom"]["added"]} == {"app", "nested-lib"}
    assert "CycloneDX" in image["sbom"]["source"]
    assert image["vulnerabilities"]["new"] == [{"id": "CVE-7", "package": "", "severity": "critical"}]
    assert "SARIF" in image["vulnerabilities"]["source"]


@pytest.mark.parametrize(
    ("repo_url", "expected"),
    [
        ("https://github.com/acme/app.git", "https://github.com/acme/app/compare/aaa...bbb"),
        ("https://gitlab.com/acme/group/app", "https://gitlab.com/acme/group/app/-/compare/aaa...bbb"),
        ("https://bitbucket.org/acme/app", "https://bitbucket.org/acme/app/branches/compare/bbb%0Daaa"),
        ("https://git.example.com/acme/app", ""),
        ("javascript:alert(1)", ""),
    ],
)
def test_compare_links_follow_each_forge_s_url_form(repo_url, expected):
    assert compare_url(repo_url, "aaa", "bbb") == expected


def test_the_promotion_page_loads_the_diff_and_the_api_describes_it(world, running_and_candidate):
    _, candidate = running_and_candidate
    world.to_staging.required_approvals = 1
    world.to_staging.save()
    promotion = promotion_request(artifact=candidate, to_env="staging", actor=world.actor(world.alice))
    api = promotion_diff(promotion=promotion)
    assert api["image"]["sbom"]["counts"]["added"] == 1

    browser = sign_in(Client(), world.bob)
    decision = browser.get(reverse("approval_panel", args=[promotion.pk]), HTTP_HX_REQUEST="true")
    assert reverse("promotion_diff", args=[promotion.pk]) in decision.content.decode()
    panel = browser.get(reverse("promotion_diff", args=[promotion.pk]), HTTP_HX_REQUEST="true")
    body = panel.content.decode()
    assert panel.status_code == 200 and "org.opencontainers.image.version" in body and "curl" in body
    assert "DB_PASSWORD" in body and "correct-horse" not in body and "<script" not in body
