"""The domain words (registry, integration, bucket, artifact, arrival, workflow, promotion, audit entry, token…) as
tables.

Models hold data, validation and small derived properties only; everything that changes state lives in services/.
"""

from __future__ import annotations

import re

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from ci_integrations.encryption import decrypt_json, encrypt_json
from ci_integrations.input_rules import CHECK_NAME, DIGEST, NAME, TAG, InputRule
from ci_integrations.registry import ImageLocation, RegistrySpec
from ci_integrations.registry.refs import RepositorySettings, is_valid_host, is_valid_repository


def _check(rule: InputRule, value: str) -> None:
    if not rule.is_valid(value):
        raise ValidationError(rule.problem(value))


# Django validators for the input words of input_rules.py (top-level functions, so migrations can name them).
def validate_digest(value: str) -> None:
    _check(DIGEST, value)


def validate_tag(value: str) -> None:
    _check(TAG, value)


def validate_name(value: str) -> None:
    _check(NAME, value)


def validate_check_name(value: str) -> None:
    _check(CHECK_NAME, value)


def validate_repository(value: str) -> None:
    if not is_valid_repository(value):
        raise ValidationError(
            f"{value!r} is not a valid repository path: lowercase components of letters and digits separated by "
            "'.', '_', '__' or '-', joined by '/'."
        )


_ROLE_ARN = re.compile(r"^arn:aws(?:-cn|-us-gov)?:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_SERVICE_ACCOUNT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}@[a-z0-9.-]+\.gserviceaccount\.com$")


def validate_role_arn(value: str) -> None:
    if value and not _ROLE_ARN.match(value):
        raise ValidationError(
            f"{value!r} is not an IAM role ARN: expected arn:aws:iam::<12-digit account>:role/<name>."
        )


def validate_service_account(value: str) -> None:
    if value and not _SERVICE_ACCOUNT.match(value):
        raise ValidationError(
            f"{value!r} is not a Google service account: expected <name>@<project>.iam.gserviceaccount.com."
        )


def validate_registry_url(value: str) -> None:
    scheme, _, host = value.partition("://") if isinstance(value, str) else ("", "", "")
    if scheme not in ("http", "https") or not is_valid_host(host.rstrip("/")):
        raise ValidationError(f"{value!r} is not a registry URL: expected http(s)://host[:port] with no path.")


class IntegrationKind(models.TextChoices):
    ENVIRONMENT = "environment", "Environment"
    RELEASE_STREAM = "release_stream", "Release stream"


