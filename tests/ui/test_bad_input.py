"""Bad input to the dashboard that used to fail with a 500, lose what the user typed or say too little: a NUL in the
overview's cursor, the last representable day as an audit filter, stored credentials no configured key can read, a
comment the browser let through but the server refuses, and a freeze window on an environment nobody has."""

from __future__ import annotations

import csv
import io
import re

import pytest
from cryptography.fernet import Fernet
from django.test import Client
from django.urls import reverse

from ci_integrations.models import Approval, AuditEntry, FreezeWindow, Promotion, Registry
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.promotions import promotion_cancel, promotion_request
from tests.support.sign_in import sign_in

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    sign_in(client, user)
    return client


def requested(world, env="staging"):
    artifact = world.place("qa", "1.0.0")
    return promotion_request(artifact=artifact, to_env=env, actor=Actor.for_user(world.users["release1"]))


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_the_overview_with_a_nul_byte_in_its_cursor_lists_integrations_instead_of_failing(world):
    response = client_for(world.users["viewer"]).get(reverse("overview"), {"after": "a\x00b"})
    assert response.status_code == 200
    assert [row.integration.name for row in response.context["matrix"].rows] == [world.integration.name]


def test_the_audit_log_and_its_exports_filtered_to_the_last_day_there_is_list_every_entry(world):
    audit_record(actor="someone", action="test.entry", integration=world.integration.name)
    client = client_for(world.users["auditor"])
    page = client.get(reverse("audit"), {"since": "2000-01-01", "until": "9999-12-31"})
    assert page.status_code == 200
    assert [e.action for e in page.context["page"].entries] == ["test.entry"]
    export = client.get(reverse("audit_export_csv"), {"until": "9999-12-31"})
    assert export.status_code == 200
    rows = list(csv.reader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert [row[3] for row in rows[1:-1]] == ["test.entry"]
    jsonl = client.get(reverse("audit_export_jsonl"), {"until": "9999-12-31"})
    assert jsonl.status_code == 200
    assert len(b"".join(jsonl.streaming_content).decode().splitlines()) == AuditEntry.objects.count() + 1


def test_the_promote_preview_says_which_registry_has_credentials_no_configured_key_can_read(world):
    artifact = world.place("qa", "2.0.0")
    password = "hunter2-registry-password"
    foreign = Fernet(Fernet.generate_key()).encrypt(f'{{"username": "robot", "password": "{password}"}}'.encode())
    Registry.objects.filter(pk=world.staging.registry_id).update(credentials_encrypted=foreign.decode())
    client = client_for(world.users["release1"])
    url = reverse("promote", args=[artifact.pk, "staging"])
    response = client.get(url)
    assert response.status_code == 200
    errors = response.context["preflight"]["errors"]
    assert any(
        e.startswith(f"target: registry {world.staging.registry.name!r}") and "P2P_FERNET_KEYS" in e for e in errors
    ), errors
    assert response.context["preflight"]["target_writable"] is False
    body = response.content.decode()
    assert password not in body and foreign.decode() not in body
    # The preview still offers the request; the policy does not read credentials.
    assert client.post(url, {"reason": "ship it"}).status_code == 302
    assert Promotion.objects.filter(artifact=artifact).exists()


def test_deciding_on_a_promotion_no_longer_pending_says_it_cannot_be_rejected(world):
    promotion = requested(world)
    promotion_cancel(promotion=promotion, actor=Actor.for_user(world.users["release1"]))
    client = client_for(world.users["release2"])
    rejected = client.post(reverse("promotion_reject", args=[promotion.pk]), {"comment": "no"}, follow=True)
    approved = client.post(reverse("promotion_approve", args=[promotion.pk]), {"comment": "ok"}, follow=True)
    assert f"promotion #{promotion.pk} is cancelled; only promotions pending approval can be rejected" in (
        messages_of(rejected)
    )
    assert f"promotion #{promotion.pk} is cancelled; only promotions pending approval can be approved" in (
        messages_of(approved)
    )


# A browser's maxlength counts a line break as one character but the form sends it as two (CR LF).
LINE = "All checks green, release notes read, the rollback plan agreed with the on-call engineers for tonight. ✓"
LONG_COMMENT = "\r\n".join([LINE] * 19)


@pytest.mark.parametrize("decision", ["promotion_approve", "promotion_reject"])
@pytest.mark.parametrize("htmx", [False, True])
def test_a_comment_the_server_refuses_comes_back_on_the_decision_page_with_the_reason(world, decision, htmx):
    assert len(LONG_COMMENT.replace("\r\n", "\n")) <= 2000 < len(LONG_COMMENT)
    promotion = requested(world)
    client = client_for(world.users["release2"])
    response = client.post(
        reverse(decision, args=[promotion.pk]),
        {"comment": LONG_COMMENT, "next": reverse("approvals")},
        headers={"HX-Request": "true"} if htmx else {},
    )
    assert response.status_code == 200
    body = response.content.decode()
    textarea = re.search(r'<textarea id="comment-\d+" name="comment"[^>]*>\n(.*?)</textarea>', body, re.S)
    assert textarea and textarea.group(1) == LONG_COMMENT
    assert f"Comment: Ensure this value has at most 2000 characters (it has {len(LONG_COMMENT)})." in body
    assert f'<input type="hidden" name="next" value="{reverse("approvals")}">' in body
    assert not Approval.objects.exists()
    promotion.refresh_from_db()
    assert promotion.state == Promotion.State.PENDING_APPROVAL


def test_a_freeze_window_on_an_environment_no_integration_has_is_refused_and_the_form_kept(world):
    client = client_for(world.users["admin"])
    data = {
        "name": "Black Friday",
        "environments": "staging, Prod",
        "starts_at": "2031-01-01T00:00",
        "ends_at": "2031-01-02T00:00",
        "reason": "sales",
    }
    response = client.post(reverse("freeze_windows"), data)
    assert response.status_code == 200
    assert response.context["form"].errors["environments"] == [
        "No integration has an environment named 'Prod'; the environments are: prod, qa, staging."
    ]
    body = response.content.decode()
    assert 'value="Black Friday"' in body and 'value="staging, Prod"' in body
    assert not FreezeWindow.objects.exists()
    assert client.post(reverse("freeze_windows"), {**data, "environments": "staging, prod"}).status_code == 302
    assert FreezeWindow.objects.get().environments == ["prod", "staging"]
