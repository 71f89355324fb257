"""Input and output shapes of API v1. Inputs check form (types, lengths, characters) and name the field; the
services check meaning (does the bucket exist, does policy allow it)."""

from __future__ import annotations

from collections.abc import Mapping

from django.core.validators import RegexValidator
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ci_integrations.input_rules import (
    CHECK_NAME,
    DIGEST,
    FILLED_LINE_PATTERN,
    HTTP_URL,
    IMAGE_SOURCE,
    LABEL_NAME,
    LINE_PATTERN,
    NAME,
    TAG,
    TEXT_PATTERN,
    InputRule,
    control_character,
    control_character_problem,
)
from ci_integrations.models import CheckResult

LOG_TAIL_LINES = 50
MAX_LABELS = 50


class PrintableValidator(RegexValidator):
    """Free text: no control characters (tabs and line breaks allowed in multi-line text), and, when `filled`, not
    blank. A RegexValidator, so the schema states the same pattern."""

    def __init__(self, *, multiline: bool = False, filled: bool = False):
        pattern = TEXT_PATTERN if multiline else FILLED_LINE_PATTERN if filled else LINE_PATTERN
        super().__init__(regex=rf"\A(?:{pattern})\Z")
        self.multiline = multiline

    def __call__(self, value) -> None:
        if (char := control_character(value, multiline=self.multiline)) is not None:
            raise serializers.ValidationError(control_character_problem(char))
        if not self.regex.search(value):  # only a value of spaces fails once the control characters are out
            raise serializers.ValidationError("may not be blank")


class RuleValidator(RegexValidator):
    """One input rule of input_rules.py (which refuses control characters too). A RegexValidator, so the schema
    states the rule's own pattern; `word` names the value where the rule's word is too vague."""

    def __init__(self, rule: InputRule, word: str | None = None):
        super().__init__(regex=rf"\A(?:{rule.pattern})\Z")
        self.rule, self.word = rule, word

    def __call__(self, value) -> None:
        if (char := control_character(value)) is not None:
            raise serializers.ValidationError(control_character_problem(char))
        if not self.rule.is_valid(value):
            raise serializers.ValidationError(self.rule.problem(value, word=self.word))


valid_name = RuleValidator(NAME)
valid_environment = RuleValidator(NAME, "environment")
valid_tag = RuleValidator(TAG)
valid_digest = RuleValidator(DIGEST)
valid_check_name = RuleValidator(CHECK_NAME)
valid_http_url = RuleValidator(HTTP_URL)
valid_image_source = RuleValidator(IMAGE_SOURCE)


class ExactText(serializers.CharField):
    """Text checked as it was sent: a JSON string (a number is not text), its length and characters tested before
    it is trimmed, so the schema's maxLength and pattern describe the value on the wire. Values checked by an input
    rule are never trimmed: the rule says what a valid one is."""

    def __init__(self, *, trim: bool = True, **kwargs):
        super().__init__(trim_whitespace=False, **kwargs)
        self.trim = trim

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return data

    def run_validation(self, data=serializers.empty):
        value = super().run_validation(data)
        return value.strip() if self.trim and isinstance(value, str) else value


@extend_schema_field({"type": "string", "format": "date-time"})
class DateTimeText(ExactText):
    """An RFC 3339 date-time kept as the text CI sent (input_rules.parse_rfc3339 reads it)."""

    def __init__(self, **kwargs):
        super().__init__(trim=False, **kwargs)


def Line(*, max_length: int, required: bool = True, validators=(), **kwargs) -> serializers.CharField:  # noqa: N802
    """A one-line text field: bounded, no control characters; trimmed unless an input rule (valid_tag, …) checks it."""
    validators = list(validators)
    ruled = any(isinstance(v, RuleValidator) for v in validators)
    if not ruled:
        validators.insert(0, PrintableValidator(filled=not kwargs.get("allow_blank", False)))
    return ExactText(max_length=max_length, required=required, validators=validators, trim=not ruled, **kwargs)


def Text(*, max_length: int = 4000, **kwargs) -> serializers.CharField:  # noqa: N802
    """A multi-line text field (reasons, comments): optional, bounded, tabs and line breaks allowed, trimmed."""
    return ExactText(
        max_length=max_length,
        required=False,
        allow_blank=True,
        default="",
        validators=[PrintableValidator(multiline=True)],
        **kwargs,
    )


