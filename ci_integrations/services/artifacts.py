"""Artifacts: registering images pushed by CI, importing them from build registries, check results, arrivals."""

from __future__ import annotations

import logging
import traceback
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from ci_integrations.models import (
    Arrival,
    Artifact,
    Bucket,
    CheckResult,
    Integration,
    Job,
    Registry,
    WorkflowStep,
    validate_check_name,
)
from ci_integrations.registry import errors as registry_errors
from ci_integrations.registry.client import MAX_MANIFEST_BYTES
from ci_integrations.registry.refs import is_valid_digest, is_valid_tag
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record, audit_records
from ci_integrations.services.enqueue import DEFAULT_QUEUE, enqueue_on_commit, new_job_id
from ci_integrations.services.errors import InvalidInput, NotFound, RegistryUnavailable, ServiceError, StateConflict
from ci_integrations.services.rows import columns, fetch_one, for_update, insert, insert_unless_exists, table
from ci_integrations.services.secrets import decrypt_json, encrypt_json

logger = logging.getLogger(__name__)

METADATA_KEYS = {"git_sha", "branch", "build_url", "labels"}


def registry_error_to_service(exc: registry_errors.RegistryError, *, what: str) -> ServiceError:
    """A registry package error as the service error the API and UI understand, saying what we were doing."""
    if isinstance(exc, registry_errors.NotFound):
        return NotFound(f"{what}: not found in the registry ({exc.message})")
    if isinstance(exc, registry_errors.InvalidReference):
        return InvalidInput(f"{what}: {exc.message}")
    return RegistryUnavailable(f"{what}: {exc.message}")


def _clean_metadata(metadata: dict | None) -> dict:
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
        if not isinstance(value, str) or len(value) > limit or any(ord(c) < 32 for c in value):
            raise InvalidInput(f"metadata {key} must be text of at most {limit} characters", details={key: "invalid"})
        cleaned[key] = value
    build_url = metadata.get("build_url") or ""
    if build_url and (
        not isinstance(build_url, str)
        or urlsplit(build_url).scheme not in ("http", "https")
        or not urlsplit(build_url).netloc
        or len(build_url) > 1024
    ):
        raise InvalidInput("metadata build_url must be an http(s) URL", details={"build_url": "invalid"})
    cleaned["build_url"] = build_url
    labels = metadata.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidInput("metadata labels must map text to text", details={"labels": "invalid"})
    cleaned["labels"] = labels
    return cleaned


def _bucket(integration: Integration, env: str) -> Bucket:
    try:
        return Bucket.objects.select_related("registry", "integration").get(integration=integration, env=env)
    except Bucket.DoesNotExist:
        raise _no_bucket(integration, env) from None


def _no_bucket(integration: Integration, env: str) -> NotFound:
    return NotFound(f"integration {integration.name!r} has no bucket {env!r}")


def artifact_locked(artifact_id: int) -> Artifact:
    """The artifact row, locked (not its integration, which would serialise every request of the integration): the
    lock every check for "another open promotion of this artifact" holds.

    Taken before the audit append lock in every transaction (the audit entry is always written last), so requests,
    retries, finishing copies and auto-promoting check reports of one artifact queue behind each other instead of
    deadlocking.
    """
    return Artifact.objects.select_for_update(of=("self",)).select_related("integration").get(pk=artifact_id)


def arrival_record(*, bucket: Bucket, artifact: Artifact, tag: str, how: str, actor: Actor, promotion=None) -> Arrival:
    """Record that `artifact` landed in `bucket` under `tag`, and make it what the bucket runs. Audited."""
    if how not in Arrival.How.values:
        raise InvalidInput(f"unknown arrival kind {how!r}")
    with transaction.atomic():
        # The bucket row lock orders arrivals into one bucket, so current_arrival always points at the newest.
        locked = Bucket.objects.select_for_update().get(pk=bucket.pk)
        arrival, previous = _arrival_insert(
            locked=locked, bucket=bucket, artifact=artifact, tag=tag, how=how, actor=actor, promotion=promotion
        )
        audit_record(**_arrival_audit(arrival=arrival, previous=previous, actor=actor))
    return arrival


def _arrival_insert(
    *, locked: Bucket, bucket: Bucket, artifact: Artifact, tag: str, how: str, actor: Actor, promotion=None
) -> tuple[Arrival, int | None]:
    """The arrival row and the bucket's pointer to it; the caller holds the bucket row lock (`locked`)."""
    previous = locked.current_arrival_id
    arrival = Arrival(bucket=bucket, artifact=artifact, tag=tag, how=how, promotion=promotion, arrived_by=actor.label)
    insert([arrival])
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table(Bucket)} SET current_arrival_id = %s WHERE id = %s", [arrival.pk, locked.pk])
    locked.current_arrival = arrival
    bucket.current_arrival = arrival
    return arrival, previous


