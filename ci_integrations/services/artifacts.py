"""Artifacts: registering images that CI pushed into a bucket, and the check results reported on them.

May import: models, registry, promotions (auto-promotion after an arrival or a passing check), arrivals, locks,
audit, rows.
"""

from __future__ import annotations

import logging
from datetime import UTC

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from ci_integrations.input_rules import DIGEST, TAG, control_character, is_http_url, parse_rfc3339
from ci_integrations.models import (
    Arrival,
    Artifact,
    Bucket,
    CheckResult,
    Integration,
    Registry,
    WorkflowStep,
    validate_check_name,
)
from ci_integrations.registry import errors as registry_errors
from ci_integrations.registry import resolve_manifest
from ci_integrations.registry.client import MAX_MANIFEST_BYTES
from ci_integrations.services.actors import Actor
from ci_integrations.services.arrivals import arrival_audit, arrival_insert, immutable_tag_conflict
from ci_integrations.services.audit import audit_record, audit_records
from ci_integrations.services.errors import (
    InvalidInput,
    NotAllowed,
    NotFound,
    RegistryUnavailable,
    ServiceError,
    StateConflict,
)
from ci_integrations.services.locks import artifact_locked, bucket_locked
from ci_integrations.services.promotions import promotions_auto_request
from ci_integrations.services.registry_budget import registry_timeout, web_budget
from ci_integrations.services.rows import columns, fetch_one, insert_unless_exists, table

logger = logging.getLogger(__name__)

METADATA_KEYS = {"git_sha", "branch", "build_url", "labels", "commit_time", "repo_url", "changelog"}
MAX_CHANGELOG = 500  # commits listed for one build; a longer list is refused rather than cut silently
CHANGELOG_LIMITS = {"sha": 64, "title": 500, "author": 255}
COMMIT_TIME_LABEL = "commit_time"  # where the commit time is kept, normalised to UTC (insights reads it)


def registry_error_to_service(exc: registry_errors.RegistryError, *, what: str) -> ServiceError:
    """A registry package error as the service error the API and UI understand, saying what we were doing."""
    if isinstance(exc, registry_errors.NotFound):
        return NotFound(f"{what}: not found in the registry ({exc.message})")
    if isinstance(exc, registry_errors.InvalidReference):
        return InvalidInput(f"{what}: {exc.message}")
    return RegistryUnavailable(f"{what}: {exc.message}")


def clean_metadata(metadata: dict | None) -> dict:
    metadata = dict(metadata or {})
    unknown = set(metadata) - METADATA_KEYS
    if unknown:
        raise InvalidInput(
            f"unknown metadata keys {sorted(unknown)}: use {sorted(METADATA_KEYS)}",
            details={"metadata": sorted(unknown)},
        )
    cleaned = {}
    for key in ("git_sha", "branch"):
        value = metadata.get(key) or ""
        limit = 64 if key == "git_sha" else 255
        if not isinstance(value, str) or len(value) > limit or control_character(value) is not None:
            raise InvalidInput(f"metadata {key} must be text of at most {limit} characters", details={key: "invalid"})
        cleaned[key] = value
    build_url = metadata.get("build_url") or ""
    if build_url and not is_http_url(build_url):
        raise InvalidInput("metadata build_url must be an http(s) URL", details={"build_url": "invalid"})
    cleaned["build_url"] = build_url
    repo_url = metadata.get("repo_url") or ""
    if repo_url and not is_http_url(repo_url):
        raise InvalidInput("metadata repo_url must be an http(s) URL", details={"repo_url": "invalid"})
    cleaned["repo_url"] = repo_url
    cleaned["changelog"] = _changelog(metadata.get("changelog"))
    labels = metadata.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidInput("metadata labels must map text to text", details={"labels": "invalid"})
    commit_time = metadata.get("commit_time") or labels.get(COMMIT_TIME_LABEL)
    if commit_time:
        labels = {**labels, COMMIT_TIME_LABEL: _commit_time_text(commit_time)}
    cleaned["labels"] = labels
    return cleaned