def Url(**kwargs) -> serializers.CharField:  # noqa: N802
    """An optional http(s) URL (input_rules.HTTP_URL); empty means none."""
    return ExactText(
        max_length=HTTP_URL.max_length,
        required=False,
        allow_blank=True,
        default="",
        validators=[valid_http_url],
        trim=False,
        **kwargs,
    )


class StrictInput(serializers.Serializer):
    """A JSON request body: keys it does not define are refused with a 400 naming them, and the schema says
    `additionalProperties: false` (see api/schema.py). Query-string serializers stay plain Serializers."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({key: "unknown field" for key in unknown})
        return super().to_internal_value(data)


class QueryIn(serializers.Serializer):
    """Query-string parameters: a parameter given empty (`?tag=`) is refused unless empty means something for it,
    so `?tag=` never silently searches every tag. Parameters it does not define (cursor, limit) pass by."""

    def to_internal_value(self, data):
        empty = sorted(
            name
            for name, field in self.fields.items()
            if data.get(name) == "" and not getattr(field, "allow_blank", False)
        )
        if empty:
            raise serializers.ValidationError({name: "give a value, or leave the parameter out" for name in empty})
        return super().to_internal_value(data)


MAX_LABEL_VALUE = 255


@extend_schema_field(
    {
        "type": "object",
        "maxProperties": MAX_LABELS,
        # Label names as patternProperties (valid in OpenAPI 3.0 and 3.1); any other name is refused.
        "patternProperties": {
            LABEL_NAME.anchored_pattern: {
                "type": "string",
                "maxLength": MAX_LABEL_VALUE,
                "pattern": f"^(?:{LINE_PATTERN})$",
            }
        },
        "additionalProperties": False,
    }
)
class LabelsField(serializers.DictField):
    """Labels: at most 50, each name 1 to 63 printable characters, each value one line of at most 255."""

    def __init__(self, **kwargs):
        super().__init__(child=Line(max_length=MAX_LABEL_VALUE, allow_blank=True), **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if len(value) > MAX_LABELS:
            raise serializers.ValidationError(f"at most {MAX_LABELS} labels")
        for key in value:
            if not LABEL_NAME.is_valid(key):
                raise serializers.ValidationError(LABEL_NAME.problem(key[:70]))
        return value


class ChangelogEntryIn(StrictInput):
    sha = Line(max_length=64)
    title = Line(max_length=500, required=False, allow_blank=True)
    author = Line(max_length=255, required=False, allow_blank=True)


class ChangelogOut(serializers.Serializer):
    sha = serializers.CharField()
    title = serializers.CharField()
    author = serializers.CharField()


class MetadataIn(StrictInput):
    git_sha = Line(max_length=64, required=False, allow_blank=True)
    branch = Line(max_length=255, required=False, allow_blank=True)
    build_url = Url()
    labels = LabelsField(required=False)
    # An RFC 3339 date-time; the service checks and normalises it (lead time in insights starts here).
    commit_time = DateTimeText(required=False)
    repo_url = serializers.URLField(
        max_length=1024, required=False, allow_blank=True, help_text="the source repository; the diff links commits"
    )
    changelog = ChangelogEntryIn(many=True, required=False, max_length=500, help_text="commits this build adds")


# --- integrations -----------------------------------------------------------------------------------------------


class CurrentArrivalOut(serializers.Serializer):
    artifact = serializers.IntegerField(source="artifact_id")
    digest = serializers.CharField(source="artifact.digest")
    tag = serializers.CharField()
    how = serializers.CharField()
    arrived_at = serializers.DateTimeField()
    arrived_by = serializers.CharField()


class BucketOut(serializers.Serializer):
    env = serializers.CharField()
    position = serializers.IntegerField()
    registry = serializers.CharField(source="registry.name")
    repository = serializers.CharField()
    image = serializers.CharField(source="image_name")
    immutable_tags = serializers.BooleanField()
    allow_push_credentials = serializers.BooleanField()
    allow_direct_register = serializers.BooleanField()
    current = CurrentArrivalOut(source="current_arrival", allow_null=True)


class IntegrationOut(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.CharField()
    workflow = serializers.CharField(source="workflow.name", allow_null=True, default=None)
    description = serializers.CharField()
    buckets = BucketOut(many=True)


# --- artifacts ----------------------------------------------------------------------------------------------------


class RegisterIn(StrictInput):
    env = Line(max_length=63, validators=[valid_environment])
    tag = Line(max_length=128, validators=[valid_tag])
    digest = Line(max_length=71, required=False, allow_null=True, validators=[valid_digest])
    metadata = MetadataIn(required=False, allow_null=True)


class CheckOut(serializers.Serializer):
    artifact = serializers.IntegerField(source="artifact_id")
    name = serializers.CharField()
    status = serializers.CharField()
    url = serializers.CharField()
    reported_at = serializers.DateTimeField()
    reported_by = serializers.CharField()


class ArrivalOut(serializers.Serializer):
    id = serializers.IntegerField()
    env = serializers.CharField(source="bucket.env")
    tag = serializers.CharField()
    how = serializers.CharField()
    arrived_at = serializers.DateTimeField()
    arrived_by = serializers.CharField()


class ArtifactOut(serializers.Serializer):
    id = serializers.IntegerField()
    integration = serializers.CharField(source="integration.name")
    digest = serializers.CharField()
    media_type = serializers.CharField()
    size = serializers.IntegerField(allow_null=True)
    git_sha = serializers.CharField()
    branch = serializers.CharField()
    build_url = serializers.CharField()
    labels = serializers.DictField(child=serializers.CharField())
    repo_url = serializers.CharField()
    changelog = ChangelogOut(many=True, help_text="the commits CI said this build adds")
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField()
    checks = CheckOut(many=True)
    arrivals = ArrivalOut(many=True)


class RegisterOut(serializers.Serializer):
    id = serializers.IntegerField()
    digest = serializers.CharField()
    integration = serializers.CharField()
    env = serializers.CharField()
    tag = serializers.CharField()
    created = serializers.BooleanField()
    arrival = serializers.IntegerField()
    arrived_at = serializers.DateTimeField()


class ArtifactSearchIn(QueryIn):
    env = Line(max_length=63, required=False, validators=[valid_environment])
    tag = Line(max_length=128, required=False, validators=[valid_tag])
    digest = Line(max_length=71, required=False, validators=[valid_digest])


class SourceCredentialsIn(StrictInput):
    """The build registry's user and password for one import; never stored."""

    username = Line(max_length=4096, required=False, allow_blank=True)
    password = Line(max_length=4096, required=False, allow_blank=True)


