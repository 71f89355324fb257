"""Every endpoint's happy path, through HTTP, with the real registry and (where an image is copied) a real worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from ci_integrations.models import Arrival, Artifact, AuditEntry, Bucket, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.artifacts import artifact_register
from ci_integrations.services.freeze import freeze_window_create
from tests.support.images import get_manifest_digest, push_random_image

pytestmark = [pytest.mark.postgres]


def register(world, caller, env: str, tag: str, **extra):
    return caller.post(f"/api/v1/integrations/{world.shop.name}/artifacts/", {"env": env, "tag": tag, **extra})


def arrive(world, env: str, tag: str) -> dict:
    """Record an image already in a later bucket's repository as the portal itself would (a promotion's arrival):
    CI may only register where the workflow starts. Returns the artifact's id and digest."""
    artifact, _, _ = artifact_register(integration=world.shop, env=env, tag=tag, actor=Actor.system("promotion"))
    return {"id": artifact.pk, "digest": artifact.digest}


@pytest.mark.django_db
def test_register_search_check_and_read_back_an_artifact(world):
    ci = world.caller("ci_own")
    digest = world.push(world.dev, "1.0.0")
    meta = {"git_sha": "abc123", "branch": "main", "build_url": "https://ci.example.com/1", "labels": {"team": "web"}}
    response = register(world, ci, "dev", "1.0.0", metadata=meta)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["digest"] == digest and body["env"] == "dev" and body["tag"] == "1.0.0" and body["created"] is True

    again = register(world, ci, "dev", "1.0.0", digest=digest)
    assert again.status_code == 200 and again.json()["id"] == body["id"] and again.json()["created"] is False

    found = ci.get(f"/api/v1/integrations/{world.shop.name}/artifacts/?env=dev&tag=1.0.0").json()["results"]
    assert [a["id"] for a in found] == [body["id"]] and found[0]["git_sha"] == "abc123"
    assert ci.get(f"/api/v1/integrations/{world.shop.name}/artifacts/?digest={digest}").json()["results"][0]["id"]
    assert ci.get(f"/api/v1/integrations/{world.shop.name}/artifacts/?env=prod").json()["results"] == []

    check = ci.post(f"/api/v1/artifacts/{body['id']}/checks/", {"name": "functional", "status": "passed"})
    assert check.status_code == 201 and check.json()["status"] == "passed"
    artifact = ci.get(f"/api/v1/artifacts/{body['id']}/").json()
    assert artifact["checks"][0]["name"] == "functional" and artifact["labels"] == {"team": "web"}

    integration = ci.get(f"/api/v1/integrations/{world.shop.name}/").json()
    dev = next(b for b in integration["buckets"] if b["env"] == "dev")
    assert dev["current"]["digest"] == digest and dev["current"]["tag"] == "1.0.0"
    listed = ci.get("/api/v1/integrations/").json()
    assert [i["name"] for i in listed] == [world.shop.name]


@pytest.mark.django_db
def test_a_digest_that_is_not_what_the_tag_points_at_is_a_conflict(world):
    world.push(world.dev, "1.0.0")
    response = register(world, world.caller("ci_own"), "dev", "1.0.0", digest="sha256:" + "0" * 64)
    assert response.status_code == 409 and response.json()["error"]["details"]["registry_digest"].startswith("sha256:")


@pytest.mark.django_db
def test_a_refused_promotion_lists_every_unmet_condition(world):
    world.to_prod.required_checks = ["functional", "nft"]
    world.to_prod.save()
    world.push(world.dev, "1.0.0")
    artifact_id = register(world, world.caller("ci_own"), "dev", "1.0.0").json()["id"]
    response = world.caller("rm").post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": str(artifact_id), "to_env": "prod"}
    )
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "policy"
    unmet = " ".join(error["details"]["unmet"])
    assert len(error["details"]["unmet"]) >= 2 and "functional" in unmet and "staging" in unmet


@pytest.mark.django_db(transaction=True)
def test_promote_by_tag_with_a_ci_token_copies_the_image_and_succeeds(world, run_worker):
    ci = world.caller("ci_own")
    digest = world.push(world.dev, "2.0.0")
    register(world, ci, "dev", "2.0.0")
    response = ci.post(
        "/api/v1/promotions/",
        {"integration": world.shop.name, "artifact": "2.0.0", "from_env": "dev", "to_env": "staging"},
    )
    assert response.status_code == 201, response.content
    promotion = response.json()
    assert promotion["state"] == "queued" and promotion["to_env"] == "staging"

    run_worker()

    done = ci.get(f"/api/v1/promotions/{promotion['id']}/").json()
    assert done["state"] == "succeeded", done
    assert done["result_digest"] == digest and done["progress"]["blobs_done"] == done["progress"]["blobs_total"]
    assert done["log_tail"]
    assert get_manifest_digest(world.registry_url, world.staging.repository, "2.0.0") == digest


