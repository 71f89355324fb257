"""The audit chain: append-only, hash-chained entries written in the caller's transaction.

hash = sha256(canonical bytes of the entry ‖ previous hash). The canonical bytes are our own JSON serialisation
(sorted keys, no spaces, microsecond UTC timestamps), never the database's JSON text, so a PostgreSQL JSONB
round trip cannot change a hash. Appends are serialised with an advisory transaction lock on PostgreSQL (SQLite
serialises writers itself), so concurrent writers never fork the chain.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from ci_integrations.models import AuditEntry
from ci_integrations.registry.errors import cut
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit_checkpoints import (
    OFF_REASON,
    Checkpoint,
    checkpoint_files,
    checkpoint_problem,
    checkpoint_publish,
    checkpoint_sign,
    verification_keys,
)
from ci_integrations.services.errors import ServiceError
from ci_integrations.services.rows import insert, table

GENESIS_HASH = "0" * 64
# The longest reason, and the longest string value in before/after, an entry stores.
MESSAGE_LIMIT = 2000
# Any constant works; it names the one lock every audit append takes.
AUDIT_ADVISORY_LOCK_ID = 0x50325041554449  # "P2PAUDI"
EXPORT_FIELDS = [
    "id",
    "timestamp",
    "actor",
    "action",
    "object_type",
    "object_id",
    "object_repr",
    "integration",
    "environment",
    "before",
    "after",
    "reason",
    "request_id",
    "prev_hash",
    "hash",
]


def _plain(value):
    """JSON-safe plain data (dates, decimals and UUIDs as strings), so what we hash is what we store.

    NUL characters become U+FFFD and lone surrogates "?": PostgreSQL refuses both, and an append must not fail.
    Every string value is capped (see `_capped`).
    """
    if value is None:
        return None
    return _capped(_storable(json.loads(json.dumps(value, cls=DjangoJSONEncoder))))


def _storable(value):
    """`value` with NUL characters and lone surrogates replaced, in every string, key and nested item."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    return value


def _capped(value):
    """`value` with every string in it cut to MESSAGE_LIMIT characters, ending " (cut)" where it was cut.

    Entries cannot be deleted, so a registry's 5 MB error page recorded in one would stay in the table for ever.
    Keys are cut too: labels and other metadata a caller sends can be keys.
    """
    if isinstance(value, str):
        return cut(value, MESSAGE_LIMIT)
    if isinstance(value, list):
        return [_capped(item) for item in value]
    if isinstance(value, dict):
        return {cut(key, MESSAGE_LIMIT): _capped(item) for key, item in value.items()}
    return value


def _text(value: str, limit: int | None = None) -> str:
    """`value` as storable text, cut to `limit` characters (columns) or, without one, capped like any message."""
    text = _storable(str(value))
    return text[:limit] if limit else cut(text, MESSAGE_LIMIT)