class Registry(models.Model):
    """An OCI registry endpoint with its provider, provider options and credentials.

    Credentials are ambient (the cloud's default chain, or anonymous for a generic registry) unless stored, in which
    case they are kept encrypted with MultiFernet (P2P_FERNET_KEYS).
    """

    class Provider(models.TextChoices):
        GENERIC = "generic", "Generic OCI"
        DOCKERHUB = "dockerhub", "Docker Hub"
        ECR = "ecr", "AWS ECR"
        GAR = "gar", "Google Artifact Registry / GCR"
        ACR = "acr", "Azure Container Registry"

    name = models.SlugField(max_length=63, unique=True, validators=[validate_name])
    provider = models.CharField(max_length=16, choices=Provider.choices, default=Provider.GENERIC)
    url = models.CharField(max_length=255, validators=[validate_registry_url])
    options = models.JSONField(default=dict, blank=True)
    credentials_encrypted = models.TextField(blank=True, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "registries"

    def __str__(self) -> str:
        return self.name

    @property
    def has_stored_credentials(self) -> bool:
        return bool(self.credentials_encrypted)

    def set_credentials(self, credentials: dict | None) -> None:
        """Store credentials encrypted, or clear them (None) to use ambient credentials."""
        self.credentials_encrypted = encrypt_json(credentials) if credentials else ""

    def get_credentials(self) -> dict | None:
        """Decrypted stored credentials, or None for ambient. A wrong key raises CredentialsUnreadable."""
        return decrypt_json(self.credentials_encrypted) if self.credentials_encrypted else None

    def spec(self):
        """This registry as the registry package describes it (the package knows nothing of Django)."""
        return RegistrySpec(
            provider=self.provider,
            url=self.url.rstrip("/"),
            options=dict(self.options),
            credentials=self.get_credentials(),
        )


class Workflow(models.Model):
    """Ordered steps (from-bucket to to-bucket) shared by integrations of the same kind."""

    name = models.SlugField(max_length=63, unique=True, validators=[validate_name])
    kind = models.CharField(max_length=16, choices=IntegrationKind.choices, default=IntegrationKind.ENVIRONMENT)
    description = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.pk:
            mismatched = list(
                self.integrations.exclude(kind=self.kind).order_by("name").values_list("name", flat=True)[:5]
            )
            if mismatched:
                raise ValidationError(
                    {"kind": f"integrations of another kind use this workflow: {', '.join(mismatched)}"}
                )


class Attached(models.TextChoices):
    """Which attached artifacts (signatures, SBOMs, attestations) travel with an image; empty means "as the bucket
    says", and a bucket's empty means all."""

    INHERIT = "", "As the bucket (or all)"
    ALL = "all", "All"
    SIGNATURES = "signatures", "Signatures only"
    NONE = "none", "None"


class WorkflowStep(models.Model):
    """One allowed move (from_env → to_env) with its policy."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="steps")
    position = models.PositiveIntegerField()
    from_env = models.SlugField(max_length=63, validators=[validate_name])
    to_env = models.SlugField(max_length=63, validators=[validate_name])
    required_approvals = models.PositiveIntegerField(default=0)
    # Rollbacks into to_env may need fewer approvals; None means the same as a promotion.
    rollback_approvals = models.PositiveIntegerField(null=True, blank=True)
    approver_group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # `approver_group: "@release_managers"`: the release managers of the integration's team approve.
    approvers_from_team = models.BooleanField(default=False)
    self_approval = models.BooleanField(default=False)
    required_checks = models.JSONField(default=list, blank=True)
    min_soak = models.DurationField(null=True, blank=True)
    auto_promote = models.BooleanField(default=False)
    # How long a promotion may wait for its approvals before it expires; None means P2P_APPROVAL_TIMEOUT (7 days).
    approval_timeout = models.DurationField(null=True, blank=True)
    # A regular expression the tag must match in full, e.g. r"v\d+\.\d+\.\d+"; empty means any tag.
    tag_rule = models.CharField(max_length=255, blank=True, default="")
    attached = models.CharField(max_length=10, choices=Attached.choices, blank=True, default=Attached.INHERIT)
    # {"keys": [{"name": …, "pem": …}], "keyless": [{"issuer": …, "subject": …}]}; empty means no signature needed.
    require_signature = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["workflow", "position"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "to_env"], name="step_target_unique"),
            models.CheckConstraint(condition=~Q(from_env=models.F("to_env")), name="step_moves_somewhere"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow.name}: {self.from_env} → {self.to_env}"

    def clean(self) -> None:
        if self.tag_rule:
            try:
                re.compile(self.tag_rule)
            except re.error as exc:
                raise ValidationError({"tag_rule": f"not a valid regular expression: {exc}"}) from exc
        if not isinstance(self.required_checks, list):
            raise ValidationError({"required_checks": "must be a list of check names"})
        refused = [name for name in self.required_checks if not CHECK_NAME.is_valid(name)]
        if refused:
            raise ValidationError({"required_checks": f"check names {refused!r} must each be {CHECK_NAME.explanation}"})

    def approvals_needed(self, *, rollback: bool) -> int:
        if rollback and self.rollback_approvals is not None:
            return self.rollback_approvals
        return self.required_approvals


class Team(models.Model):
    """People who own integrations: they see them, request their promotions and (their release managers) approve.

    Membership comes from the company's identity provider (the OIDC groups the person had at their last sign-in, kept
    on their PersonIdentity) or, for installations without single sign-on, from the local user names listed in the
    config file. services/teams.py answers every "is this person in this team" question.
    """

    name = models.SlugField(max_length=63, unique=True, validators=[validate_name])
    oidc_groups = models.JSONField(default=list, blank=True)
    release_manager_groups = models.JSONField(default=list, blank=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="p2p_teams")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RoleGrant(models.Model):
    """An org-wide role (one of the role groups: auditors, release-managers, platform-admins) given to the members of
    an identity-provider group, from the config file's `roles:` section."""

    oidc_group = models.CharField(max_length=255)
    role = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="+")

    class Meta:
        ordering = ["role__name", "oidc_group"]
        constraints = [models.UniqueConstraint(fields=["oidc_group", "role"], name="one_grant_per_group_and_role")]

    def __str__(self) -> str:
        return f"{self.oidc_group} → {self.role.name}"


class PersonIdentity(models.Model):
    """How a person last signed in: through the identity provider (issuer and subject, and the groups it gave) or
    with a local password."""

    class Method(models.TextChoices):
        SSO = "sso", "Single sign-on"
        LOCAL = "local", "Local password"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identity")
    method = models.CharField(max_length=8, choices=Method.choices, default=Method.LOCAL)
    issuer = models.CharField(max_length=512, blank=True, default="")
    subject = models.CharField(max_length=255, blank=True, default="")
    groups = models.JSONField(default=list, blank=True)
    signed_in_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["issuer", "subject"], condition=~Q(subject=""), name="one_person_per_sso_subject"
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.method})"


