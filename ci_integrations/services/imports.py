"""Imports: copying an image from an outside build registry into an integration's first bucket, as a job.

The request makes an ImportJob row and enqueues its job after commit; the job copies the image, then registers it
(how=import) through the artifact service. The reconciler re-enqueues an import whose job Redis lost.

May import: models, registry, artifacts, arrivals, audit, secrets, background.
"""

from __future__ import annotations

import logging
import traceback

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ci_integrations.encryption import decrypt_json, encrypt_json
from ci_integrations.input_rules import TAG
from ci_integrations.models import Arrival, Bucket, ImportJob, Integration
from ci_integrations.registry import ImageLocation, RegistrySpec, copy_image, resolve_manifest
from ci_integrations.registry import errors as registry_errors
from ci_integrations.registry.refs import parse_reference
from ci_integrations.services.actors import Actor
from ci_integrations.services.arrivals import immutable_tag_holder
from ci_integrations.services.artifacts import artifact_register, clean_metadata, no_bucket
from ci_integrations.services.audit import audit_record
from ci_integrations.services.background import RUN_IMPORT, transition
from ci_integrations.services.errors import InvalidInput, ServiceError, StateConflict

logger = logging.getLogger(__name__)


def _bucket(integration: Integration, env: str) -> Bucket:
    try:
        return Bucket.objects.select_related("registry", "integration").get(integration=integration, env=env)
    except Bucket.DoesNotExist:
        raise no_bucket(integration, env) from None


def _source_location(source: str, credentials: dict | None):
    """`[http(s)://]host/repo[:tag][@digest]` as an ImageLocation on a generic registry.

    Without a scheme the registry is reached over https, except on loopback where plain http is the norm.
    """
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
) -> ImportJob:
    """Ask the portal to copy an image from an outside build registry into the integration's first bucket (a job)."""
    _, ref = _source_location(source, None)
    tag = tag or ref.tag
    if not tag:
        raise InvalidInput(
            "give a tag for the imported image (the source is pinned by digest only)", details={"tag": "required"}
        )
    if not TAG.is_valid(tag):
        raise InvalidInput(TAG.problem(tag), details={"tag": "invalid"})
    cleaned = clean_metadata(metadata)
    if source_credentials is not None and not (
        isinstance(source_credentials, dict) and all(isinstance(v, str) for v in source_credentials.values())
    ):
        raise InvalidInput("source_credentials must map names (username, password) to text")
    bucket = integration.buckets.order_by("position", "id").first()
    if bucket is None:
        raise StateConflict(f"integration {integration.name!r} has no bucket to import into")
    with transaction.atomic():
        job = ImportJob.objects.create(
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
        job.job_id = RUN_IMPORT.new_job_id(job.pk)
        job.save(update_fields=["job_id"])
        audit_record(
            actor=actor,
            action="artifact.import_requested",
            obj=job,
            integration=integration.name,
            environment=bucket.env,
            after={"source": source, "tag": tag, "job": job.pk},
        )
        RUN_IMPORT.enqueue_on_commit(job.pk, job_id=job.job_id)
    return job


def _immutable_tag_check(bucket: Bucket, tag: str, src) -> str | None:
    """Before an import writes `tag` into an immutable_tags bucket: refuse another digest than the tag holds.

    The copy would move the registry's tag before registration could refuse it, so the check comes first; the
    digest it checked is returned so the copy can insist on exactly that image.
    """
    if not bucket.immutable_tags:
        return None
    digest = resolve_manifest(src).digest
    holder = immutable_tag_holder(bucket, tag, digest)
    if holder is not None:
        raise StateConflict(
            f"tag {tag!r} in bucket {bucket} is immutable and already holds {holder.artifact.digest}; "
            f"the import of {digest} was refused before copying",
            details={"existing_digest": holder.artifact.digest},
        )
    return digest


def artifact_import_execute(*, job_id: int) -> None:
    """The import job body: copy the source image into the first bucket, then register it (how=import)."""
    claimed = transition(
        ImportJob.objects.filter(pk=job_id, state__in=ImportJob.RUNNABLE),
        state=ImportJob.State.RUNNING,
        started_at=timezone.now(),
    )
    if not claimed:
        return  # already taken or finished
    job = ImportJob.objects.select_related("integration").get(pk=job_id)
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
            ImportJob.objects.filter(pk=job_id).update(
                state=ImportJob.State.FAILED,
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
    ImportJob.objects.filter(pk=job_id).update(
        state=ImportJob.State.SUCCEEDED,
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
