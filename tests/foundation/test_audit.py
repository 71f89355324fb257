"""The audit chain: verification, tamper detection, the append-only trigger, concurrency and exports."""

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from ci_integrations.models import AuditEntry
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import (
    GENESIS_HASH,
    MESSAGE_LIMIT,
    audit_export_csv,
    audit_export_jsonl,
    audit_record,
    audit_verify,
)
from tests.foundation.conftest import child_database_url

ROOT = Path(__file__).resolve().parents[2]


def append(count: int, **fields) -> list[AuditEntry]:
    return [
        audit_record(actor=Actor.system("tester"), action="test.append", after={"index": index}, **fields)
        for index in range(count)
    ]


def verify() -> tuple[str, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("verify_audit", stdout=out)
    except CommandError as error:
        return out.getvalue(), error
    return out.getvalue(), None


def test_verify_passes_and_prints_count_and_head(db):
    entries = append(5)
    assert [e.prev_hash for e in entries] == [GENESIS_HASH] + [e.hash for e in entries[:-1]]
    out, error = verify()
    assert error is None
    assert out.strip() == f"OK 5 entries, head {entries[-1].hash}"


def test_verify_on_an_empty_log(db):
    assert verify()[0].strip() == f"OK 0 entries, head {GENESIS_HASH}"


def test_entries_survive_a_database_round_trip_unchanged(db):
    # JSONB reorders keys and PostgreSQL keeps microseconds: the hash must not depend on either.
    audit_record(
        actor=Actor.system("tester"),
        action="test.shapes",
        before={"z": 1, "a": [1.5, None, True], "ünï": "cödé"},
        after={"nested": {"b": 2, "a": 1}, "when": "2026-01-01T00:00:00.000001Z"},
        reason='quote " and newline \n',
    )
    assert audit_verify().ok


@pytest.mark.postgres
def test_an_edited_entry_is_named_by_verify_audit(db, tamper):
    entries = append(5)
    tamper(f"UPDATE {AuditEntry._meta.db_table} SET reason = 'nothing to see' WHERE id = %s", [entries[2].id])
    _, error = verify()
    assert error is not None and error.returncode == 1
    assert f"BROKEN at entry {entries[2].id}: its content does not match its hash" in str(error)


@pytest.mark.postgres
def test_an_edit_that_also_recomputes_the_hash_breaks_the_next_link(db, tamper):
    entries = append(4)
    tamper(
        f"UPDATE {AuditEntry._meta.db_table} SET actor = 'someone-else', hash = %s WHERE id = %s",
        ["f" * 64, entries[1].id],
    )
    report = audit_verify()
    assert not report.ok and report.broken_id in (entries[1].id, entries[2].id)


@pytest.mark.postgres
def test_a_deleted_entry_in_the_middle_is_detected(db, tamper):
    entries = append(5)
    tamper(f"DELETE FROM {AuditEntry._meta.db_table} WHERE id = %s", [entries[2].id])
    _, error = verify()
    assert f"BROKEN at entry {entries[3].id}: its previous-hash link does not match" in str(error)


@pytest.mark.postgres
def test_a_reordering_is_detected(db, tamper):
    entries = append(5)
    a, b = entries[1].id, entries[2].id
    table = AuditEntry._meta.db_table
    tamper(f"UPDATE {table} SET id = -1 WHERE id = %s", [a])
    tamper(f"UPDATE {table} SET id = %s WHERE id = %s", [a, b])
    tamper(f"UPDATE {table} SET id = %s WHERE id = -1", [b])
    report = audit_verify()
    assert not report.ok and report.broken_id == a
    assert report.entries == 1 and report.head == entries[0].hash


@pytest.mark.postgres
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ci_integrations_auditentry SET reason = 'x'",
        "DELETE FROM ci_integrations_auditentry",
        "TRUNCATE ci_integrations_auditentry",
        "TRUNCATE ci_integrations_auditentry CASCADE",
    ],
)
def test_the_database_refuses_to_change_or_remove_entries(db, statement):
    append(2)
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    assert AuditEntry.objects.count() == 2 and audit_verify().ok


@pytest.mark.postgres
def test_the_orm_cannot_delete_entries_either(db):
    (entry,) = append(1)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        entry.delete()


@pytest.mark.postgres
def test_concurrent_appends_from_eight_processes_form_one_chain(transactional_db, tmp_path):
    processes, per_process = 8, 50
    env = {
        **os.environ,
        "DATABASE_URL": child_database_url(),
        "DJANGO_SETTINGS_MODULE": "p2p_portal.settings",
        "LOG_LEVEL": "WARNING",
        "DATABASE_CONN_MAX_AGE": "0",
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.foundation.append_audit_entries", str(n), str(per_process), str(tmp_path)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
        )
        for n in range(processes)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < processes and time.monotonic() < deadline:
        assert all(child.poll() is None for child in children), "a writer died before starting"
        time.sleep(0.02)
    (tmp_path / "go").touch()
    for child in children:
        _, stderr = child.communicate(timeout=60)
        assert child.returncode == 0, stderr.decode()[-2000:]

    report = audit_verify()
    assert report.ok, report
    assert report.entries == processes * per_process == AuditEntry.objects.count()
    hashes = list(AuditEntry.objects.order_by("id").values_list("prev_hash", "hash"))
    assert len({prev for prev, _ in hashes}) == len(hashes)  # no two entries share a parent: no fork
    # The writers really interleaved, or this test would prove nothing about serialisation.
    actors = list(AuditEntry.objects.order_by("id").values_list("actor", flat=True))
    switches = sum(1 for first, second in zip(actors, actors[1:], strict=False) if first != second)
    assert switches > processes