class Integration(models.Model):
    """One deployable service (CI Integration), of kind environment or release stream."""

    name = models.SlugField(max_length=63, unique=True, validators=[validate_name])
    kind = models.CharField(max_length=16, choices=IntegrationKind.choices, default=IntegrationKind.ENVIRONMENT)
    workflow = models.ForeignKey(Workflow, null=True, blank=True, on_delete=models.PROTECT, related_name="integrations")
    description = models.TextField(blank=True, default="")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="integrations")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.workflow_id and self.workflow.kind != self.kind:
            raise ValidationError(
                {"workflow": f"workflow {self.workflow.name!r} is for kind {self.workflow.kind}, not {self.kind}"}
            )


class CiIdentity(models.Model):
    """A trust policy of an integration: CI jobs whose OIDC ID token comes from `issuer`, for `audience`, with
    `claims` matching (exact values, or globs such as "refs/tags/v*"), may exchange it for a short-lived CI token
    with `scopes` on this integration (services/oidc_exchange.py). Kept from the config file's `ci_identities`."""

    integration = models.ForeignKey("Integration", on_delete=models.CASCADE, related_name="ci_identities")
    position = models.PositiveIntegerField(default=0)
    issuer = models.CharField(max_length=512)
    audience = models.CharField(max_length=255)
    claims = models.JSONField(default=dict, blank=True)
    scopes = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["integration", "position"]
        verbose_name_plural = "CI identities"
        indexes = [models.Index(fields=["issuer"], name="ci_identity_issuer_idx")]

    def __str__(self) -> str:
        return f"{self.integration.name}: {self.issuer} ({self.audience})"


class Bucket(models.Model):
    """An integration's slot for one environment or release stream: a repository on one registry."""

    integration = models.ForeignKey(Integration, on_delete=models.CASCADE, related_name="buckets")
    env = models.SlugField(max_length=63, validators=[validate_name])
    position = models.PositiveIntegerField(default=0)
    registry = models.ForeignKey(Registry, on_delete=models.PROTECT, related_name="buckets")
    repository = models.CharField(max_length=255, validators=[validate_repository])
    immutable_tags = models.BooleanField(default=False)
    allow_push_credentials = models.BooleanField(default=False)
    # Images reach a bucket a workflow step leads into by promotion only; this lets CI put them there directly.
    allow_direct_register = models.BooleanField(default=False)
    attached = models.CharField(max_length=10, choices=Attached.choices, blank=True, default=Attached.INHERIT)
    # How a cloud registry scopes push credentials to this bucket's repository (see services/credentials.py).
    push_role_arn = models.CharField(max_length=600, blank=True, default="", validators=[validate_role_arn])
    push_service_account = models.CharField(
        max_length=254, blank=True, default="", validators=[validate_service_account]
    )
    # ECR and Artifact Registry refuse a push into a repository that does not exist; with create_repository the
    # copy creates it (with immutable_tags and the three settings below) and preflight says it will.
    create_repository = models.BooleanField(default=False)
    scan_on_push = models.BooleanField(default=False)  # ECR basic scanning on push
    encryption = models.CharField(
        max_length=8, blank=True, default="", choices=[("", "registry default"), ("AES256", "AES256"), ("KMS", "KMS")]
    )
    kms_key = models.CharField(max_length=600, blank=True, default="")  # ECR KMS key, or GAR's Cloud KMS key name
    # Denormalised pointer to the latest arrival, kept by the arrival service so the matrix is one query.
    current_arrival = models.ForeignKey(
        "Arrival", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )

    class Meta:
        ordering = ["integration", "position", "env"]
        constraints = [models.UniqueConstraint(fields=["integration", "env"], name="bucket_env_unique")]

    def __str__(self) -> str:
        return f"{self.integration.name}/{self.env}"

    def location(self, reference: str):
        """Where an image with this tag or digest lives, for the registry package."""
        create = (
            RepositorySettings(
                immutable_tags=self.immutable_tags,
                scan_on_push=self.scan_on_push,
                encryption=self.encryption,
                kms_key=self.kms_key,
            )
            if self.create_repository
            else None
        )
        return ImageLocation(
            registry=self.registry.spec(), repository=self.repository, reference=reference, create=create
        )

    @property
    def image_name(self) -> str:
        host = self.registry.url.split("://", 1)[1].rstrip("/")
        return f"{host}/{self.repository}"

    def entry_environments(self) -> list[str] | None:
        """Where images enter this bucket's workflow from outside: the environments a step leaves from and no step
        arrives at, in step order (the first `from` of a straight workflow). None when the integration has none."""
        steps = self._workflow_moves()
        return None if steps is None else _entries(steps)

    def direct_arrival_refusal(self) -> tuple[str, list[str]] | None:
        """Why an image may not be put into this bucket from outside the portal (registered by CI, or pushed with
        credentials the portal handed out), with the entry environments; None when it may.

        Anything arriving in a later bucket directly would skip the workflow steps (approvals, checks, soak) that
        lead into it. Integrations without a workflow have no steps to skip, so every bucket of theirs takes
        images, as before.
        """
        if self.allow_direct_register:
            return None
        steps = self._workflow_moves()
        if steps is None:
            return None
        entries = _entries(steps)
        if self.env in entries:
            return None
        where = " or ".join(repr(env) for env in entries) or "no environment (its workflow has no steps)"
        arrival = next((from_env for from_env, to_env in steps if to_env == self.env), None)
        how = (
            f"images reach {self.env!r} only by promotion from {arrival!r}"
            if arrival
            else f"{self.env!r} is not an environment of workflow {self.integration.workflow.name!r}"
        )
        return (
            f"bucket {self} is not where its workflow starts: {how}. CI registers and pushes into {where}, then "
            "promotes; set allow_direct_register on this bucket to let images in directly.",
            entries,
        )

    def _workflow_moves(self) -> list[tuple[str, str]] | None:
        """(from_env, to_env) of each step of the integration's workflow in order; None without a workflow."""
        if not self.integration.workflow_id:
            return None
        steps = WorkflowStep.objects.filter(workflow_id=self.integration.workflow_id).order_by("position")
        return list(steps.values_list("from_env", "to_env"))