def _changelog(value) -> list[dict]:
    """The commits CI lists for a build: at most MAX_CHANGELOG of {sha, title, author}, each a short text."""
    if value in (None, ""):
        return []
    if not isinstance(value, list) or len(value) > MAX_CHANGELOG:
        raise InvalidInput(
            f"metadata changelog must be a list of at most {MAX_CHANGELOG} commits {{sha, title, author}}",
            details={"changelog": "invalid"},
        )
    commits = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict) or set(entry) - set(CHANGELOG_LIMITS) or not entry.get("sha"):
            raise InvalidInput(
                f"metadata changelog[{index}] must be {{sha, title?, author?}}", details={"changelog": index}
            )
        commit = {}
        for key, limit in CHANGELOG_LIMITS.items():
            text = entry.get(key) or ""
            if not isinstance(text, str) or len(text) > limit or control_character(text) is not None:
                raise InvalidInput(
                    f"metadata changelog[{index}].{key} must be text of at most {limit} characters",
                    details={"changelog": index},
                )
            commit[key] = text
        commits.append(commit)
    return commits


def _commit_time_text(value) -> str:
    """The commit time CI gave (an RFC 3339 date-time) as `YYYY-MM-DDTHH:MM:SSZ` in UTC, the one form insights
    reads."""
    moment = parse_rfc3339(value)
    if moment is None:
        raise InvalidInput(
            "metadata commit_time must be an RFC 3339 time with its zone, e.g. 2026-11-30T09:12:00Z",
            details={"commit_time": "invalid"},
        )
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def no_bucket(integration: Integration, env: str) -> NotFound:
    return NotFound(f"integration {integration.name!r} has no bucket {env!r}")


def _resolve(bucket: Bucket, reference: str):
    try:
        with web_budget("registration"):
            return resolve_manifest(bucket.location(reference))
    except registry_errors.DeadlineExceeded as exc:
        raise registry_timeout(exc, registry_name=bucket.registry.name) from None
    except registry_errors.RegistryError as exc:
        raise registry_error_to_service(exc, what=f"image {bucket.image_name}:{reference}") from None


