"""Imports: copying an image from an outside build registry into an integration's first bucket, as a job.

The request makes an ImportJob row and enqueues its job after commit; the job copies the image, then registers it
(how=import) through the artifact service. The reconciler re-enqueues an import whose job Redis lost, until its
attempts are spent.

Any CI token may ask for an import, so the source is held to what the portal trusts: a registry configured in the
portal (a Registry row's host and port) or a host listed in P2P_IMPORT_ALLOWED_HOSTS. An address guard refuses
internal addresses (loopback, link-local such as cloud metadata, private networks) unless a configured registry
lives at that host and port; the request asks it once, and the worker's registry client asks it again before every
connection, redirect and token request. Imports run on a queue of their own and stop themselves after
P2P_IMPORT_TIMEOUT, so a trickling source can neither hold up promotions nor run for ever.

May import: models, registry, artifacts, arrivals, audit, secrets, background.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import traceback
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ci_integrations.encryption import decrypt_json, encrypt_json
from ci_integrations.input_rules import TAG
from ci_integrations.models import Arrival, Bucket, ImportJob, Integration, Registry
from ci_integrations.registry import ImageLocation, RegistrySpec, address_guard, copy_image, resolve_manifest
from ci_integrations.registry import errors as registry_errors
from ci_integrations.registry.budget import Budget, using_budget
from ci_integrations.registry.destinations import AddressGuard, Guard, origin
from ci_integrations.registry.refs import parse_reference
from ci_integrations.services.actors import Actor
from ci_integrations.services.arrivals import immutable_tag_holder
from ci_integrations.services.artifacts import artifact_register, clean_metadata, no_bucket
from ci_integrations.services.audit import audit_record
from ci_integrations.services.background import RUN_IMPORT, transition
from ci_integrations.services.errors import InvalidInput, NotAllowed, ServiceError, StateConflict
from ci_integrations.services.supply_chain import attached_mode

logger = logging.getLogger(__name__)
IMPORTED = "artifact.imported"


def _bucket(integration: Integration, env: str) -> Bucket:
    try:
        return Bucket.objects.select_related("registry", "integration").get(integration=integration, env=env)
    except Bucket.DoesNotExist:
        raise no_bucket(integration, env) from None


def _import_target(integration: Integration) -> Bucket | None:
    """The bucket an import lands in: the first one (by position) where images may enter from outside, that is an
    entry environment of the workflow. An import lands where CI would register, never in a later bucket that only a
    promotion (with its approvals and checks) may fill."""
    for bucket in integration.buckets.select_related("integration").order_by("position", "id"):
        if bucket.direct_arrival_refusal() is None:
            return bucket
    return None


class ImportTimedOut(ServiceError):
    """An import ran past P2P_IMPORT_TIMEOUT: its copy is abandoned and the import ends failed."""

    code = "timeout"


def _host_port(host: str, port: int) -> str:
    """The host:port form address_guard and people write ("[::1]:5000" for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _configured_registries() -> set[str]:
    """host:port of every registry configured in the portal: imports may read from these, wherever they live."""
    return {_host_port(*origin(url)[1:]) for url in Registry.objects.values_list("url", flat=True)}


def _listed(host: str, port: int) -> bool:
    """Whether P2P_IMPORT_ALLOWED_HOSTS names host and port: `build.example.com` (any port), `build.example.com:5000`
    (that port) or `*.example.com` (any host below example.com, not example.com itself)."""
    for entry in settings.P2P_IMPORT_ALLOWED_HOSTS:
        parts = urlsplit(f"//{entry}")
        pattern = parts.hostname or ""
        if parts.port is not None and parts.port != port:
            continue
        if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
            return True
        if host == pattern:
            return True
    return False


def _source_guard() -> AddressGuard:
    """The address guard for an import's source: internal addresses are refused, except a configured registry's."""
    return address_guard(allowed_private_hosts=_configured_registries())


def _source_location(source: str, credentials: dict | None, *, guard: Guard | None):
    """`[http(s)://]host/repo[:tag][@digest]` as an ImageLocation on a generic registry, guarded by `guard`.

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
        spec = RegistrySpec(
            provider="dockerhub", url="https://registry-1.docker.io", credentials=credentials, guard=guard
        )
    else:
        spec = RegistrySpec(provider="generic", url=f"{scheme}://{host}", credentials=credentials, guard=guard)
    return ImageLocation(registry=spec, repository=ref.repository, reference=ref.reference), ref


def _check_source_allowed(location: ImageLocation, ref) -> None:
    """Refuse (NotAllowed, naming the host) a source that is not a configured registry or a listed host, or that
    resolves to an internal address no configured registry lives at.

    A name that cannot be resolved now is let through: the worker's guard asks again before it connects, and the
    job fails with the resolver's answer if it still cannot.
    """
    scheme, host, port = origin(location.registry.url)
    where = _host_port(host, port)
    # Docker Hub is written docker.io and reached at registry-1.docker.io: either name may be listed.
    names = {host, ref.registry.split(":")[0].lower()} if location.registry.provider == "dockerhub" else {host}
    if where not in _configured_registries() and not any(_listed(name, port) for name in names):
        message = (
            f"source: imports may not read from {where}: it is not a registry configured in the portal, nor a host"
            " listed in P2P_IMPORT_ALLOWED_HOSTS"
        )
        raise NotAllowed(message, details={"source": "host not allowed", "host": where})
    try:
        location.registry.guard(scheme, host, port)
    except registry_errors.DestinationRefused as exc:
        raise NotAllowed(f"source: {exc.message}", details={"source": "address not allowed", "host": where}) from None
    except OSError:
        pass  # unresolvable now: the worker's guard decides (see above)


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
    location, ref = _source_location(source, None, guard=_source_guard())
    _check_source_allowed(location, ref)
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
    bucket = _import_target(integration)
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


@dataclass(frozen=True)
class _UntilDeadline:
    """A destination guard that refuses every connection once an import's time is up, and otherwise asks `inner`.

    A copy thread cannot be stopped from outside; past the deadline this keeps an abandoned one from sending anything
    more, above all the manifest PUT that would move the bucket's tag after the import was recorded failed.
    """

    inner: Guard | None
    deadline: float

    def __call__(self, scheme: str, host: str, port: int) -> None:
        if time.monotonic() >= self.deadline:
            raise registry_errors.DestinationRefused(f"refused to connect to {host}: the import's time is up")
        if self.inner is not None:
            self.inner(scheme, host, port)


def _until(deadline: float, location: ImageLocation) -> ImageLocation:
    """`location` with its registry's guard wrapped in the import's deadline."""
    guard = _UntilDeadline(location.registry.guard, deadline)
    return replace(location, registry=replace(location.registry, guard=guard))


def _by_deadline(deadline: float, name: str, call, *args, **kwargs):
    """The result of `call(*args, **kwargs)`, run in a helper thread and waited for until `deadline` (monotonic).

    A trickling registry keeps every read inside its read timeout, so only a limit on the whole call stops it. Past
    the deadline ImportTimedOut is raised and the daemon thread is abandoned: a forked work horse ends with the job
    and takes the thread along, and in a worker that runs jobs in its own process the deadline guard refuses
    whatever the thread would send next.
    """
    outcome: Future = Future()

    def run() -> None:
        try:
            outcome.set_result(call(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting job as it is
            outcome.set_exception(exc)

    # In a copy of this context: the registry calls see the import's budget (its deadline cuts retry pauses and
    # stops the copy between chunks), so the thread usually ends by itself at the deadline.
    threading.Thread(target=contextvars.copy_context().run, args=(run,), name=name, daemon=True).start()
    wait([outcome], timeout=max(0.0, deadline - time.monotonic()))
    seconds = settings.P2P_IMPORT_TIMEOUT
    timed_out = (
        f"the import took longer than P2P_IMPORT_TIMEOUT ({seconds} s) and was stopped: the source registry is too"
        " slow, or trickles"
    )
    if not outcome.done():
        raise ImportTimedOut(timed_out)
    try:
        return outcome.result()
    except registry_errors.DeadlineExceeded as exc:
        raise ImportTimedOut(f"{timed_out} ({exc.message})") from None


def _immutable_tag_check(bucket: Bucket, tag: str, src, resolve) -> str | None:
    """Before an import writes `tag` into an immutable_tags bucket: refuse another digest than the tag holds.

    The copy would move the registry's tag before registration could refuse it, so the check comes first; the
    digest it checked is returned so the copy can insist on exactly that image. `resolve` reads the source's
    manifest (within the import's time).
    """
    if not bucket.immutable_tags:
        return None
    digest = resolve(src).digest
    holder = immutable_tag_holder(bucket, tag, digest)
    if holder is not None:
        raise StateConflict(
            f"tag {tag!r} in bucket {bucket} is immutable and already holds {holder.artifact.digest}; "
            f"the import of {digest} was refused before copying",
            details={"existing_digest": holder.artifact.digest},
        )
    return digest


def artifact_import_execute(*, job_id: int) -> None:
    """The import job body: copy the source image into the first bucket, then register it (how=import).

    Each run counts one attempt on the row, and stops itself after P2P_IMPORT_TIMEOUT seconds, ending failed.
    """
    claimed = transition(
        ImportJob.objects.filter(pk=job_id, state__in=ImportJob.RUNNABLE),
        state=ImportJob.State.RUNNING,
        started_at=timezone.now(),
        attempts=F("attempts") + 1,
    )
    if not claimed:
        return  # already taken or finished
    deadline = time.monotonic() + settings.P2P_IMPORT_TIMEOUT
    job = ImportJob.objects.select_related("integration").get(pk=job_id)
    args = job.arguments
    actor = Actor.system(f"import:{job.created_by}"[:150])
    thread = f"import-{job_id}"
    budget = Budget(settings.P2P_IMPORT_TIMEOUT, what=f"P2P_IMPORT_TIMEOUT ({settings.P2P_IMPORT_TIMEOUT} s)")
    try:
        credentials = decrypt_json(args["credentials_encrypted"]) if args.get("credentials_encrypted") else None
        src, _ = _source_location(args["source"], credentials, guard=_source_guard())
        src = _until(deadline, src)
        bucket = _bucket(job.integration, args["env"])
        dst = _until(deadline, bucket.location(args["tag"]))
        with using_budget(budget):
            expected = _immutable_tag_check(
                bucket, args["tag"], src, lambda location: _by_deadline(deadline, thread, resolve_manifest, location)
            )
            summary = _by_deadline(
                deadline,
                thread,
                copy_image,
                src,
                dst,
                expected_digest=expected,
                parallelism=settings.P2P_COPY_PARALLELISM,
                attached=attached_mode(step=None, bucket=bucket),
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
        if summary.attachments:
            Arrival.objects.filter(pk=arrival.pk).update(attachments=summary.attachments)
    except Exception as exc:  # noqa: BLE001 - whatever broke, the job must not stay running
        if isinstance(exc, registry_errors.RegistryError | ServiceError):
            message = exc.message
        else:
            trace = registry_errors.redact("".join(traceback.format_exception(exc)))
            logger.error("import job %s crashed\n%s", job_id, trace)
            message = f"unexpected error: {exc.__class__.__name__}: {exc}"
        # Shown on the job and in the audit log: redacted, then cut so no registry or crash can fill the row.
        message = registry_errors.cut(registry_errors.redact(message))
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
    with transaction.atomic():
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
        # What was read from where, and the copy's summary (p2p_copy_bytes_total counts imports from it too).
        audit_record(
            actor=actor,
            action=IMPORTED,
            obj=job,
            integration=job.integration.name,
            environment=bucket.env,
            after={"source": args["source"], "digest": artifact.digest, "tag": args["tag"], "copy": summary.as_dict()},
        )
