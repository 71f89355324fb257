"""Signed checkpoints of the audit chain: what they catch, where they go, and what auditors see.

Tampering goes through the `tamper` fixture (triggers off), as the table's owner or a superuser could do it.
"""

import base64
import csv
import io
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.contrib.auth.models import Group, User
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.test import APIClient

from ci_integrations.management.commands.p2p_worker import checkpoint_forever
from ci_integrations.models import AuditEntry
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import (
    audit_checkpoint,
    audit_export_csv,
    audit_export_jsonl,
    audit_record,
    audit_verify,
    entry_hash,
)
from ci_integrations.services.audit_checkpoints import (
    OFF_REASON,
    audit_public_key,
    checkpoint_from_dict,
    checkpoint_problem,
    checkpoint_sign,
    checkpoint_write,
    verification_keys,
)
from tests.support.roles import restore_roles

TABLE = AuditEntry._meta.db_table


def new_key() -> tuple[str, str]:
    """A fresh Ed25519 key: (private seed in base64, public key in base64)."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    return base64.b64encode(seed).decode(), base64.b64encode(key.public_key().public_bytes_raw()).decode()


@pytest.fixture
def signing(settings, tmp_path):
    """Checkpoints on: a new signing key and a checkpoint directory; gives (directory, public key)."""
    private, public = new_key()
    settings.P2P_AUDIT_SIGNING_KEY = private
    settings.P2P_AUDIT_CHECKPOINT_DIR = str(tmp_path / "checkpoints")
    settings.P2P_AUDIT_CHECKPOINT_WEBHOOK = ""
    return Path(settings.P2P_AUDIT_CHECKPOINT_DIR), public


def append(count: int) -> list[AuditEntry]:
    return [
        audit_record(actor=Actor.system("tester"), action="test.append", after={"index": index})
        for index in range(count)
    ]


def verify_against(directory: Path, *public_keys: str) -> tuple[str, CommandError | None]:
    out = io.StringIO()
    arguments = ["--checkpoints", str(directory)] + [f"--public-key={key}" for key in public_keys]
    try:
        call_command("verify_audit", *arguments, stdout=out)
    except CommandError as error:
        return out.getvalue(), error
    return out.getvalue(), None


def rehash_from(entry_id: int, tamper) -> None:
    """Recompute every hash from `entry_id` on, as someone covering up an edit would."""
    previous = AuditEntry.objects.filter(id__lt=entry_id).order_by("-id").values_list("hash", flat=True).first()
    for entry in AuditEntry.objects.filter(id__gte=entry_id).order_by("id"):
        new_hash = entry_hash(entry, previous)
        tamper(f"UPDATE {TABLE} SET prev_hash = %s, hash = %s WHERE id = %s", [previous, new_hash, entry.id])
        previous = new_hash


def test_verify_audit_with_checkpoints_passes_on_an_intact_chain(db, signing):
    directory, public = signing
    entries = append(3)
    audit_checkpoint()
    append(2)
    audit_checkpoint()
    out, error = verify_against(directory, public)
    assert error is None
    assert out.strip() == f"OK 5 entries, head {AuditEntry.objects.order_by('-id').first().hash}; " + (
        "2 signed checkpoint(s) match"
    )
    assert len(list(directory.glob("*.json"))) == 2 and entries


@pytest.mark.postgres
def test_verify_audit_names_a_truncated_tail_that_the_chain_alone_misses(db, signing, tamper):
    directory, public = signing
    entries = append(5)
    audit_checkpoint()
    tamper(f"DELETE FROM {TABLE} WHERE id > %s", [entries[2].id])
    assert audit_verify().ok  # the hash chain alone cannot see a cut tail
    _, error = verify_against(directory, public)
    assert error is not None and error.returncode == 1
    assert f"BROKEN at entry {entries[4].id}:" in str(error)
    assert f"the chain ends at entry {entries[2].id} (3 entries)" in str(error)
    assert "with 5 entries: the tail was truncated" in str(error)


@pytest.mark.postgres
def test_verify_audit_names_a_history_rewritten_and_rehashed_before_a_checkpoint(db, signing, tamper):
    directory, public = signing
    entries = append(2)
    audit_checkpoint()
    entries += append(3)
    audit_checkpoint()
    tamper(f"UPDATE {TABLE} SET reason = 'nothing happened' WHERE id = %s", [entries[3].id])
    rehash_from(entries[3].id, tamper)
    assert audit_verify().ok  # every link holds again
    _, error = verify_against(directory, public)
    assert f"BROKEN at entry {entries[4].id}: its hash differs from the one checkpoint" in str(error)
    assert f"it, or an entry after entry {entries[1].id}, was rewritten" in str(error)


@pytest.mark.postgres
def test_a_replaced_tail_with_the_same_ids_is_caught_by_the_checkpointed_hash(db, signing, tamper):
    directory, public = signing
    entries = append(3)
    audit_checkpoint()
    tamper(f"UPDATE {TABLE} SET actor = 'someone-else' WHERE id = %s", [entries[2].id])
    rehash_from(entries[2].id, tamper)
    _, error = verify_against(directory, public)
    assert f"BROKEN at entry {entries[2].id}: its hash differs" in str(error)


def test_a_checkpoint_edited_to_match_a_rewritten_head_fails_its_signature(db, signing):
    directory, public = signing
    append(2)
    audit_checkpoint()
    (path,) = directory.glob("*.json")
    forged = json.loads(path.read_text())
    forged["head"] = "f" * 64
    os.chmod(path, 0o644)
    path.write_text(json.dumps(forged))
    _, error = verify_against(directory, public)
    assert error is not None and f"checkpoint {path.name}" in str(error)
    assert "signature that does not verify: it was altered or forged" in str(error)


def test_checkpoints_signed_with_another_key_are_not_trusted(db, signing):
    directory, _ = signing
    append(1)
    audit_checkpoint()
    _, someone_elses = new_key()
    _, error = verify_against(directory, someone_elses)
    assert error is not None and "which is not a trusted key" in str(error)


def test_a_checkpoint_verifies_with_any_ed25519_tool_over_its_canonical_json(db, signing):
    _, public = signing
    append(1)
    published = audit_checkpoint().as_dict()
    signature = base64.b64decode(published.pop("signature"))
    statement = json.dumps(published, sort_keys=True, separators=(",", ":")).encode()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(base64.b64decode(public)).verify(signature, statement)  # raises if not
    assert audit_public_key() == public


def test_checkpoint_files_are_written_once_read_only_and_never_replaced(db, signing):
    directory, _ = signing
    append(1)
    checkpoint = checkpoint_sign(entry_id=1, entries=1, head="a" * 64)
    first = checkpoint_write(checkpoint, directory)
    before = first.read_bytes()
    again = checkpoint_write(checkpoint, directory)  # the same statement published twice
    assert again == first and first.read_bytes() == before
    assert os.listdir(directory) == [first.name]  # no temporary file left behind
    assert first.stat().st_mode & 0o222 == 0
    assert checkpoint_from_dict(json.loads(before), source=first.name) == checkpoint


def test_without_a_signing_key_checkpoints_are_off_and_say_so(transactional_db, settings, tmp_path, caplog):
    settings.P2P_AUDIT_SIGNING_KEY = ""
    settings.P2P_AUDIT_CHECKPOINT_DIR = str(tmp_path / "checkpoints")
    append(2)
    assert audit_checkpoint() is None and audit_public_key() is None
    assert not (tmp_path / "checkpoints").exists()
    trailer = json.loads(list(audit_export_jsonl(AuditEntry.objects.order_by("id")))[-1])
    assert "checkpoint" not in trailer
    with caplog.at_level(logging.WARNING, logger="ci_integrations.audit"):
        call_command("p2p_worker", "--burst", "--no-reconciler", "--simple", "default")
    assert OFF_REASON in caplog.text


def test_a_bad_signing_key_stops_with_an_error_that_does_not_repeat_it(db, settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.P2P_AUDIT_SIGNING_KEY = "bm90LWEta2V5"  # base64 of "not-a-key"
    with pytest.raises(ImproperlyConfigured, match="P2P_AUDIT_SIGNING_KEY is not a usable") as raised:
        audit_checkpoint()
    assert "bm90LWEta2V5" not in str(raised.value)


def test_exports_carry_the_signed_head_and_publish_it(db, signing):
    directory, public = signing
    entries = append(3)
    keys = verification_keys([public])

    trailer = json.loads(list(audit_export_jsonl(AuditEntry.objects.order_by("id")))[-1])
    signed = checkpoint_from_dict(trailer["checkpoint"])
    assert checkpoint_problem(signed, keys) == ""
    assert (signed.entry_id, signed.entries, signed.head) == (entries[-1].id, 3, entries[-1].hash)
    assert trailer["chain_head"] == entries[-1].hash

    rows = list(csv.reader(io.StringIO("".join(audit_export_csv(AuditEntry.objects.order_by("id"))))))
    assert rows[-2] == ["# chain_head", entries[-1].hash, "chain_entries", "3"]
    assert rows[-1][0] == "# checkpoint"
    assert checkpoint_problem(checkpoint_from_dict(json.loads(rows[-1][1])), keys) == ""
    assert len(list(directory.glob("*.json"))) == 2  # each export published its checkpoint


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - the name http.server calls
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_webhook_receives_each_checkpoint_and_a_dead_one_is_only_logged(db, signing, settings, caplog):
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _Receiver.received = []
        settings.P2P_AUDIT_CHECKPOINT_WEBHOOK = f"http://127.0.0.1:{server.server_port}/checkpoints"
        append(1)
        checkpoint = audit_checkpoint()
        assert _Receiver.received == [checkpoint.as_dict()]
    finally:
        server.shutdown()
        server.server_close()
    settings.P2P_AUDIT_CHECKPOINT_WEBHOOK = f"http://127.0.0.1:{server.server_port}/checkpoints"  # nothing listens
    with caplog.at_level(logging.WARNING, logger="ci_integrations.audit"):
        assert audit_checkpoint() is not None
    assert "could not post the audit checkpoint" in caplog.text


def test_the_worker_loop_publishes_checkpoints_and_skips_an_unchanged_head(transactional_db, signing):
    directory, public = signing
    append(2)
    stop = threading.Event()
    thread = threading.Thread(target=checkpoint_forever, args=(stop, 0.05), daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if list(directory.glob("*.json")):
                break
            stop.wait(0.05)
        stop.wait(0.3)  # several more passes over the same head
        assert len(list(directory.glob("*.json"))) == 1
        append(1)
        for _ in range(100):
            if len(list(directory.glob("*.json"))) == 2:
                break
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(5)
    assert len(list(directory.glob("*.json"))) == 2
    assert verify_against(directory, public)[1] is None


# --- what the API and the audit page tell an auditor -------------------------------------------------------------


@pytest.fixture
def auditor(db):
    restore_roles()
    user = User.objects.create_user(username="auditor-1", password="x")
    user.groups.set(Group.objects.filter(name="auditors"))
    return user


def verify_api(user) -> dict:
    client = APIClient()
    client.force_authenticate(user)
    response = client.get("/api/v1/audit/verify/")
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def no_background_result():
    import django_rq

    from ci_integrations.services.audit_verification import RESULT_KEY, RUNNING_KEY

    redis = django_rq.get_connection("default")
    redis.delete(RESULT_KEY, RUNNING_KEY)
    yield
    redis.delete(RESULT_KEY, RUNNING_KEY)


def test_the_verify_api_walks_only_the_entries_after_the_newest_checkpoint(auditor, signing, settings):
    _, public = signing
    settings.P2P_AUDIT_VERIFY_MAX_ENTRIES = 3
    entries = append(10)  # more than a request may walk
    checkpoint = audit_checkpoint()
    entries += append(2)
    answer = verify_api(auditor)
    assert answer["ok"] is True and answer["scope"] == "since_checkpoint"
    assert answer["checkpoint"] == checkpoint.as_dict() and answer["public_key"] == public
    assert answer["entries"] == 12 and answer["head"] == entries[-1].hash and answer["queued"] is False


def test_the_verify_api_names_a_broken_entry_after_the_checkpoint(auditor, signing, tamper):
    entries = append(2)
    audit_checkpoint()
    entries += append(2)
    tamper(f"UPDATE {TABLE} SET reason = 'x' WHERE id = %s", [entries[3].id])
    answer = verify_api(auditor)
    assert answer["ok"] is False and answer["broken_id"] == entries[3].id
    assert answer["problem"] == "its content does not match its hash"


@pytest.mark.postgres
def test_the_verify_api_reports_a_truncated_tail_from_the_newest_checkpoint(auditor, signing, tamper):
    entries = append(4)
    audit_checkpoint()
    tamper(f"DELETE FROM {TABLE} WHERE id > %s", [entries[1].id])
    answer = verify_api(auditor)
    assert answer["ok"] is False and answer["broken_id"] == entries[3].id
    assert "the tail was truncated" in answer["problem"]


def test_the_verify_api_does_not_walk_a_long_chain_in_the_request(
    auditor, settings, no_background_result, rq_queues, django_capture_on_commit_callbacks
):
    settings.P2P_AUDIT_SIGNING_KEY = ""
    settings.P2P_AUDIT_VERIFY_MAX_ENTRIES = 3
    append(5)
    with django_capture_on_commit_callbacks(execute=True):
        answer = verify_api(auditor)
    assert answer["scope"] == "last_background_run" and answer["queued"] is True
    assert answer["ok"] is None and answer["public_key"] is None
    assert rq_queues["default"].count == 1  # the whole chain is verified by a job instead


def test_the_verify_api_walks_a_short_chain_whole(auditor, settings):
    settings.P2P_AUDIT_SIGNING_KEY = ""
    entries = append(3)
    answer = verify_api(auditor)
    assert answer["scope"] == "whole_chain" and answer["ok"] is True
    assert answer["entries"] == 3 and answer["head"] == entries[-1].hash


def test_the_audit_page_shows_auditors_the_public_key(auditor, signing):
    _, public = signing
    client = Client()
    client.force_login(auditor)
    page = client.get("/audit/").content.decode()
    assert f'<code class="wrap" id="audit-public-key">{public}</code>' in page
    assert "verify_audit --checkpoints DIR --public-key KEY" in page


def test_the_audit_page_says_when_checkpoints_are_off(auditor, settings):
    settings.P2P_AUDIT_SIGNING_KEY = ""
    client = Client()
    client.force_login(auditor)
    assert "P2P_AUDIT_SIGNING_KEY is not set" in client.get("/audit/").content.decode()