@pytest.mark.django_db(transaction=True)
def test_approve_with_a_personal_token_then_reject_cancel_and_retry(world, run_worker):
    ci, rm, rm2 = world.caller("ci_own"), world.caller("rm"), world.caller("rm2")
    digest = world.push(world.dev, "3.0.0")
    world.copy(world.dev, world.staging, "3.0.0")
    arrive(world, "staging", "3.0.0")

    requested = rm2.post("/api/v1/promotions/", {"integration": world.shop.name, "artifact": digest, "to_env": "prod"})
    assert requested.status_code == 201 and requested.json()["state"] == "pending_approval"
    pk = requested.json()["id"]
    assert rm2.post(f"/api/v1/promotions/{pk}/approve/", {"comment": "mine"}).status_code == 403  # four-eyes
    approved = rm.post(f"/api/v1/promotions/{pk}/approve/", {"comment": "ship it"})
    assert approved.status_code == 200 and approved.json()["state"] == "queued"
    assert approved.json()["approvals"][0]["comment"] == "ship it"
    run_worker()
    assert rm.get(f"/api/v1/promotions/{pk}/").json()["state"] == "succeeded"
    assert get_manifest_digest(world.registry_url, world.prod.repository, "3.0.0") == digest

    # Reject and cancel end other requests.
    world.push(world.dev, "3.1.0")
    world.copy(world.dev, world.staging, "3.1.0")
    second = arrive(world, "staging", "3.1.0")
    pk2 = rm2.post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": second["digest"], "to_env": "prod"}
    ).json()["id"]
    rejected = rm.post(f"/api/v1/promotions/{pk2}/reject/", {"comment": "not today"})
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    pk3 = rm2.post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": second["digest"], "to_env": "prod"}
    ).json()["id"]
    cancelled = ci.post(f"/api/v1/promotions/{pk3}/cancel/", {"comment": "superseded"})
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"

    # A failed copy is retried and then succeeds.
    artifact = Artifact.objects.get(digest=second["digest"])
    failed = Promotion.objects.create(
        integration=world.shop,
        step=world.to_prod,
        artifact=artifact,
        digest=artifact.digest,
        from_bucket=world.staging,
        to_bucket=world.prod,
        source_tag="3.1.0",
        tag="3.1.0",
        state=Promotion.State.FAILED,
        error="registry went away",
    )
    retried = ci.post(f"/api/v1/promotions/{failed.pk}/retry/", {})
    assert retried.status_code == 200 and retried.json()["state"] == "queued", retried.content
    run_worker()
    assert ci.get(f"/api/v1/promotions/{failed.pk}/").json()["state"] == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_rollback_returns_the_bucket_to_an_earlier_artifact(world, run_worker):
    ci = world.caller("ci_own")
    for tag in ("4.0.0", "4.1.0"):
        world.push(world.dev, tag)
        world.copy(world.dev, world.staging, tag)
    first = arrive(world, "staging", "4.0.0")
    arrive(world, "staging", "4.1.0")
    response = world.caller("rm").post(
        f"/api/v1/integrations/{world.shop.name}/rollback/",
        {"env": "staging", "to": first["digest"], "reason": "4.1.0 breaks checkout"},
    )
    assert response.status_code == 201, response.content
    assert response.json()["kind"] == "rollback"
    run_worker()
    assert ci.get(f"/api/v1/promotions/{response.json()['id']}/").json()["state"] == "succeeded"
    world.staging.refresh_from_db()
    current = world.staging.current_arrival
    assert current.artifact_id == first["id"] and current.how == Arrival.How.ROLLBACK