def _entries(steps: list[tuple[str, str]]) -> list[str]:
    """Environments some step leaves from and none arrives at, in step order."""
    targets = {to_env for _, to_env in steps}
    return list(dict.fromkeys(from_env for from_env, _ in steps if from_env not in targets))


class Artifact(models.Model):
    """An immutable image of an integration, identified by its digest, with build metadata."""

    integration = models.ForeignKey(Integration, on_delete=models.CASCADE, related_name="artifacts")
    digest = models.CharField(max_length=71, validators=[validate_digest])
    media_type = models.CharField(max_length=255, blank=True, default="")
    size = models.BigIntegerField(null=True, blank=True)
    git_sha = models.CharField(max_length=64, blank=True, default="")
    branch = models.CharField(max_length=255, blank=True, default="")
    build_url = models.URLField(max_length=1024, blank=True, default="")
    labels = models.JSONField(default=dict, blank=True)
    # Where the source lives (the diff links commits there), and the commits CI says this build adds: [{sha, title,
    # author}], newest first.
    repo_url = models.URLField(max_length=1024, blank=True, default="")
    changelog = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    created_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["integration", "digest"], name="artifact_digest_unique")]
        indexes = [models.Index(fields=["integration", "-created_at"], name="artifact_recent_idx")]

    def __str__(self) -> str:
        return f"{self.integration.name}@{self.short_digest}"

    @property
    def short_digest(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]


class ArrivalQuerySet(models.QuerySet):
    def newest_first(self) -> ArrivalQuerySet:
        """Newest arrival first; ties in time (one clock tick) go to the later row."""
        return self.order_by("-arrived_at", "-id")

    def newest(self) -> Arrival | None:
        """The newest of these arrivals, or None: e.g. `bucket.arrivals.filter(tag=tag).newest()` is what the tag
        holds in that bucket."""
        return self.newest_first().first()


