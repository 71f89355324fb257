"""The Django admin: every change is audited, secrets never logged, and what services own stays read-only."""

import pytest
from django.contrib.auth.models import Group, Permission
from django.urls import reverse

from ci_integrations.models import (
    ApiToken,
    Artifact,
    AuditEntry,
    Bucket,
    Integration,
    Promotion,
    Registry,
    Webhook,
    Workflow,
)
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record, audit_verify

DIGEST = "sha256:" + "b" * 64


def registry_form(**overrides) -> dict:
    return {
        "name": "build",
        "provider": "generic",
        "url": "https://build.example.com",
        "options": "{}",
        "new_credentials": "",
        **overrides,
    }


def test_adding_a_registry_is_audited_and_credentials_are_write_only(admin_client):
    response = admin_client.post(
        reverse("admin:ci_integrations_registry_add"),
        registry_form(new_credentials='{"username": "robot", "password": "pa55-word"}'),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    registry = Registry.objects.get(name="build")
    assert registry.get_credentials() == {"username": "robot", "password": "pa55-word"}
    entry = AuditEntry.objects.get(action="admin.create")
    assert entry.actor == "admin" and entry.object_type == "registry" and entry.object_id == str(registry.pk)
    assert entry.after["url"] == "https://build.example.com" and entry.after["credentials"] == "stored"
    assert "pa55-word" not in str(entry.after) and "credentials_encrypted" not in entry.after
    page = admin_client.get(reverse("admin:ci_integrations_registry_change", args=[registry.pk])).content.decode()
    assert "pa55-word" not in page and registry.credentials_encrypted not in page


def test_typed_credentials_are_not_shown_back_when_the_registry_form_has_errors(admin_client):
    response = admin_client.post(
        reverse("admin:ci_integrations_registry_add"),
        registry_form(url="not a url", new_credentials='{"username": "robot", "password": "pa55-word-typed"}'),
    )
    page = response.content.decode()
    assert response.status_code == 200 and "errornote" in page  # the form came back with its errors
    assert "pa55-word-typed" not in page and not Registry.objects.exists()


def test_changing_a_registry_records_only_what_changed(admin_client):
    registry = Registry.objects.create(name="build", url="https://build.example.com")
    url = reverse("admin:ci_integrations_registry_change", args=[registry.pk])
    response = admin_client.post(url, registry_form(url="https://mirror.example.com"))
    assert response.status_code == 302
    entry = AuditEntry.objects.get(action="admin.update")
    assert entry.before == {"url": "https://build.example.com"} and entry.after == {"url": "https://mirror.example.com"}

    admin_client.post(url, registry_form(url="https://mirror.example.com", new_credentials='{"password": "x1"}'))
    entry = AuditEntry.objects.filter(action="admin.update").latest("id")
    assert entry.before == {"credentials": "ambient"} and entry.after == {"credentials": "stored (replaced)"}
    saved_again = AuditEntry.objects.count()
    admin_client.post(url, registry_form(url="https://mirror.example.com"))
    assert AuditEntry.objects.count() == saved_again  # nothing changed, nothing recorded
    assert Registry.objects.get().get_credentials() == {"password": "x1"}  # empty field keeps what is stored


def test_deleting_through_the_admin_is_audited(admin_client):
    registry = Registry.objects.create(name="old", url="https://old.example.com")
    response = admin_client.post(reverse("admin:ci_integrations_registry_delete", args=[registry.pk]), {"post": "yes"})
    assert response.status_code == 302 and not Registry.objects.exists()
    entry = AuditEntry.objects.get(action="admin.delete")
    assert entry.before["name"] == "old" and entry.object_id == str(registry.pk)


def test_bulk_delete_action_is_audited_per_row(admin_client):
    rows = [Registry.objects.create(name=f"r{n}", url=f"https://r{n}.example.com") for n in range(3)]
    response = admin_client.post(
        reverse("admin:ci_integrations_registry_changelist"),
        {"action": "delete_selected", "_selected_action": [r.pk for r in rows], "post": "yes"},
    )
    assert response.status_code == 302 and not Registry.objects.exists()
    assert sorted(AuditEntry.objects.filter(action="admin.delete").values_list("object_repr", flat=True)) == [
        "r0",
        "r1",
        "r2",
    ]


def test_inline_buckets_are_audited_with_their_integration(admin_client):
    registry = Registry.objects.create(name="qa", url="http://127.0.0.1:5001")
    response = admin_client.post(
        reverse("admin:ci_integrations_integration_add"),
        {
            "name": "payments-api",
            "kind": "environment",
            "workflow": "",
            "description": "",
            "buckets-TOTAL_FORMS": "1",
            "buckets-INITIAL_FORMS": "0",
            "buckets-MIN_NUM_FORMS": "0",
            "buckets-MAX_NUM_FORMS": "1000",
            "buckets-0-env": "qa",
            "buckets-0-position": "0",
            "buckets-0-registry": str(registry.pk),
            "buckets-0-repository": "team/payments-api",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    created = list(
        AuditEntry.objects.filter(action="admin.create").order_by("id").values_list("object_type", "integration")
    )
    assert created == [("integration", "payments-api"), ("bucket", "payments-api")]
    assert Bucket.objects.get().repository == "team/payments-api"


def test_admin_refuses_an_integration_on_a_workflow_of_another_kind(admin_client):
    streams = Workflow.objects.create(name="streams", kind="release_stream")
    response = admin_client.post(
        reverse("admin:ci_integrations_integration_add"),
        {
            "name": "app",
            "kind": "environment",
            "workflow": str(streams.pk),
            "buckets-TOTAL_FORMS": "0",
            "buckets-INITIAL_FORMS": "0",
            "buckets-MIN_NUM_FORMS": "0",
            "buckets-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code == 200 and "is for kind release_stream" in response.content.decode()
    assert not Integration.objects.exists() and not AuditEntry.objects.exists()


def test_group_permission_changes_are_audited(admin_client):
    permission = Permission.objects.get(codename="approve_promotion")
    response = admin_client.post(reverse("admin:auth_group_add"), {"name": "approvers", "permissions": [permission.pk]})
    assert response.status_code == 302
    entries = list(AuditEntry.objects.filter(object_type="group").order_by("id"))
    assert [e.action for e in entries] == ["admin.create", "admin.update"]
    assert entries[1].after == {"permissions": [str(permission)]}


def test_webhook_secret_is_write_only_and_never_logged(admin_client):
    integration = Integration.objects.create(name="app")
    response = admin_client.post(
        reverse("admin:ci_integrations_webhook_add"),
        {
            "integration": integration.pk,
            "url": "https://hooks.example.com/x",
            "format": "slack",
            "events": "[]",
            "active": "on",
            "new_secret": "whsec-123",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    assert Webhook.objects.get().get_secret() == "whsec-123" and Webhook.objects.get().format == "slack"
    assert "whsec-123" not in str(AuditEntry.objects.get().after)


@pytest.fixture
def audit_entry(db):
    return audit_record(actor=Actor.system("tester"), action="test.entry", reason="original")


def test_audit_log_admin_is_read_only_even_for_superusers(admin_client, audit_entry):
    change = reverse("admin:ci_integrations_auditentry_change", args=[audit_entry.pk])
    page = admin_client.get(change)
    assert page.status_code == 200 and "original" in page.content.decode()  # readable
    assert admin_client.post(change, {"reason": "rewritten", "actor": "x"}).status_code == 403
    delete = reverse("admin:ci_integrations_auditentry_delete", args=[audit_entry.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert admin_client.get(reverse("admin:ci_integrations_auditentry_add")).status_code == 403
    bulk = admin_client.post(
        reverse("admin:ci_integrations_auditentry_changelist"),
        {"action": "delete_selected", "_selected_action": [audit_entry.pk], "post": "yes"},
    )
    assert bulk.status_code in (200, 302)
    assert AuditEntry.objects.get(pk=audit_entry.pk).reason == "original"
    assert audit_verify().ok


def test_promotion_state_cannot_be_changed_in_the_admin(admin_client):
    registry = Registry.objects.create(name="qa", url="http://127.0.0.1:5001")
    integration = Integration.objects.create(name="app")
    bucket = Bucket.objects.create(integration=integration, env="prod", registry=registry, repository="app")
    artifact = Artifact.objects.create(integration=integration, digest=DIGEST)
    promotion = Promotion.objects.create(
        integration=integration, artifact=artifact, digest=DIGEST, to_bucket=bucket, tag="v1", required_approvals=2
    )
    change = reverse("admin:ci_integrations_promotion_change", args=[promotion.pk])
    assert admin_client.get(change).status_code == 200
    assert admin_client.post(change, {"state": "queued"}).status_code == 403
    assert Promotion.objects.get().state == Promotion.State.PENDING_APPROVAL
    assert admin_client.get(reverse("admin:ci_integrations_approval_add")).status_code == 403
    assert admin_client.get(reverse("admin:ci_integrations_promotion_add")).status_code == 403


def test_token_admin_shows_no_secret_and_revokes_with_an_audit_entry(admin_client, admin_user):
    from ci_integrations.services.tokens import token_create

    integration = Integration.objects.create(name="app")
    token, plain = token_create(
        name="ci", kind="ci", actor=Actor.for_user(admin_user), owner=admin_user, integrations=[integration]
    )
    page = admin_client.get(reverse("admin:ci_integrations_apitoken_change", args=[token.pk])).content.decode()
    assert token.secret_hash not in page and plain not in page
    response = admin_client.post(
        reverse("admin:ci_integrations_apitoken_changelist"),
        {"action": "revoke_tokens", "_selected_action": [token.pk]},
    )
    assert response.status_code == 302
    assert ApiToken.objects.get().revoked_at is not None
    assert AuditEntry.objects.filter(action="token.revoked", object_id=str(token.pk)).exists()


def test_the_admin_is_only_for_staff(client, django_user_model):
    user = django_user_model.objects.create_user("viewer", password="pw-123456789")
    user.groups.add(Group.objects.get(name="auditors"))
    client.force_login(user)
    response = client.get(reverse("admin:ci_integrations_registry_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_user_role_and_password_changes_are_audited(admin_client, django_user_model):
    user = django_user_model.objects.create_user("rm", password="first-Passw0rd!")
    response = admin_client.post(
        reverse("admin:auth_user_password_change", args=[user.pk]),
        {"password1": "second-Passw0rd!", "password2": "second-Passw0rd!", "usable_password": "true"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    entry = AuditEntry.objects.get(action="admin.password_changed")
    assert entry.object_id == str(user.pk) and "Passw0rd" not in str(entry.after)