def _arrival_audit(*, arrival: Arrival, previous: int | None, actor: Actor) -> dict:
    """The `arrival.recorded` audit entry, as audit_record keyword arguments."""
    return {
        "actor": actor,
        "action": "arrival.recorded",
        "obj": arrival,
        "before": {"current_arrival": previous},
        "after": {
            "arrival": arrival.pk,
            "digest": arrival.artifact.digest,
            "tag": arrival.tag,
            "how": arrival.how,
            "promotion": arrival.promotion_id,
        },
    }


def _resolve(bucket: Bucket, reference: str):
    from ci_integrations.registry import resolve_manifest

    try:
        return resolve_manifest(bucket.location(reference))
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
    if not is_valid_tag(tag or ""):
        raise InvalidInput(
            f"invalid tag {tag!r}: up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
            details={"tag": "invalid"},
        )
    if digest is not None and not is_valid_digest(digest):
        raise InvalidInput(
            f"invalid digest {digest!r}: expected sha256:<64 lowercase hex>", details={"digest": "invalid"}
        )
    cleaned = _clean_metadata(metadata)
    bucket, latest = _bucket_with_latest_arrival(integration, env, tag)
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
        locked = _bucket_locked(bucket)
        if locked.current_arrival_id != bucket.current_arrival_id:
            latest = _latest_arrival(bucket, tag)
        if latest and latest.artifact.digest == info.digest:
            transaction.set_rollback(True)  # nothing of this request's is kept, not even a new artifact row
            return latest.artifact, latest, False
        if latest and bucket.immutable_tags:
            raise StateConflict(
                f"tag {tag!r} in bucket {bucket} is immutable and already holds {latest.artifact.digest}; "
                f"it cannot be registered again with {info.digest}",
                details={"existing_digest": latest.artifact.digest},
            )
        arrival, previous = _arrival_insert(
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
            _arrival_audit(arrival=arrival, previous=previous, actor=actor),
        )
        if auto_promote:  # rare; it audits its own requests, which belong after this registration's entries
            _auto_promote_after(artifact=artifact, bucket=bucket)
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
        raise _no_bucket(integration, env)
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


def _bucket_locked(bucket: Bucket) -> Bucket:
    """The bucket row again, locked until the transaction ends: it orders arrivals into the bucket."""
    sql = f"SELECT {columns(Bucket, 'b')} FROM {table(Bucket)} b WHERE b.id = %s{for_update()}"
    return fetch_one(sql, [bucket.pk], [(Bucket, "b")])[0]


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


def _auto_promote_after(*, artifact: Artifact, bucket: Bucket) -> None:
    from ci_integrations.services.promotions import promotions_auto_request

    promotions_auto_request(artifact=artifact, from_bucket=bucket)


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
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc or len(url) > 1024):
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
                _auto_promote_after(artifact=artifact, bucket=Bucket.objects.get(pk=bucket_id))
    return result


# ---- imports from an outside build registry -------------------------------------------------------------------


def _source_location(source: str, credentials: dict | None):
    """`[http(s)://]host/repo[:tag][@digest]` as an ImageLocation on a generic registry.

    Without a scheme the registry is reached over https, except on loopback where plain http is the norm.
    """
    from ci_integrations.registry import ImageLocation, RegistrySpec
    from ci_integrations.registry.refs import parse_reference

    scheme = ""
    text = (source or "").strip()
    for prefix in ("http://", "https://"):
        if text.startswith(prefix):
            scheme, text = prefix[:-3], text[len(prefix) :]
    try:
        ref = parse_reference(text)
    except registry_errors.InvalidReference as exc:
        raise InvalidInput(f"source: {exc.message}", details={"source": exc.message}) from None
    host = ref.registry
    if not scheme:
        scheme = "http" if host.split(":")[0] in ("localhost", "127.0.0.1", "[::1]") else "https"
    if host == "docker.io":
        spec = RegistrySpec(provider="dockerhub", url="https://registry-1.docker.io", credentials=credentials)
    else:
        spec = RegistrySpec(provider="generic", url=f"{scheme}://{host}", credentials=credentials)
    return ImageLocation(registry=spec, repository=ref.repository, reference=ref.reference), ref