class Arrival(models.Model):
    """An artifact that landed in a bucket under a tag: the latest one is what the bucket runs."""

    class How(models.TextChoices):
        PUSH = "push", "Push"
        IMPORT = "import", "Import"
        PROMOTION = "promotion", "Promotion"
        ROLLBACK = "rollback", "Rollback"

    bucket = models.ForeignKey(Bucket, on_delete=models.CASCADE, related_name="arrivals")
    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="arrivals")
    tag = models.CharField(max_length=128, validators=[validate_tag])
    how = models.CharField(max_length=16, choices=How.choices)
    promotion = models.ForeignKey("Promotion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    arrived_at = models.DateTimeField(default=timezone.now)
    arrived_by = models.CharField(max_length=150, blank=True, default="")
    # The attachments that landed with the image: [{digest, artifact_type, kind[, tag]}].
    attachments = models.JSONField(default=list, blank=True)

    objects = ArrivalQuerySet.as_manager()

    class Meta:
        ordering = ["-arrived_at", "-id"]
        indexes = [
            models.Index(fields=["bucket", "-arrived_at"], name="arrival_bucket_recent_idx"),
            models.Index(fields=["artifact", "bucket"], name="arrival_artifact_idx"),
            # The latest arrival of a tag in a bucket (registration, immutable tags) without walking the history.
            models.Index(fields=["bucket", "tag", "-arrived_at"], name="arrival_bucket_tag_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.bucket} ← {self.tag}@{self.artifact.short_digest}"


class ImageDiff(models.Model):
    """What the registry says changes between two images (config, layers, platforms, SBOM, vulnerabilities), kept by
    digest pair so the approval screens do not ask the registry again; `before_digest` is empty when nothing ran."""

    before_digest = models.CharField(max_length=71, blank=True, default="")
    after_digest = models.CharField(max_length=71)
    result = models.JSONField(default=dict)
    computed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["before_digest", "after_digest"], name="image_diff_pair_unique")]

    def __str__(self) -> str:
        return f"{self.before_digest[:19] or 'nothing'} → {self.after_digest[:19]}"


class CheckResult(models.Model):
    """A named check on an artifact (functional, nft, integration, extended…); the latest report wins."""

    class Status(models.TextChoices):
        PASSED = "passed", "Passed"
        FAILED = "failed", "Failed"

    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="checks")
    name = models.SlugField(max_length=63, validators=[validate_check_name])
    status = models.CharField(max_length=8, choices=Status.choices)
    url = models.URLField(max_length=1024, blank=True, default="")
    reported_at = models.DateTimeField(default=timezone.now)
    reported_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["artifact", "name"], name="check_name_unique")]

    def __str__(self) -> str:
        return f"{self.name}: {self.status}"


class Promotion(models.Model):
    """A request to move one artifact, by digest, along one workflow step (or back, for a rollback)."""

    class State(models.TextChoices):
        PENDING_APPROVAL = "pending_approval", "Pending approval"
        # Has its approvals and waits for its moment: a `not_before` time, a freeze window, the emergency stop.
        APPROVED = "approved", "Approved, waiting"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        REJECTED = "rejected", "Rejected"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired"

    class Kind(models.TextChoices):
        PROMOTION = "promotion", "Promotion"
        ROLLBACK = "rollback", "Rollback"

    # Named groups of states: services, selectors, templates and the API use these, never lists of their own.
    OPEN = (State.PENDING_APPROVAL, State.APPROVED, State.QUEUED, State.RUNNING)  # at most one per artifact and bucket
    # Nothing has been copied yet, or a running copy is asked to stop; it can no longer be once it has gone to write
    # the tag (result_digest set).
    CANCELLABLE = (State.PENDING_APPROVAL, State.APPROVED, State.QUEUED, State.RUNNING)
    RUNNABLE = (State.QUEUED,)  # what a copy job may claim
    ACTIVE = (State.QUEUED, State.RUNNING)  # a job carries it now: pages poll it
    FINAL = (State.SUCCEEDED, State.FAILED, State.REJECTED, State.CANCELLED, State.EXPIRED)

    integration = models.ForeignKey(Integration, on_delete=models.CASCADE, related_name="promotions")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.PROMOTION)
    step = models.ForeignKey(WorkflowStep, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    artifact = models.ForeignKey(Artifact, on_delete=models.PROTECT, related_name="promotions")
    digest = models.CharField(max_length=71, validators=[validate_digest])
    from_bucket = models.ForeignKey(Bucket, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    to_bucket = models.ForeignKey(Bucket, on_delete=models.PROTECT, related_name="incoming_promotions")
    source_tag = models.CharField(max_length=128, blank=True, default="")
    tag = models.CharField(max_length=128, validators=[validate_tag])
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING_APPROVAL)
    required_approvals = models.PositiveIntegerField(default=0)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_label = models.CharField(max_length=150, blank=True, default="")
    # The person a CI token's request counts as (its owner, or the maker of a system token): four-eyes bars them
    # from approving, as it bars `requested_by`.
    on_behalf_of = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The CI job behind a request made with an exchanged token (issuer, subject, repository, ref, run id…); empty
    # otherwise.
    ci_identity = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True, default="")
    freeze_override_reason = models.TextField(blank=True, default="")
    # The copy starts no earlier than this (approvals may be given before); None means as soon as it may.
    not_before = models.DateTimeField(null=True, blank=True)
    # Why an approved promotion is not queued yet, in words (empty when it is not waiting).
    waiting_for = models.TextField(blank=True, default="")
    # When the approvers were last reminded that it waits for them.
    reminded_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    job_id = models.CharField(max_length=64, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    blobs_total = models.PositiveIntegerField(default=0)
    blobs_done = models.PositiveIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    log = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    result_digest = models.CharField(max_length=71, blank=True, default="")
    attachments = models.JSONField(default=list, blank=True)  # those that landed: [{digest, artifact_type, kind}]
    warnings = models.JSONField(default=list, blank=True)  # what did not travel, and why
    # The signature check that let it through: {"message", "key"|"identity", …}; empty when none was required.
    signature = models.JSONField(default=dict, blank=True)
    # The signed in-toto statement attached at the destination on success: {digest, predicate_type, key_id}, or
    # {error} when it could not be written; empty when the portal has no evidence key.
    evidence = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["state", "created_at"], name="promotion_state_idx"),
            models.Index(fields=["to_bucket", "state"], name="promotion_target_state_idx"),
            models.Index(fields=["integration", "-created_at"], name="promotion_integration_idx"),
        ]
        permissions = [
            ("request_promotion", "Can request promotions and rollbacks"),
            ("approve_promotion", "Can approve or reject promotions"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.artifact.short_digest} → {self.to_bucket.env} ({self.state})"

    @property
    def is_cancellable(self) -> bool:
        return self.state in self.CANCELLABLE

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE

    @property
    def is_final(self) -> bool:
        return self.state in self.FINAL

    @classmethod
    def progress_steps(cls) -> list[tuple[str, str]]:
        """The states a promotion passes through on its way to success, for the progress strip."""
        return [(state, label) for state, label in cls.State.choices if state in (*cls.OPEN, cls.State.SUCCEEDED)]

    @property
    def approvals_given(self) -> int:
        """The approvals that count so far: of this very digest, by distinct people."""
        approvals = self.approvals.filter(decision=Approval.Decision.APPROVE, digest=self.digest)
        return approvals.values("user").distinct().count()


class Approval(models.Model):
    """One person's decision on a promotion, bound to the digest they saw."""

    class Decision(models.TextChoices):
        APPROVE = "approve", "Approve"
        REJECT = "reject", "Reject"

    promotion = models.ForeignKey(Promotion, on_delete=models.CASCADE, related_name="approvals")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=8, choices=Decision.choices)
    digest = models.CharField(max_length=71, validators=[validate_digest])
    comment = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["promotion", "user"], name="one_decision_per_person")]

    def __str__(self) -> str:
        return f"{self.user} {self.decision}d #{self.promotion_id}"