@pytest.mark.django_db
def test_a_rollback_through_a_freeze_takes_an_override_reason_from_a_platform_admin(world):
    ci = world.caller("ci_own")
    for tag in ("4.0.0", "4.1.0"):
        world.push(world.staging, tag)
    first = arrive(world, "staging", "4.0.0")
    arrive(world, "staging", "4.1.0")
    freeze_window_create(
        name="Black Friday",
        environments=["staging"],
        starts_at=timezone.now() - timedelta(minutes=1),
        ends_at=timezone.now() + timedelta(hours=1),
        reason="sales",
        actor=Actor.for_user(world.users["admin"]),
    )
    url = f"/api/v1/integrations/{world.shop.name}/rollback/"
    body = {"env": "staging", "to": first["digest"], "reason": "4.1.0 breaks checkout"}
    frozen = world.caller("admin").post(url, body)
    assert frozen.status_code == 409 and "Black Friday" in " ".join(frozen.json()["error"]["details"]["unmet"])
    not_allowed = world.caller("rm").post(url, {**body, "freeze_override_reason": "outage"})
    assert not_allowed.status_code == 409 and "may not override" in not_allowed.content.decode()
    assert ci.post(url, {**body, "freeze_override_reason": "outage"}).status_code == 403
    response = world.caller("admin").post(url, {**body, "freeze_override_reason": "outage INC-7"})
    assert response.status_code == 201, response.content
    rollback = Promotion.objects.get(pk=response.json()["id"])
    assert rollback.kind == Promotion.Kind.ROLLBACK and rollback.freeze_override_reason == "outage INC-7"
    assert AuditEntry.objects.get(action="promotion.freeze_overridden", object_id=str(rollback.pk)).reason == (
        "outage INC-7"
    )


@pytest.mark.django_db(transaction=True)
def test_import_copies_from_a_build_registry_and_the_job_can_be_followed(world, run_worker):
    host = world.registry_url.split("://", 1)[1]
    digest = push_random_image(world.registry_url, "outside/build", "7.0.0", layers=1, layer_size=512)
    ci = world.caller("ci_own")
    response = ci.post(f"/api/v1/integrations/{world.shop.name}/imports/", {"source": f"{host}/outside/build:7.0.0"})
    assert response.status_code == 202, response.content
    job = response.json()
    assert job["state"] == "queued" and job["url"] == f"/api/v1/jobs/{job['id']}/"
    run_worker()
    done = ci.get(job["url"]).json()
    assert done["state"] == "succeeded", done
    assert done["result"]["digest"] == digest
    assert get_manifest_digest(world.registry_url, world.dev.repository, "7.0.0") == digest


@pytest.mark.django_db
def test_push_credentials_only_where_the_bucket_allows_them(world, token_registry_server):
    Bucket.objects.filter(integration=world.shop).update(registry=token_registry_server.row())
    world.dev.refresh_from_db()
    ci = world.caller("ci_own")
    response = ci.post(f"/api/v1/integrations/{world.shop.name}/push-credentials/", {"env": "dev"})
    assert response.status_code == 200, response.content
    assert response.json()["registry"] == token_registry_server.url.split("://", 1)[1]
    assert response.json()["image"] == world.dev.image_name
    refused = ci.post(f"/api/v1/integrations/{world.shop.name}/push-credentials/", {"env": "staging"})
    assert refused.status_code == 403 and "allow_push_credentials" in refused.json()["error"]["message"]


@pytest.mark.django_db
def test_audit_list_filters_pages_with_a_cursor_and_verify_reports_the_head(world):
    ci = world.caller("ci_own")
    for n in range(3):
        world.push(world.dev, f"5.0.{n}")
        register(world, ci, "dev", f"5.0.{n}")
    auditor = world.caller("auditor")
    page = auditor.get(f"/api/v1/audit/?integration={world.shop.name}&action=artifact.registered&limit=2").json()
    assert len(page["results"]) == 2 and page["next"]
    rest = auditor.get(page["next"]).json()
    ids = [e["id"] for e in page["results"] + rest["results"]]
    assert len(ids) == 3 and ids == sorted(ids, reverse=True)
    assert all(e["action"] == "artifact.registered" for e in page["results"] + rest["results"])
    prefix = auditor.get("/api/v1/audit/?action=token.").json()["results"]
    assert prefix and all(e["action"].startswith("token.") for e in prefix)
    later = auditor.get("/api/v1/audit/?since=2999-01-01T00:00:00Z").json()["results"]
    assert later == []

    verify = auditor.get("/api/v1/audit/verify/").json()
    assert verify["ok"] is True and verify["entries"] == AuditEntry.objects.count()
    assert verify["head"] == AuditEntry.objects.order_by("-id").first().hash


@pytest.mark.django_db
def test_the_cli_is_served_as_python_without_a_token(client):
    response = client.get("/api/v1/cli/p2p")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/x-python")
    assert response.content.startswith(b"#!/usr/bin/env python3")


def test_every_operation_in_the_schema_describes_itself(client):
    import yaml

    from ci_integrations.api.views import ApiView

    schema = yaml.safe_load(client.get("/api/schema/").content)
    base = " ".join(ApiView.__doc__.split())
    operations = {
        f"{method.upper()} {path}": operation
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    }
    undescribed = [name for name, op in operations.items() if not op.get("description", "").strip()]
    borrowed = [name for name, op in operations.items() if " ".join(op.get("description", "").split()) == base]
    assert len(operations) >= 18 and undescribed == [] and borrowed == []