def artifact_register(
    *,
    integration: Integration,
    env: str,
    tag: str,
    digest: str | None = None,
    metadata: dict | None = None,
    actor: Actor,
    how: str = Arrival.How.PUSH,
) -> tuple[Artifact, Arrival, bool]:
    """Register an image already pushed to a bucket's repository (HEAD on the manifest resolves the digest).

    Idempotent for the same tag and digest: returns created=False and writes nothing. In an immutable_tags bucket the
    same tag with another digest is refused.
    """
    if not TAG.is_valid(tag):
        raise InvalidInput(TAG.problem(tag), details={"tag": "invalid"})
    if digest is not None and not DIGEST.is_valid(digest):
        raise InvalidInput(DIGEST.problem(digest), details={"digest": "invalid"})
    cleaned = clean_metadata(metadata)
    bucket, latest = _bucket_with_latest_arrival(integration, env, tag)
    # Callers from outside (CI and personal tokens, people) enter the workflow at its start; a later bucket is
    # reached by promotion. The portal's own jobs and commands (imports, demo seeding) are trusted code.
    if actor.token is not None or actor.user is not None:
        refusal = bucket.direct_arrival_refusal()
        if refusal is not None:
            raise NotAllowed(refusal[0], code="not_entry_environment", details={"env": env, "entry": refusal[1]})
    info = _resolve(bucket, tag)
    if info.size is not None and info.size > MAX_MANIFEST_BYTES:
        # Refused now rather than when a promotion tries to copy it: no client reads a manifest that large.
        raise InvalidInput(
            f"image {bucket.image_name}:{tag} has a manifest of {info.size} bytes, over the limit of "
            f"{MAX_MANIFEST_BYTES} bytes (4 MiB) that registries and the copy engine accept",
            details={"tag": "manifest too large", "manifest_size": info.size},
        )
    if digest and info.digest != digest:
        raise StateConflict(
            f"tag {tag!r} in {bucket.image_name} points at {info.digest}, not at the digest given ({digest})",
            details={"registry_digest": info.digest},
        )
    # The idempotent path (CI retries) reads without locking: a tag that already holds this digest stays that way
    # until a later arrival, and seeing that arrival a moment late is the same as the retry arriving a moment early.
    if latest and latest.artifact.digest == info.digest:
        return latest.artifact, latest, False
    auto_promote = _auto_promote_steps_exist(integration, bucket)
    with transaction.atomic():
        # The artifact row first: it needs no lock, and everything after the bucket lock waits on the others.
        artifact, created = _artifact_get_or_create(integration, info, cleaned, actor)
        # It will write: lock the bucket (orders arrivals into it). Every arrival moves the bucket's current_arrival
        # under this lock, so if that has not moved since the read above, no arrival came in between and what was
        # read still holds; otherwise look again.
        locked = bucket_locked(bucket.pk)
        if locked.current_arrival_id != bucket.current_arrival_id:
            latest = _latest_arrival(bucket, tag)
        if latest and latest.artifact.digest == info.digest:
            transaction.set_rollback(True)  # nothing of this request's is kept, not even a new artifact row
            return latest.artifact, latest, False
        if immutable_tag_conflict(bucket, latest, info.digest):
            raise StateConflict(
                f"tag {tag!r} in bucket {bucket} is immutable and already holds {latest.artifact.digest}; "
                f"it cannot be registered again with {info.digest}",
                details={"existing_digest": latest.artifact.digest},
            )
        arrival, previous = arrival_insert(
            locked=locked, bucket=bucket, artifact=artifact, tag=tag, how=how, actor=actor
        )
        # The audit entries come last: the append lock they take is held until COMMIT and serialises every
        # audited change, so nothing else should run while it is held. Same transaction, same order as ever.
        audit_records(
            {
                "actor": actor,
                "action": "artifact.registered",
                "obj": artifact,
                "after": {
                    "digest": artifact.digest,
                    "tag": tag,
                    "bucket": bucket.env,
                    "how": how,
                    "new_artifact": created,
                    **{k: v for k, v in cleaned.items() if v},
                },
                "environment": bucket.env,
            },
            arrival_audit(arrival=arrival, previous=previous, actor=actor),
        )
        if auto_promote:  # rare; it audits its own requests, which belong after this registration's entries
            promotions_auto_request(artifact=artifact, from_bucket=bucket, cause=actor.requesting_person)
    return artifact, arrival, True


def _bucket_with_latest_arrival(integration: Integration, env: str, tag: str) -> tuple[Bucket, Arrival | None]:
    """The bucket of `env` (with its registry) and the newest arrival of `tag` in it (with its artifact).

    One plain SQL query, since every CI registration runs it (see services/rows.py); same result as
    `Bucket.objects.select_related("registry")` followed by `_latest_arrival`.
    """
    found = fetch_one(
        f"SELECT {columns(Bucket, 'b')}, {columns(Registry, 'r')}, {columns(Arrival, 'a')}, {columns(Artifact, 'x')} "
        f"FROM {table(Bucket)} b JOIN {table(Registry)} r ON r.id = b.registry_id "
        f"LEFT JOIN {table(Arrival)} a ON a.id = ({_latest_arrival_id_sql('b.id')}) "
        f"LEFT JOIN {table(Artifact)} x ON x.id = a.artifact_id "
        "WHERE b.integration_id = %s AND b.env = %s",
        [tag, integration.pk, env],
        [(Bucket, "b"), (Registry, "r"), (Arrival, "a"), (Artifact, "x")],
    )
    if found is None:
        raise no_bucket(integration, env)
    bucket, registry, arrival, artifact = found
    bucket.registry, bucket.integration = registry, integration
    if arrival is not None:
        arrival.artifact, arrival.bucket = artifact, bucket
    return bucket, arrival