class FreezeWindow(models.Model):
    """A time range during which promotions are blocked (`deny`), or outside of which they are (`allow`).

    One-off windows have a start and an end. Recurring ones have an RFC 5545 rule (`rrule`, read with
    python-dateutil) whose occurrences last `duration` in wall-clock time of `time_zone`; the rule counts from
    `starts_at` when given, else from the beginning of time. A window applies to the promotions matching every
    selector it names (environments, integrations, teams); one naming none applies everywhere.
    """

    class Kind(models.TextChoices):
        DENY = "deny", "Deny: no promotions inside"
        ALLOW = "allow", "Allow: promotions only inside"

    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.DENY)
    environments = models.JSONField(default=list, blank=True)
    integrations = models.JSONField(default=list, blank=True)
    teams = models.JSONField(default=list, blank=True)
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    rrule = models.CharField(max_length=500, blank=True, default="")
    duration = models.DurationField(null=True, blank=True)
    time_zone = models.CharField(max_length=64, blank=True, default="UTC")
    # Windows the config file defines are kept in step with it by name; the others come from the UI.
    from_config = models.BooleanField(default=False)
    reason = models.TextField(blank=True, default="")
    created_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-starts_at"]
        indexes = [models.Index(fields=["starts_at", "ends_at"], name="freeze_window_time_idx")]
        constraints = [
            models.CheckConstraint(condition=Q(ends_at__gt=models.F("starts_at")), name="freeze_ends_after_start"),
            # One-off windows have both ends; recurring ones a rule and a duration.
            models.CheckConstraint(
                condition=(Q(rrule="", starts_at__isnull=False, ends_at__isnull=False))
                | (~Q(rrule="") & Q(duration__isnull=False, ends_at__isnull=True)),
                name="freeze_one_off_or_recurring",
            ),
            models.UniqueConstraint(fields=["name"], condition=Q(from_config=True), name="freeze_config_name_unique"),
        ]
        permissions = [("override_freezewindow", "Can promote through an active freeze window, with a reason")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_recurring(self) -> bool:
        return bool(self.rrule)

    def is_active(self, at=None) -> bool:
        """Whether a one-off window covers `at` (now by default); services/freeze.py answers for recurring ones."""
        at = at or timezone.now()
        return not self.is_recurring and self.starts_at <= at < self.ends_at


class EmergencyStop(models.Model):
    """The emergency stop, pulled and released: while one has no `ended_at`, no promotion is queued or started
    (copies already running finish)."""

    reason = models.TextField()
    started_by = models.CharField(max_length=150)
    started_at = models.DateTimeField(default=timezone.now)
    ended_by = models.CharField(max_length=150, blank=True, default="")
    ended_at = models.DateTimeField(null=True, blank=True)
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["active"], condition=Q(active=True), name="one_emergency_stop_at_a_time")
        ]
        permissions = [("use_emergency_stop", "Can stop and resume every promotion")]

    def __str__(self) -> str:
        return f"stop by {self.started_by} at {self.started_at:%Y-%m-%d %H:%M}"