def artifact_import(
    *,
    integration: Integration,
    source: str,
    source_credentials: dict | None = None,
    tag: str | None = None,
    metadata: dict | None = None,
    actor: Actor,
) -> Job:
    """Ask the portal to copy an image from an outside build registry into the integration's first bucket (a job)."""
    _, ref = _source_location(source, None)
    tag = tag or ref.tag
    if not tag:
        raise InvalidInput(
            "give a tag for the imported image (the source is pinned by digest only)", details={"tag": "required"}
        )
    if not is_valid_tag(tag):
        raise InvalidInput(f"invalid tag {tag!r}", details={"tag": "invalid"})
    cleaned = _clean_metadata(metadata)
    if source_credentials is not None and not (
        isinstance(source_credentials, dict) and all(isinstance(v, str) for v in source_credentials.values())
    ):
        raise InvalidInput("source_credentials must map names (username, password) to text")
    bucket = integration.buckets.order_by("position", "id").first()
    if bucket is None:
        raise StateConflict(f"integration {integration.name!r} has no bucket to import into")
    with transaction.atomic():
        job = Job.objects.create(
            kind="import",
            integration=integration,
            arguments={
                "source": source,
                "tag": tag,
                "env": bucket.env,
                "metadata": cleaned,
                # Source credentials are kept encrypted, and only until the job has run.
                "credentials_encrypted": encrypt_json(source_credentials) if source_credentials else "",
            },
            created_by=actor.label,
        )
        job.rq_job_id = new_job_id("import", job.pk)
        job.save(update_fields=["rq_job_id"])
        audit_record(
            actor=actor,
            action="artifact.import_requested",
            obj=job,
            integration=integration.name,
            environment=bucket.env,
            after={"source": source, "tag": tag, "job": job.pk},
        )
        from ci_integrations import jobs

        enqueue_on_commit(jobs.run_import, job.pk, queue=DEFAULT_QUEUE, job_id=job.rq_job_id)
    return job


def _immutable_tag_check(bucket: Bucket, tag: str, src) -> str | None:
    """Before an import writes `tag` into an immutable_tags bucket: refuse another digest than the tag holds.

    The copy would move the registry's tag before registration could refuse it, so the check comes first; the
    digest it checked is returned so the copy can insist on exactly that image.
    """
    if not bucket.immutable_tags:
        return None
    arrivals = Arrival.objects.filter(bucket=bucket, tag=tag).select_related("artifact")
    holder = arrivals.order_by("-arrived_at", "-id").first()
    if holder is None:
        return None
    from ci_integrations.registry import resolve_manifest

    digest = resolve_manifest(src).digest
    if digest != holder.artifact.digest:
        raise StateConflict(
            f"tag {tag!r} in bucket {bucket} is immutable and already holds {holder.artifact.digest}; "
            f"the import of {digest} was refused before copying",
            details={"existing_digest": holder.artifact.digest},
        )
    return digest


def artifact_import_execute(*, job_id: int) -> None:
    """The import job body: copy the source image into the first bucket, then register it (how=import)."""
    from ci_integrations.registry import copy_image

    now = timezone.now()
    if not Job.objects.filter(pk=job_id, kind="import", state=Job.State.QUEUED).update(
        state=Job.State.RUNNING, started_at=now
    ):
        return  # already taken or finished
    job = Job.objects.select_related("integration").get(pk=job_id)
    args = job.arguments
    actor = Actor.system(f"import:{job.created_by}"[:150])
    try:
        credentials = decrypt_json(args["credentials_encrypted"]) if args.get("credentials_encrypted") else None
        src, _ = _source_location(args["source"], credentials)
        bucket = _bucket(job.integration, args["env"])
        expected = _immutable_tag_check(bucket, args["tag"], src)
        summary = copy_image(
            src, bucket.location(args["tag"]), expected_digest=expected, parallelism=settings.P2P_COPY_PARALLELISM
        )
        artifact, arrival, created = artifact_register(
            integration=job.integration,
            env=bucket.env,
            tag=args["tag"],
            digest=summary.digest,
            metadata=args.get("metadata"),
            actor=actor,
            how=Arrival.How.IMPORT,
        )
    except Exception as exc:  # noqa: BLE001 - whatever broke, the job must not stay running
        if isinstance(exc, registry_errors.RegistryError | ServiceError):
            message = exc.message
        else:
            trace = registry_errors.redact("".join(traceback.format_exception(exc)))
            logger.error("import job %s crashed\n%s", job_id, trace)
            message = registry_errors.redact(f"unexpected error: {exc.__class__.__name__}: {exc}")
        with transaction.atomic():
            Job.objects.filter(pk=job_id).update(
                state=Job.State.FAILED,
                error=message,
                finished_at=timezone.now(),
                arguments={**args, "credentials_encrypted": ""},
            )
            audit_record(
                actor=actor,
                action="artifact.import_failed",
                obj=job,
                reason=message,
                after={"source": args["source"], "error": message},
            )
        return
    Job.objects.filter(pk=job_id).update(
        state=Job.State.SUCCEEDED,
        finished_at=timezone.now(),
        arguments={**args, "credentials_encrypted": ""},
        result={
            "digest": artifact.digest,
            "artifact": artifact.pk,
            "arrival": arrival.pk,
            "created": created,
            **summary.as_dict(),
        },
    )