class ImportIn(StrictInput):
    source = Line(
        max_length=IMAGE_SOURCE.max_length,
        validators=[valid_image_source],
        help_text="host/repository:tag or host/repository@sha256:…",
    )
    source_credentials = SourceCredentialsIn(required=False, allow_null=True)
    tag = Line(max_length=128, required=False, allow_null=True, validators=[valid_tag])
    metadata = MetadataIn(required=False, allow_null=True)


class JobOut(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    state = serializers.CharField()
    integration = serializers.CharField(source="integration.name", allow_null=True, default=None)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField()
    result = serializers.JSONField(help_text="once it succeeded: digest and artifact; else null")
    url = serializers.SerializerMethodField()

    def get_url(self, job) -> str:
        return f"/api/v1/jobs/{job.pk}/"


class CheckIn(StrictInput):
    name = Line(max_length=63, validators=[valid_check_name])  # the rule a step's required_checks use
    status = serializers.ChoiceField(choices=CheckResult.Status.values)
    url = Url()


# --- promotions ---------------------------------------------------------------------------------------------------


class OffsetDateTime(serializers.DateTimeField):
    """An ISO 8601 date-time that must carry its UTC offset: a bare local time would be read in the server's zone,
    which is never what the caller meant."""

    def enforce_timezone(self, value):
        if timezone.is_naive(value):
            raise serializers.ValidationError("give the time with its UTC offset, like 2027-01-05T09:00+01:00")
        return super().enforce_timezone(value)


class PromotionIn(StrictInput):
    integration = Line(max_length=63, validators=[valid_name])
    artifact = Line(max_length=128, help_text="artifact id, digest (sha256:…) or tag")
    to_env = Line(max_length=63, validators=[valid_environment])
    from_env = Line(
        max_length=63,
        required=False,
        validators=[valid_environment],
        help_text="where to look the tag up (corectl's source stage)",
    )
    tag = Line(
        max_length=128, required=False, validators=[valid_tag], help_text="tag in the target; default: the source's"
    )
    reason = Text()
    freeze_override_reason = Text()
    not_before = OffsetDateTime(
        required=False,
        help_text="start the copy no earlier than this (with its UTC offset); approvals may be given before",
    )


class ApprovalOut(serializers.Serializer):
    user = serializers.CharField(source="user.username")
    decision = serializers.CharField()
    digest = serializers.CharField()
    comment = serializers.CharField()
    created_at = serializers.DateTimeField()


class ProgressOut(serializers.Serializer):
    blobs_total = serializers.IntegerField()
    blobs_done = serializers.IntegerField()
    bytes_total = serializers.IntegerField()
    bytes_done = serializers.IntegerField()


class AttachmentOut(serializers.Serializer):
    digest = serializers.CharField()
    artifact_type = serializers.CharField()
    kind = serializers.ChoiceField(choices=["signature", "sbom", "attestation", "other"])
    tag = serializers.CharField(required=False, help_text="the cosign tag it travelled under, if any")


class SignatureOut(serializers.Serializer):
    verified = serializers.BooleanField()
    message = serializers.CharField()
    key_id = serializers.CharField(required=False)
    key_name = serializers.CharField(required=False)
    signature = serializers.CharField(required=False, help_text="digest of the signature manifest that verified")
    identity = serializers.CharField(required=False, help_text="keyless: the certificate's subject (issuer)")


class EvidenceOut(serializers.Serializer):
    predicate_type = serializers.CharField()
    attestation = serializers.CharField(required=False, help_text="digest of the cosign .att manifest written")
    key_id = serializers.CharField(required=False, help_text="sha256 of the portal's evidence public key (DER)")
    error = serializers.CharField(required=False, help_text="why it could not be attached")


class PromotionOut(serializers.Serializer):
    id = serializers.IntegerField()
    state = serializers.CharField()
    kind = serializers.CharField()
    integration = serializers.CharField(source="integration.name")
    artifact = serializers.IntegerField(source="artifact_id")
    digest = serializers.CharField()
    from_env = serializers.CharField(source="from_bucket.env", allow_null=True, default=None)
    to_env = serializers.CharField(source="to_bucket.env")
    source_tag = serializers.CharField()
    tag = serializers.CharField()
    required_approvals = serializers.IntegerField()
    approvals = ApprovalOut(many=True)
    requested_by = serializers.CharField(source="requested_by_label")
    ci_identity = serializers.JSONField(help_text="the CI job behind an exchanged token: issuer, subject, claims")
    reason = serializers.CharField()
    progress = serializers.SerializerMethodField()
    log_tail = serializers.SerializerMethodField()
    error = serializers.CharField()
    not_before = serializers.DateTimeField(allow_null=True, help_text="the copy starts no earlier than this")
    waiting_for = serializers.CharField(help_text="why an approved promotion is not queued yet (empty otherwise)")
    result_digest = serializers.CharField()
    attachments = AttachmentOut(many=True, help_text="signatures, SBOMs and attestations that travelled with it")
    warnings = serializers.ListField(child=serializers.CharField(), help_text="what did not travel, and why")
    signature = serializers.SerializerMethodField(help_text="the signature check, when the step requires one")
    evidence = serializers.SerializerMethodField(help_text="the signed in-toto statement attached on success")
    attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    final = serializers.BooleanField(source="is_final")

    @extend_schema_field(SignatureOut(allow_null=True))
    def get_signature(self, promotion) -> dict | None:
        return SignatureOut(promotion.signature).data if promotion.signature else None

    @extend_schema_field(EvidenceOut(allow_null=True))
    def get_evidence(self, promotion) -> dict | None:
        return EvidenceOut(promotion.evidence).data if promotion.evidence else None

    def get_progress(self, promotion) -> ProgressOut:
        return ProgressOut(promotion).data

    def get_log_tail(self, promotion) -> list[str]:
        return promotion.log.splitlines()[-LOG_TAIL_LINES:]


class CommentIn(StrictInput):
    comment = Text()


class RollbackIn(StrictInput):
    env = Line(max_length=63, validators=[valid_environment])
    to = Line(max_length=71, help_text="artifact id or digest to return the bucket to")
    reason = Line(max_length=2000)
    freeze_override_reason = Text(help_text="roll back through an active freeze window (needs override_freezewindow)")


class PushCredentialsIn(StrictInput):
    env = Line(max_length=63, validators=[valid_environment])


class PushCredentialsOut(serializers.Serializer):
    """Credentials for the bucket's repository only. type "bearer": send `token` as a Bearer token; type "basic":
    `docker login` with username and password (ECR, Artifact Registry)."""

    registry = serializers.CharField()
    type = serializers.ChoiceField(choices=["bearer", "basic"])
    username = serializers.CharField(allow_null=True)
    password = serializers.CharField(allow_null=True)
    token = serializers.CharField(allow_null=True)
    scope = serializers.CharField(help_text="what the credentials reach: a token scope, or the repository's ARN")
    expires_at = serializers.CharField()
    repository = serializers.CharField()
    image = serializers.CharField()


# --- audit ----------------------------------------------------------------------------------------------------------


class AuditQueryIn(QueryIn):
    integration = Line(max_length=63, required=False, validators=[valid_name])
    environment = Line(max_length=63, required=False, validators=[valid_environment])
    actor = Line(max_length=150, required=False)
    action = Line(max_length=64, required=False)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)