class AuditEntry(models.Model):
    """An append-only, hash-chained record of who did what, when.

    hash = sha256(canonical bytes of the entry ‖ previous hash); see services/audit.py. On PostgreSQL a trigger
    refuses UPDATE, DELETE and TRUNCATE.
    """

    id = models.BigAutoField(primary_key=True)
    timestamp = models.DateTimeField()
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64, blank=True, default="")
    object_id = models.CharField(max_length=64, blank=True, default="")
    object_repr = models.CharField(max_length=255, blank=True, default="")
    integration = models.CharField(max_length=63, blank=True, default="")
    environment = models.CharField(max_length=63, blank=True, default="")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    request_id = models.CharField(max_length=64, blank=True, default="")
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["timestamp"], name="audit_time_idx"),
            models.Index(fields=["actor", "-id"], name="audit_actor_idx"),
            models.Index(fields=["integration", "-id"], name="audit_integration_idx"),
            models.Index(fields=["action", "-id"], name="audit_action_idx"),
            # One object's history (a promotion's timeline) without scanning the log.
            models.Index(fields=["object_type", "object_id", "-id"], name="audit_object_idx"),
        ]
        permissions = [("export_auditentry", "Can export and verify the audit log")]

    def __str__(self) -> str:
        return f"{self.timestamp:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_repr}"


class ApiToken(models.Model):
    """A CI token (scoped to integrations) or a personal token (acting as its user).

    A CI token has an owner, the person who answers for it: it never has more rights than its owner has now, it stops
    working when its owner is deactivated, and its owner counts as the requester of what it requests. A system token
    has no owner; what it requests needs two approvers where four-eyes applies, unless it was exchanged for the ID
    token of a CI run whose triggering person is known (`triggered_by`), who then counts as the requester. Only a
    peppered HMAC of the secret is stored; see services/tokens.py for the format.
    """

    class Kind(models.TextChoices):
        CI = "ci", "CI token"
        PERSONAL = "personal", "Personal token"

    key_id = models.CharField(max_length=16, unique=True)
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="api_tokens"
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="owned_ci_tokens"
    )
    # The person who made the token in the portal; None when a management command made it.
    made_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    integrations = models.ManyToManyField(Integration, blank=True, related_name="tokens")
    scopes = models.JSONField(default=list)
    # A token exchanged for a CI job's OIDC ID token: the job's identity (issuer, subject, the claims that matched),
    # and the person who triggered the run when its `actor` claim names one, who counts as the requester.
    ci_identity = models.JSONField(default=dict, blank=True)
    triggered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    secret_hash = models.CharField(max_length=64, editable=False)
    pepper_id = models.CharField(max_length=32, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.CharField(max_length=150, blank=True, default="")
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(kind="ci") | Q(user__isnull=False), name="personal_token_has_user"),
            models.CheckConstraint(condition=Q(kind="ci") | Q(owner__isnull=True), name="personal_token_has_no_owner"),
        ]
        permissions = [("add_ci_token", "Can create CI tokens (platform admins by default)")]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind}, p2p_{self.key_id}…)"

    @property
    def is_ci(self) -> bool:
        """A CI token (scoped to integrations), as opposed to a personal one (acting as its user)."""
        return self.kind == self.Kind.CI

    @property
    def is_active(self) -> bool:
        now = timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class IdempotencyRecord(models.Model):
    """The stored response of a POST made with an Idempotency-Key, per token, kept for 24 hours."""

    token = models.ForeignKey(ApiToken, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    request_fingerprint = models.CharField(max_length=64)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["token", "key"], name="idempotency_key_unique")]

    def __str__(self) -> str:
        return f"{self.key} ({self.response_status or 'in flight'})"