def _timestamp_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def entry_canonical_bytes(entry: AuditEntry) -> bytes:
    """The bytes an entry's hash covers: every recorded field except id and the hashes themselves."""
    body = {
        "timestamp": _timestamp_text(entry.timestamp),
        "actor": entry.actor,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "object_repr": entry.object_repr,
        "integration": entry.integration,
        "environment": entry.environment,
        "before": entry.before,
        "after": entry.after,
        "reason": entry.reason,
        "request_id": entry.request_id,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(entry: AuditEntry, prev_hash: str) -> str:
    return hashlib.sha256(entry_canonical_bytes(entry) + prev_hash.encode()).hexdigest()


def _describe(obj: Model | None) -> tuple[str, str, str, str, str]:
    """object_type, object_id, object_repr, integration and environment of the object acted on."""
    if obj is None:
        return "", "", "", "", ""
    object_type = obj._meta.model_name
    integration = environment = ""
    if object_type == "integration":
        integration = obj.name
    elif hasattr(obj, "integration_id") and obj.integration_id:
        integration = obj.integration.name
    elif hasattr(obj, "bucket_id"):
        integration = obj.bucket.integration.name
    elif hasattr(obj, "artifact_id"):
        integration = obj.artifact.integration.name
    if object_type == "bucket":
        environment = obj.env
    elif object_type == "promotion":
        environment = obj.to_bucket.env
    elif hasattr(obj, "bucket_id"):
        environment = obj.bucket.env
    return object_type, str(obj.pk or ""), str(obj)[:255], integration, environment


def audit_record(
    *,
    actor: Actor | str,
    action: str,
    obj: Model | None = None,
    before: dict | None = None,
    after: dict | None = None,
    reason: str = "",
    request_id: str = "",
    integration: str | None = None,
    environment: str | None = None,
) -> AuditEntry:
    """Append one entry to the chain inside the caller's transaction (opening one if there is none)."""
    return audit_records(
        {
            "actor": actor,
            "action": action,
            "obj": obj,
            "before": before,
            "after": after,
            "reason": reason,
            "request_id": request_id,
            "integration": integration,
            "environment": environment,
        }
    )[0]


def audit_records(*records: dict) -> list[AuditEntry]:
    """Append several entries, in order, taking the append lock once; each record holds audit_record's arguments.

    The lock is held until the caller's transaction ends, so services write their audit entries as the last
    statements of the transaction (still inside it) to keep that time short.
    """
    drafts = [_draft(**record) for record in records]
    # No savepoint of our own: a failed append fails the caller's transaction, which is what it must do anyway.
    with transaction.atomic(savepoint=False):
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                # Takes the lock, then reads the head in a new snapshot: one round trip (migration 0007).
                cursor.execute("SELECT p2p_audit_append_lock(%s)", [AUDIT_ADVISORY_LOCK_ID])
            else:
                cursor.execute(f"SELECT hash FROM {table(AuditEntry)} ORDER BY id DESC LIMIT 1")
            head = cursor.fetchone()
        previous = head[0] if head and head[0] else GENESIS_HASH
        for entry in drafts:
            entry.timestamp = timezone.now()
            entry.prev_hash = previous
            entry.hash = previous = entry_hash(entry, entry.prev_hash)
        insert(drafts)
    return drafts


def _draft(
    *,
    actor: Actor | str,
    action: str,
    obj: Model | None = None,
    before: dict | None = None,
    after: dict | None = None,
    reason: str = "",
    request_id: str = "",
    integration: str | None = None,
    environment: str | None = None,
) -> AuditEntry:
    """An entry with everything but its timestamp and hashes, which are set under the append lock."""
    if isinstance(actor, Actor):
        request_id = request_id or actor.request_id
        actor = actor.label
    object_type, object_id, object_repr, obj_integration, obj_environment = _describe(obj)
    return AuditEntry(
        actor=_text(actor, 150),
        action=_text(action, 64),
        object_type=object_type,
        object_id=object_id,
        object_repr=_text(object_repr, 255),
        integration=_text(integration if integration is not None else obj_integration, 63),
        environment=_text(environment if environment is not None else obj_environment, 63),
        before=_plain(before),
        after=_plain(after),
        reason=_text(reason),
        request_id=_text(request_id, 64),
    )


class _Refused(Exception):
    def __init__(self, error: ServiceError):
        self.error = error


def audit_refusal(error: ServiceError, **entry) -> None:
    """Audit why something was refused, then refuse with `error`.

    Call it inside `atomic_keeping_refusals()`: the entry (audit_record's arguments) is committed, and `error` is
    raised once the transaction has committed. Raising inside an ordinary transaction would roll the entry back.
    """
    audit_record(**entry)
    raise _Refused(error)


@contextlib.contextmanager
def atomic_keeping_refusals():
    """A transaction in which audit_refusal records a refusal that outlives it, then raises the refusal's error."""
    refused: ServiceError | None = None
    with transaction.atomic():
        try:
            yield
        except _Refused as refusal:
            refused = refusal.error
    if refused is not None:
        raise refused


@dataclass(frozen=True)
class ChainReport:
    """The outcome of verifying the chain: ok, how many entries, the head hash, and the first broken entry.

    `checkpoints` counts the signed checkpoints the chain was found to match; `verified_from` is the entry after
    which the walk started (0: the whole chain).
    """

    ok: bool
    entries: int
    head: str
    broken_id: int | None = None
    problem: str = ""
    checkpoints: int = 0
    verified_from: int = 0


def audit_verify(
    *, batch_size: int = 5000, checkpoints: Iterable[Checkpoint] = (), start: Checkpoint | None = None
) -> ChainReport:
    """Walk the chain in id order and name the first entry whose link or hash does not hold.

    Each of `checkpoints` (signatures already checked) must name an entry that is still there, with the hash and the
    number of entries up to it that were signed; one beyond the end of the chain shows a truncated tail. With `start`
    the walk begins after that checkpoint's entry instead of at the genesis, trusting the checkpoint for what precedes.
    """
    checkpoints = list(checkpoints)
    previous, count, last_id = (start.head, start.entries, start.entry_id) if start else (GENESIS_HASH, 0, 0)
    pending = deque(sorted((c for c in checkpoints if c.entry_id > last_id), key=lambda c: c.entry_id))
    matched = 0

    def broken(entry_id: int, problem: str) -> ChainReport:
        return ChainReport(False, count, previous, entry_id, problem, matched, start.entry_id if start else 0)

    while True:
        batch = list(AuditEntry.objects.filter(id__gt=last_id).order_by("id")[:batch_size])
        if not batch:
            break
        for entry in batch:
            if pending and pending[0].entry_id < entry.id:
                checkpoint = pending[0]
                return broken(checkpoint.entry_id, f"it is missing, yet checkpoint {checkpoint.label} names it")
            if entry.prev_hash != previous:
                return broken(entry.id, "its previous-hash link does not match the entry before it")
            if entry_hash(entry, previous) != entry.hash:
                return broken(entry.id, "its content does not match its hash")
            previous = entry.hash
            count += 1
            last_id = entry.id
            while pending and pending[0].entry_id == entry.id:
                checkpoint = pending.popleft()
                if checkpoint.head != entry.hash:
                    return broken(
                        entry.id,
                        f"its hash differs from the one checkpoint {checkpoint.label} holds: it, or an entry "
                        f"after entry {_last_matched(checkpoints, entry.id, start)}, was rewritten",
                    )
                if checkpoint.entries != count:
                    return broken(
                        entry.id,
                        f"checkpoint {checkpoint.label} counted {checkpoint.entries} entries up to it, the chain has "
                        f"{count}: entries before it were removed or added",
                    )
                matched += 1
    if pending:
        checkpoint = pending[0]
        return broken(
            checkpoint.entry_id,
            f"the chain ends at entry {last_id} ({count} entries), but checkpoint {checkpoint.label} names entry "
            f"{checkpoint.entry_id} with {checkpoint.entries} entries: the tail was truncated",
        )
    return ChainReport(True, count, previous, None, "", matched, start.entry_id if start else 0)


def _last_matched(checkpoints: Iterable[Checkpoint], before_id: int, start: Checkpoint | None) -> int:
    """The newest checkpointed entry before `before_id` (or the start, or 0): the rewrite lies after it."""
    earlier = [c.entry_id for c in checkpoints if c.entry_id < before_id]
    return max(earlier + ([start.entry_id] if start else []), default=0)


def audit_verify_checkpoints(*, directory: Path, public_keys: list[str] | None = None) -> ChainReport:
    """Check every checkpoint file in `directory` against the public keys, then walk the chain against them all.

    A file that cannot be read, or whose signature does not verify, fails the verification before any walk: a
    checkpoint directory is append-only, so anything in it that is not a good checkpoint is itself a sign of tampering.
    """
    files = checkpoint_files(directory)
    keys = verification_keys(public_keys)
    if files and not keys:
        return ChainReport(False, 0, GENESIS_HASH, None, f"no public key to check the checkpoints with ({OFF_REASON})")
    checkpoints = []
    for read in files:
        problem = read.problem or checkpoint_problem(read.checkpoint, keys)
        if problem:
            return ChainReport(False, 0, GENESIS_HASH, None, problem)
        checkpoints.append(read.checkpoint)
    return audit_verify(checkpoints=checkpoints)


def _chain_head() -> tuple[int, int, str]:
    """The newest entry's id, the number of entries up to it and its hash, as one consistent prefix of the chain.

    Ids are taken under the append lock, so no entry with a smaller id can commit after the head is read.
    """
    head = AuditEntry.objects.order_by("-id").values_list("id", "hash").first()
    if head is None:
        return 0, 0, GENESIS_HASH
    return head[0], AuditEntry.objects.filter(id__lte=head[0]).count(), head[1]


def audit_checkpoint(*, unless_head: int | None = None) -> Checkpoint | None:
    """Sign the chain's head and publish it outside the database; None when signing is off or the head is
    `unless_head` (the worker skips a head it already published: an older checkpoint already covers it)."""
    return _signed_head(unless_head=unless_head)[3]


def _signed_head(*, unless_head: int | None = None) -> tuple[int, int, str, Checkpoint | None]:
    """The head (id, count, hash) and, when signing is on, its checkpoint, published like every other."""
    entry_id, entries, head = _chain_head()
    checkpoint = None if entry_id == unless_head else checkpoint_sign(entry_id=entry_id, entries=entries, head=head)
    if checkpoint:
        checkpoint_publish(checkpoint)
    return entry_id, entries, head, checkpoint


def _export_row(entry: AuditEntry) -> dict:
    row = {field: getattr(entry, field) for field in EXPORT_FIELDS}
    row["timestamp"] = _timestamp_text(entry.timestamp)
    return row


def audit_export_jsonl(entries: Iterable[AuditEntry]) -> Iterator[str]:
    """JSON Lines, one entry a line, ending with a line that carries the chain's head hash (and, when signing is
    on, its signed `checkpoint`).

    Entries appended after the export started are left out, so the head line always describes what precedes it.
    """
    head_id, count, head, checkpoint = _signed_head()
    for entry in entries:
        if entry.id > head_id:
            continue
        yield json.dumps(_export_row(entry), ensure_ascii=False, sort_keys=True) + "\n"
    trailer = {"chain_head": head, "chain_entries": count}
    if checkpoint:
        trailer["checkpoint"] = checkpoint.as_dict()
    yield json.dumps(trailer) + "\n"


def _csv_safe(value) -> str:
    """Text for a CSV cell; a leading =, +, - or @ is neutralised so spreadsheets do not run it as a formula."""
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def audit_export_csv(entries: Iterable[AuditEntry]) -> Iterator[str]:
    """CSV with a header row, ending with a `# chain_head` row carrying the chain's head hash (see the JSONL export)
    and, when signing is on, a `# checkpoint` row with the signed checkpoint as JSON."""
    head_id, count, head, checkpoint = _signed_head()
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(EXPORT_FIELDS)
    yield flush()
    for entry in entries:
        if entry.id > head_id:
            continue
        row = _export_row(entry)
        writer.writerow([_csv_safe(row[field]) for field in EXPORT_FIELDS])
        yield flush()
    writer.writerow(["# chain_head", head, "chain_entries", count])
    if checkpoint:
        writer.writerow(["# checkpoint", json.dumps(checkpoint.as_dict(), sort_keys=True)])
    yield flush()