class AuditEntryOut(serializers.Serializer):
    id = serializers.IntegerField()
    timestamp = serializers.DateTimeField()
    actor = serializers.CharField()
    action = serializers.CharField()
    object_type = serializers.CharField()
    object_id = serializers.CharField()
    object_repr = serializers.CharField()
    integration = serializers.CharField()
    environment = serializers.CharField()
    before = serializers.JSONField(help_text="the object before the change, or null")
    after = serializers.JSONField(help_text="the object after the change, or null")
    reason = serializers.CharField()
    request_id = serializers.CharField()
    prev_hash = serializers.CharField()
    hash = serializers.CharField()


class AuditCheckpointOut(serializers.Serializer):
    type = serializers.CharField()
    version = serializers.IntegerField()
    entry_id = serializers.IntegerField()
    entries = serializers.IntegerField()
    head = serializers.CharField()
    signed_at = serializers.CharField()
    key_id = serializers.CharField()
    signature = serializers.CharField()


class AuditVerifyOut(serializers.Serializer):
    ok = serializers.BooleanField(allow_null=True, help_text="null: not verified yet (see scope and queued)")
    entries = serializers.IntegerField(allow_null=True)
    head = serializers.CharField(allow_null=True)
    broken_id = serializers.IntegerField(allow_null=True)
    problem = serializers.CharField()
    scope = serializers.ChoiceField(
        ["whole_chain", "since_checkpoint", "last_background_run"],
        help_text="what ok describes: the whole chain walked now, the entries after `checkpoint` walked now, or the "
        "last background run (the unverified tail was too long to walk in a request)",
    )
    checkpoint = AuditCheckpointOut(allow_null=True, help_text="the newest valid signed checkpoint the walk began at")
    public_key = serializers.CharField(allow_null=True, help_text="the Ed25519 key checkpoints are signed with")
    queued = serializers.BooleanField(help_text="a background verification of the whole chain was queued")
    verified_at = serializers.CharField(allow_null=True, help_text="when the last background run finished")


# --- CI's OIDC token exchange ---------------------------------------------------------------------------------------


class OidcExchangeIn(StrictInput):
    token = Line(max_length=16384, help_text="the CI job's OIDC ID token (a JWT)")


class OidcExchangeOut(serializers.Serializer):
    """A short-lived CI token: shown once, scoped to the integrations whose CI identities the ID token matched."""

    token = serializers.CharField(help_text="p2p_…: send it as `Authorization: Bearer <token>`")
    expires_at = serializers.DateTimeField()
    integrations = serializers.ListField(child=serializers.CharField())
    scopes = serializers.ListField(child=serializers.CharField())


class ErrorBody(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.JSONField()


class ErrorOut(serializers.Serializer):
    error = ErrorBody()


class StopIn(StrictInput):
    reason = Line(max_length=1000, help_text="why every promotion stops (shown on every page)")


class StopOut(serializers.Serializer):
    active = serializers.BooleanField()
    reason = serializers.CharField()
    started_by = serializers.CharField()
    started_at = serializers.DateTimeField()
    ended_by = serializers.CharField()
    ended_at = serializers.DateTimeField(allow_null=True)