class ImportJob(models.Model):
    """The database row of one import: a copy from an outside build registry into an integration's first bucket.

    Like a promotion, it mirrors its RQ job (`job_id`); the UI and API read this row, never Redis.
    """

    class State(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    RUNNABLE = (State.QUEUED,)
    OPEN = (State.QUEUED, State.RUNNING)
    kind = "import"  # what the API's job answers call it

    integration = models.ForeignKey(
        Integration, null=True, blank=True, on_delete=models.CASCADE, related_name="import_jobs"
    )
    state = models.CharField(max_length=12, choices=State.choices, default=State.QUEUED)
    arguments = models.JSONField(default=dict, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    job_id = models.CharField(max_length=64, blank=True, default="")
    # Runs started (each claim by a worker counts one); the reconciler fails the import once P2P_IMPORT_MAX_ATTEMPTS
    # runs have died, instead of running it again.
    attempts = models.PositiveIntegerField(default=0)
    created_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "created_at"], name="job_state_idx")]

    def __str__(self) -> str:
        return f"import #{self.pk} ({self.state})"


class Webhook(models.Model):
    """An outgoing notification endpoint, signed with a secret (stored encrypted): an integration's, or system-wide
    (no integration, from the config file's `notifications:` section, by name)."""

    EVENTS = [
        "requested",
        "approval_needed",
        "approved",
        "rejected",
        "succeeded",
        "failed",
        "rolled_back",
        "expired",
        "stopped",
    ]

    class Format(models.TextChoices):
        JSON = "json", "JSON"
        SLACK = "slack", "Slack (Block Kit)"
        TEAMS = "teams", "Microsoft Teams (Adaptive Card)"

    integration = models.ForeignKey(
        Integration, null=True, blank=True, on_delete=models.CASCADE, related_name="webhooks"
    )
    name = models.CharField(max_length=63, blank=True, default="")
    format = models.CharField(max_length=8, choices=Format.choices, default=Format.JSON)
    url = models.URLField(max_length=1024)
    secret_encrypted = models.TextField(editable=False)
    events = models.JSONField(default=list, blank=True)  # empty means every event
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["integration", "id"]
        constraints = [
            models.UniqueConstraint(fields=["name"], condition=Q(integration__isnull=True), name="system_webhook_name")
        ]

    def __str__(self) -> str:
        return f"{self.integration.name if self.integration_id else self.name or 'system'} → {self.url}"

    def set_secret(self, secret: str) -> None:
        self.secret_encrypted = encrypt_json({"secret": secret})

    def get_secret(self) -> str:
        return decrypt_json(self.secret_encrypted)["secret"]

    def wants(self, event: str) -> bool:
        return not self.events or event in self.events


class WebhookDelivery(models.Model):
    """One delivery of one event to one webhook, with every attempt's outcome."""

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=32)
    payload = models.JSONField()
    attempts = models.PositiveIntegerField(default=0)
    response_status = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    # The RQ job carrying it, and when its retries ran out: open = neither delivered nor given up.
    job_id = models.CharField(max_length=64, blank=True, default="")
    given_up_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(
                fields=["created_at"],
                name="webhookdelivery_open",
                condition=Q(delivered_at__isnull=True, given_up_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"{self.event} → webhook {self.webhook_id} ({self.response_status or self.error[:40] or 'pending'})"


class NotificationPreference(models.Model):
    """The kinds of email a person turned off (every kind is on until they do)."""

    KINDS = ["approval_needed", "reminder", "succeeded", "failed", "rejected", "expired"]

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_preference"
    )
    muted = models.JSONField(default=list, blank=True)

    def __str__(self) -> str:
        return f"{self.user}: muted {', '.join(self.muted) or 'nothing'}"


class EmailNotification(models.Model):
    """One email about a promotion to the people it concerns (its approvers, or its requester), sent by an RQ job
    with retries. The first attempt finds the recipients; each address is sent to once, even across retries."""

    promotion = models.ForeignKey(Promotion, on_delete=models.CASCADE, related_name="emails")
    kind = models.CharField(max_length=32)  # one of NotificationPreference.KINDS
    recipients = models.JSONField(null=True, blank=True)  # None until the first attempt found them
    sent_to = models.JSONField(default=list, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    delivered_at = models.DateTimeField(null=True, blank=True)
    job_id = models.CharField(max_length=64, blank=True, default="")
    given_up_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(
                fields=["created_at"],
                name="emailnotification_open",
                condition=Q(delivered_at__isnull=True, given_up_at__isnull=True),
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} email about promotion {self.promotion_id} ({'sent' if self.delivered_at else 'open'})"