def _latest_arrival_id_sql(bucket: str) -> str:
    """SQL for the id of the newest arrival of a tag (the %s) in the bucket `bucket` (index arrival_bucket_tag_idx)."""
    return (
        f"SELECT l.id FROM {table(Arrival)} l WHERE l.bucket_id = {bucket} AND l.tag = %s "
        "ORDER BY l.arrived_at DESC, l.id DESC LIMIT 1"
    )


def _latest_arrival(bucket: Bucket, tag: str) -> Arrival | None:
    """The newest arrival of `tag` in `bucket`, with its artifact."""
    found = fetch_one(
        f"SELECT {columns(Arrival, 'a')}, {columns(Artifact, 'x')} FROM {table(Arrival)} a "
        f"JOIN {table(Artifact)} x ON x.id = a.artifact_id WHERE a.id = ({_latest_arrival_id_sql('%s')})",
        [bucket.pk, tag],
        [(Arrival, "a"), (Artifact, "x")],
    )
    if found is None:
        return None
    arrival, artifact = found
    arrival.artifact, arrival.bucket = artifact, bucket
    return arrival


def _artifact_get_or_create(integration, info, cleaned: dict, actor: Actor) -> tuple[Artifact, bool]:
    artifact = Artifact(
        integration=integration,
        digest=info.digest,
        media_type=info.media_type or "",
        size=info.size,
        created_by=actor.label,
        **cleaned,
    )
    if insert_unless_exists(artifact, ["integration_id", "digest"]):
        return artifact, True
    artifact = Artifact.objects.select_for_update().get(integration=integration, digest=info.digest)
    # Metadata fills what an earlier registration left empty; it never overwrites.
    changed = [k for k, v in cleaned.items() if v and not getattr(artifact, k)]
    for key in changed:
        setattr(artifact, key, cleaned[key])
    if changed:
        artifact.save(update_fields=changed)
    return artifact, False


def _auto_promote_steps_exist(integration: Integration, bucket: Bucket) -> bool:
    """Whether any workflow step out of this bucket promotes by itself (checked before the audit lock is taken)."""
    if not integration.workflow_id:
        return False
    return WorkflowStep.objects.filter(
        workflow_id=integration.workflow_id, from_env=bucket.env, auto_promote=True
    ).exists()


def check_report(*, artifact: Artifact, name: str, status: str, url: str = "", actor: Actor) -> CheckResult:
    """Record a named check (functional, nft, …) as passed or failed; the latest report wins. Audited.

    A passing report may let an auto-promoting step request itself.
    """
    try:
        validate_check_name(name)
    except ValidationError as exc:
        raise InvalidInput(exc.messages[0], details={"name": "invalid"}) from None
    if status not in CheckResult.Status.values:
        raise InvalidInput(
            f"check status must be one of {CheckResult.Status.values}, not {status!r}", details={"status": "invalid"}
        )
    if url and not is_http_url(url):
        raise InvalidInput("check url must be an http(s) URL", details={"url": "invalid"})
    with transaction.atomic():
        if status == CheckResult.Status.PASSED:
            # An auto-promotion may follow, and it locks the artifact; take that lock now, before the audit lock, in
            # the order a promotion request takes them, or the two deadlock.
            artifact_locked(artifact.pk)
        previous = CheckResult.objects.select_for_update().filter(artifact=artifact, name=name).first()
        before = {"status": previous.status, "url": previous.url} if previous else None
        result, _ = CheckResult.objects.update_or_create(
            artifact=artifact,
            name=name,
            defaults={"status": status, "url": url or "", "reported_at": timezone.now(), "reported_by": actor.label},
        )
        audit_record(
            actor=actor,
            action="check.reported",
            obj=result,
            before=before,
            after={"name": name, "status": status, "url": url or "", "digest": artifact.digest},
        )
        if status == CheckResult.Status.PASSED:
            for bucket_id in set(Arrival.objects.filter(artifact=artifact).values_list("bucket_id", flat=True)):
                promotions_auto_request(
                    artifact=artifact, from_bucket=Bucket.objects.get(pk=bucket_id), cause=actor.requesting_person
                )
    return result