def test_jsonl_export_ends_with_the_head_hash(db):
    entries = append(3)
    lines = list(audit_export_jsonl(AuditEntry.objects.order_by("id")))
    rows = [json.loads(line) for line in lines]
    assert [row["hash"] for row in rows[:-1]] == [e.hash for e in entries]
    assert rows[-1] == {"chain_head": entries[-1].hash, "chain_entries": 3}


def test_csv_export_ends_with_the_head_hash_and_escapes_formulas(db):
    audit_record(
        actor=Actor.system('=HYPERLINK("http://evil")'), action="test.formula", reason="+1+1", after={"tag": "<script>"}
    )
    audit_record(actor=Actor.system("@SUM(A1)"), action="test.formula", reason="-2")
    out = io.StringIO()
    call_command("export_audit", "--format", "csv", stdout=out)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    header, first, second, last = rows[0], rows[1], rows[2], rows[-1]
    assert header[:4] == ["id", "timestamp", "actor", "action"]
    assert first[header.index("actor")] == '\'=HYPERLINK("http://evil")'
    assert first[header.index("reason")] == "'+1+1"
    assert second[header.index("actor")] == "'@SUM(A1)" and second[header.index("reason")] == "'-2"
    head = AuditEntry.objects.order_by("-id").first().hash
    assert last == ["# chain_head", head, "chain_entries", "2"]
    assert not any(cell[:1] in "=+-@" for row in rows[1:-1] for cell in row if cell)


def test_export_audit_writes_a_file(db, tmp_path):
    entries = append(2)
    target = tmp_path / "audit.jsonl"
    call_command("export_audit", "--format", "jsonl", "-o", str(target), stderr=io.StringIO())
    lines = target.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["chain_head"] == entries[-1].hash


def test_export_helpers_accept_any_selection(db):
    entries = append(3)
    chunks = "".join(audit_export_csv(AuditEntry.objects.filter(id=entries[0].id)))
    assert entries[0].hash in chunks and entries[1].hash not in chunks.split("# chain_head")[0]
    assert entries[2].hash in chunks.split("# chain_head")[1]


def test_control_characters_and_broken_unicode_cannot_break_an_append(db):
    entry = audit_record(
        actor=Actor.system("evil\x00actor"),
        action="test.unicode",
        reason="nul \x00 and lone surrogate \ud800",
        after={"tag\x00": ["a\x00b", "\udfff"], "ok": "ünïcødé ✓"},
    )
    stored = AuditEntry.objects.get(pk=entry.pk)
    assert "\x00" not in stored.actor + stored.reason and stored.after["ok"] == "ünïcødé ✓"
    assert stored.after == {"tag\ufffd": ["a\ufffdb", "?"], "ok": "ünïcødé ✓"}
    assert audit_verify().ok


def test_entries_appended_during_an_export_are_left_out_so_the_head_line_holds(db):
    entries = append(2)

    def read_in_chunks():  # like QuerySet.iterator(): later chunks are read later, and see newer rows
        yield from AuditEntry.objects.filter(id=entries[0].id)
        yield from AuditEntry.objects.filter(id__gt=entries[0].id).order_by("id")

    lines = audit_export_jsonl(read_in_chunks())
    first = next(lines)  # the export has started and read the head
    late = append(1)[0]
    rest = list(lines)
    exported = [json.loads(line) for line in [first, *rest]]
    assert [row.get("id") for row in exported[:-1]] == [e.id for e in entries]
    assert late.id not in [row.get("id") for row in exported]
    assert exported[-1] == {"chain_head": entries[-1].hash, "chain_entries": 2}


def test_a_five_megabyte_error_recorded_twice_is_stored_cut_to_the_message_limit(db):
    huge = "registry said: " + "x" * (5 * 1024 * 1024)
    for _ in range(2):
        audit_record(
            actor=Actor.system("tester"),
            action="test.huge",
            reason=huge,
            before={"error": huge},
            after={"errors": [huge, {"detail": huge}], huge: 1, "ok": "short"},
        )
    stored_entries = list(AuditEntry.objects.filter(action="test.huge"))
    assert len(stored_entries) == 2
    for stored in stored_entries:
        assert len(stored.reason) == MESSAGE_LIMIT and stored.reason.endswith(" (cut)")
        assert stored.reason.startswith("registry said: xxx")
        assert stored.before == {"error": stored.reason}
        assert stored.after["errors"] == [stored.reason, {"detail": stored.reason}]
        assert stored.after[stored.reason] == 1 and stored.after["ok"] == "short"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT MAX(LENGTH(reason) + LENGTH(CAST(before AS text)) + LENGTH(CAST(after AS text))) "
            "FROM ci_integrations_auditentry"
        )
        (longest,) = cursor.fetchone()
    assert longest < 6 * MESSAGE_LIMIT + 200  # reason, before's one value, after's three values and their keys
    assert audit_verify().ok
