"""Read-side queries shared by the UI and the API.

Visibility rule, applied to every read of the UI and the API: an integration a CI token was not given does not exist
for it (the API answers 404, for reads and writes alike), so a token cannot probe for other teams' integrations.
People, and their personal tokens, see the integrations of their teams and those no team owns; auditors, platform
admins and superusers see all (services/teams.py).

Every selector runs a fixed number of queries whatever the data size: the matrix reads the denormalised
Bucket.current_arrival, histories are bounded per bucket, and lists are keyset-paginated by id (never OFFSET, never a
COUNT of a filtered set).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Exists, F, OuterRef, Prefetch, Q, QuerySet, Subquery, Value, Window
from django.db.models.functions import Coalesce, RowNumber
from django.utils import timezone

from ci_integrations.input_rules import DIGEST
from ci_integrations.models import (
    ApiToken,
    Approval,
    Arrival,
    Artifact,
    AuditEntry,
    Bucket,
    CheckResult,
    FreezeWindow,
    ImportJob,
    Integration,
    Promotion,
    Team,
    WorkflowStep,
)
from ci_integrations.services.actors import Actor
from ci_integrations.services.errors import InvalidInput, NotFound
from ci_integrations.services.freeze import freeze_windows_upcoming
from ci_integrations.services.rows import columns, fetch_one, table
from ci_integrations.services.teams import (
    ROLE_RELEASE_MANAGERS,
    has_role,
    managed_team_ids_of,
    sees_every_team,
    team_ids_of,
    visible_integrations_q,
)

OVERVIEW_PAGE_SIZE = 100
HISTORY_PER_BUCKET = 10
ARTIFACTS_PER_PAGE = 20
AUDIT_PAGE_SIZE = 50
INBOX_PAGE_SIZE = 25
FAILED_RECENT_DAYS = 7


# --- overview ------------------------------------------------------------------------------------------------------


@dataclass
class MatrixCell:
    """One bucket in the matrix: what it runs and whether the environment before it holds something else."""

    bucket: Bucket
    arrival: Arrival | None
    newer_waits: bool = False


@dataclass
class MatrixRow:
    integration: Integration
    cells: dict[str, MatrixCell] = field(default_factory=dict)
    columns: list[MatrixCell | None] = field(default_factory=list)  # one per matrix environment, None for no bucket


@dataclass
class Matrix:
    environments: list[str]
    rows: list[MatrixRow]
    next_after: str | None  # the name to continue from, when there are more integrations


def integration_matrix(user, *, after: str = "", limit: int = OVERVIEW_PAGE_SIZE) -> Matrix:
    """The integrations `user` sees (keyset-paginated by name) × environments, each cell the bucket's current
    arrival. Two queries."""
    after = after.replace("\x00", "")  # a cursor from the query string; PostgreSQL text cannot hold NUL
    visible = Integration.objects.filter(visible_integrations_q(user))
    integrations = list(visible.filter(name__gt=after).order_by("name")[: limit + 1])
    more = len(integrations) > limit
    integrations = integrations[:limit]
    buckets = (
        Bucket.objects.filter(integration__in=[i.pk for i in integrations])
        .select_related("current_arrival__artifact")
        # Only what a cell shows: hundreds of cells, and every column loaded is converted (JSON parsed) per row.
        .only(
            "integration_id",
            "env",
            "position",
            "current_arrival__tag",
            "current_arrival__arrived_at",
            "current_arrival__artifact__digest",
        )
        .order_by("integration_id", "position", "env")
    )
    rows = {i.pk: MatrixRow(integration=i) for i in integrations}
    env_order: dict[str, tuple[int, int]] = {}
    previous_by_integration: dict[int, MatrixCell] = {}
    for bucket in buckets:
        arrival = bucket.current_arrival
        cell = MatrixCell(bucket=bucket, arrival=arrival)
        before = previous_by_integration.get(bucket.integration_id)
        if before is not None and before.arrival is not None:
            cell.newer_waits = arrival is None or arrival.artifact.digest != before.arrival.artifact.digest
        previous_by_integration[bucket.integration_id] = cell
        rows[bucket.integration_id].cells[bucket.env] = cell
        rank = (bucket.position, len(env_order))
        env_order[bucket.env] = min(env_order.get(bucket.env, rank), rank)
    environments = sorted(env_order, key=lambda env: env_order[env])
    for row in rows.values():
        row.columns = [row.cells.get(env) for env in environments]
    return Matrix(
        environments=environments, rows=list(rows.values()), next_after=integrations[-1].name if more else None
    )


INBOX_RELATED = ("integration", "artifact", "from_bucket", "to_bucket__current_arrival__artifact", "step")


def approvals_waiting_for(user, *, limit: int = INBOX_PAGE_SIZE, related=INBOX_RELATED) -> list[Promotion]:
    """Promotions pending approval that this user could still decide on: not their own (unless the step allows
    self-approval), not already decided by them, and in their approver group when the step names one.

    `related`: what to load with each promotion (the inbox shows it all; a short list needs less, and every join
    costs query-building CPU).
    The service has the last word (promotion_approval_block); this is the list to show.
    """
    if not user.has_perm("ci_integrations.approve_promotion"):
        return []
    group_ids = [g.pk for g in user.groups.all()]
    by_group = Q(step__approver_group__isnull=True) | Q(step__approver_group__in=group_ids)
    # "@release_managers": the integration's team's release managers (for an integration no team owns: people
    # with the release-managers role).
    teamless = Q(integration__team__isnull=True) if has_role(user, ROLE_RELEASE_MANAGERS) else Q(pk__in=[])
    by_team = Q(step__approvers_from_team=True) & (Q(integration__team_id__in=managed_team_ids_of(user)) | teamless)
    return list(
        Promotion.objects.filter(state=Promotion.State.PENDING_APPROVAL)
        .filter(visible_integrations_q(user, "integration__"))
        # NOT EXISTS rather than .exclude(approvals__user=…): the same rows, without a reverse join whose planning
        # costs the overview more CPU than the database spends on it.
        .exclude(Exists(Approval.objects.filter(promotion=OuterRef("pk"), user=user)))
        .exclude(Q(requested_by=user) & ~Q(step__self_approval=True))
        .filter((Q(step__approvers_from_team=False) & by_group) | by_team)
        .select_related(*related)
        .order_by("created_at", "id")[:limit]
    )


def promotions_pending(user, *, limit: int = INBOX_PAGE_SIZE) -> list[Promotion]:
    """Every promotion pending approval that `user` can see, oldest first (for people who cannot decide on them)."""
    return list(
        Promotion.objects.filter(state=Promotion.State.PENDING_APPROVAL)
        .filter(visible_integrations_q(user, "integration__"))
        .select_related(*INBOX_RELATED)
        .order_by("created_at", "id")[:limit]
    )


def promotions_failed_recently(user, *, days: int = FAILED_RECENT_DAYS, limit: int = 10) -> list[Promotion]:
    since = timezone.now() - timedelta(days=days)
    return list(
        Promotion.objects.filter(state=Promotion.State.FAILED, created_at__gte=since)
        .filter(visible_integrations_q(user, "integration__"))
        .select_related("integration", "to_bucket")
        .order_by("-created_at", "-id")[:limit]
    )


# --- integration -----------------------------------------------------------------------------------------------------


@dataclass
class StepView:
    """One workflow step as the pipeline shows it, with the artifact it could take next."""

    step: WorkflowStep
    from_bucket: Bucket | None
    to_bucket: Bucket | None

    @property
    def candidate(self) -> Artifact | None:
        """The source's current artifact, when the target does not already run it."""
        source = self.from_bucket.current_arrival if self.from_bucket else None
        if source is None or self.to_bucket is None:
            return None
        target = self.to_bucket.current_arrival
        if target is not None and target.artifact_id == source.artifact_id:
            return None
        return source.artifact


@dataclass
class BucketView:
    bucket: Bucket
    history: list[Arrival]
    outgoing: StepView | None = None


@dataclass
class IntegrationDetail:
    integration: Integration
    buckets: list[BucketView]
    steps: list[StepView]
    artifacts: list[Artifact]
    artifacts_next_before: int | None
    promotions: list[Promotion]


def _arrival_histories(bucket_ids: list[int], per_bucket: int) -> dict[int, list[Arrival]]:
    """The latest arrivals of each bucket, in one query (index arrival_bucket_recent_idx per bucket)."""
    histories: dict[int, list[Arrival]] = {pk: [] for pk in bucket_ids}
    if not bucket_ids:
        return histories
    base = Arrival.objects.select_related("artifact").newest_first()
    if connection.features.supports_slicing_ordering_in_compound and len(bucket_ids) > 1:
        first, *rest = [base.filter(bucket_id=pk)[:per_bucket] for pk in bucket_ids]
        arrivals = list(first.union(*rest, all=True))
    else:
        # SQLite cannot slice inside a UNION; a window function does it in one query (fine at demo sizes).
        rank = Window(RowNumber(), partition_by=F("bucket_id"), order_by=[F("arrived_at").desc(), F("id").desc()])
        arrivals = list(base.filter(bucket_id__in=bucket_ids).annotate(rank=rank).filter(rank__lte=per_bucket))
    for arrival in arrivals:
        histories[arrival.bucket_id].append(arrival)
    for items in histories.values():
        items.sort(key=lambda a: (a.arrived_at, a.pk), reverse=True)
    return histories


def artifacts_with_checks(*, integration: Integration, before_id: int | None = None, limit: int = ARTIFACTS_PER_PAGE):
    """An integration's artifacts, newest first (keyset by id), with checks and arrivals (two prefetch queries)."""
    qs = Artifact.objects.filter(integration=integration)
    if before_id:
        qs = qs.filter(id__lt=before_id)
    # Only the columns the page shows: fifty artifacts with their checks and arrivals make hundreds of instances,
    # and every column loaded is converted per row.
    checks = CheckResult.objects.only("artifact_id", "name", "status").order_by("name")
    arrivals = (
        Arrival.objects.select_related("bucket")
        .only("artifact_id", "tag", "arrived_at", "bucket__env")
        .order_by("arrived_at", "id")
    )
    artifacts = list(
        qs.only("integration_id", "digest", "git_sha", "branch", "created_at")
        .order_by("-id")
        .prefetch_related(Prefetch("checks", queryset=checks), Prefetch("arrivals", queryset=arrivals))[: limit + 1]
    )
    more = len(artifacts) > limit
    artifacts = artifacts[:limit]
    return artifacts, (artifacts[-1].pk if more and artifacts else None)


def integration_detail(*, name: str, artifacts_before: int | None = None) -> IntegrationDetail:
    """Everything the integration page shows, in a fixed number of queries. Raises Integration.DoesNotExist."""
    integration = Integration.objects.select_related("workflow").get(name=name)
    buckets = list(
        Bucket.objects.filter(integration=integration)
        .select_related("registry", "current_arrival__artifact")
        .order_by("position", "env")
    )
    by_env = {b.env: b for b in buckets}
    steps: list[StepView] = []
    if integration.workflow_id:
        for step in WorkflowStep.objects.filter(workflow_id=integration.workflow_id).select_related("approver_group"):
            steps.append(StepView(step=step, from_bucket=by_env.get(step.from_env), to_bucket=by_env.get(step.to_env)))
    histories = _arrival_histories([b.pk for b in buckets], HISTORY_PER_BUCKET)
    views = [BucketView(bucket=b, history=histories[b.pk]) for b in buckets]
    for view in views:
        view.outgoing = next((s for s in steps if s.from_bucket and s.from_bucket.pk == view.bucket.pk), None)
    artifacts, next_before = artifacts_with_checks(integration=integration, before_id=artifacts_before)
    promotions = list(
        Promotion.objects.filter(integration=integration)
        .select_related("from_bucket", "to_bucket")
        .order_by("-created_at", "-id")[:10]
    )
    return IntegrationDetail(integration, views, steps, artifacts, next_before, promotions)


# --- artifact and promotion ---------------------------------------------------------------------------------------


@dataclass
class ArtifactDetail:
    artifact: Artifact
    checks: list[CheckResult]
    arrivals: list[Arrival]
    promotions: list[Promotion]
    current_in: list[str]
    tags: list[str]


def artifact_detail(*, pk: int, limit: int = 50) -> ArtifactDetail:
    """An artifact with its checks, where it has been and its promotions. Raises Artifact.DoesNotExist."""
    artifact = Artifact.objects.select_related("integration").get(pk=pk)
    checks = list(CheckResult.objects.filter(artifact=artifact).order_by("name"))
    arrivals = list(
        Arrival.objects.filter(artifact=artifact).select_related("bucket__registry", "promotion").newest_first()[:limit]
    )
    promotions = list(
        Promotion.objects.filter(artifact=artifact)
        .select_related("from_bucket", "to_bucket")
        .order_by("-created_at", "-id")[:limit]
    )
    current_in = list(
        Bucket.objects.filter(integration_id=artifact.integration_id, current_arrival__artifact=artifact)
        .order_by("position")
        .values_list("env", flat=True)
    )
    tags = sorted({a.tag for a in arrivals})
    return ArtifactDetail(artifact, checks, arrivals, promotions, current_in, tags)


def promotion_detail(pk: int) -> Promotion:
    """A promotion with what its page shows (approvals with their users). Raises Promotion.DoesNotExist."""
    return (
        Promotion.objects.select_related(
            "integration", "artifact", "from_bucket__registry", "to_bucket__registry", "step__approver_group"
        )
        .prefetch_related(Prefetch("approvals", queryset=Approval.objects.select_related("user").order_by("id")))
        .get(pk=pk)
    )


def promotion_for_decision(pk: int) -> Promotion:
    """A promotion with what the policy evaluation and the approval check read, in one query."""
    return Promotion.objects.select_related(
        "integration", "artifact__integration", "from_bucket__registry", "to_bucket__registry", "step__approver_group"
    ).get(pk=pk)


def promotion_progress(pk: int) -> Promotion:
    """Only what the live progress partial needs (polled every second or two)."""
    return Promotion.objects.select_related("to_bucket", "integration").get(pk=pk)


def promotion_timeline(pk: int, *, limit: int = 50) -> list[AuditEntry]:
    """The audit entries about one promotion, oldest first."""
    entries = AuditEntry.objects.filter(object_type="promotion", object_id=str(pk)).order_by("-id")[:limit]
    return list(reversed(entries))


# --- audit -----------------------------------------------------------------------------------------------------------


@dataclass
class AuditFilters:
    integration: str = ""
    environment: str = ""
    actor: str = ""
    action: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def queryset(self):
        qs = AuditEntry.objects.all()
        if self.integration:
            qs = qs.filter(integration=self.integration)
        if self.environment:
            qs = qs.filter(environment=self.environment)
        if self.actor:
            qs = qs.filter(actor=self.actor)
        if self.action:
            # "promotion." lists every promotion action; a full name lists one.
            qs = (
                qs.filter(action__startswith=self.action)
                if self.action.endswith(".")
                else qs.filter(action=self.action)
            )
        # Appends are serialised and stamped inside the lock, so ids follow time: a date bound becomes an id bound
        # (one index probe on timestamp), and the page is a primary-key range scan instead of a filter over the log.
        if self.since:
            qs = qs.filter(timestamp__gte=self.since, id__gte=_first_id_at_or_after(self.since, default=0))
        if self.until:
            qs = qs.filter(timestamp__lt=self.until, id__lt=_first_id_at_or_after(self.until, default=2**62))
        return qs


def _first_id_at_or_after(moment: datetime, *, default: int):
    first = AuditEntry.objects.filter(timestamp__gte=moment).order_by("timestamp", "id").values("id")[:1]
    return Coalesce(Subquery(first), Value(default))


@dataclass
class AuditPage:
    entries: list[AuditEntry]
    older_than: int | None  # pass as ?before= for the next (older) page
    newer_than: int | None  # pass as ?after= for the previous (newer) page


def audit_entries(
    filters: AuditFilters, *, before: int | None = None, after: int | None = None, limit: int = AUDIT_PAGE_SIZE
):
    """One page of entries, newest first, keyset-paginated by id: one query, whatever the table size."""
    qs = filters.queryset()
    if after:
        rows = list(qs.filter(id__gt=after).order_by("id")[: limit + 1])
        more_newer = len(rows) > limit
        entries = list(reversed(rows[:limit]))
        return AuditPage(
            entries, older_than=entries[-1].id if entries else None, newer_than=entries[0].id if more_newer else None
        )
    if before:
        qs = qs.filter(id__lt=before)
    rows = list(qs.order_by("-id")[: limit + 1])
    entries = rows[:limit]
    return AuditPage(
        entries,
        older_than=entries[-1].id if len(rows) > limit else None,
        newer_than=entries[0].id if before and entries else None,
    )


def audit_entries_for_export(filters: AuditFilters, *, chunk_size: int = 2000):
    """Every matching entry, oldest first, read in id-keyset chunks so memory stays flat on a million rows."""
    qs = filters.queryset().order_by("id")
    last = 0
    while True:
        chunk = list(qs.filter(id__gt=last)[:chunk_size])
        if not chunk:
            return
        yield from chunk
        last = chunk[-1].id


def audit_latest_entry() -> AuditEntry | None:
    return AuditEntry.objects.order_by("-id").only("id", "hash", "timestamp").first()


def audit_filter_choices() -> dict[str, list[str]]:
    """Values for the filter drop-downs: integration names and environments come from configuration, not the log."""
    return {
        "integrations": list(Integration.objects.order_by("name").values_list("name", flat=True)[:500]),
        "environments": sorted(set(Bucket.objects.values_list("env", flat=True).distinct()[:200])),
    }


# --- tokens and freeze windows -------------------------------------------------------------------------------------


def tokens_visible_to(user, *, limit: int = 200) -> list[ApiToken]:
    """A user's personal tokens and the CI tokens they own or made; platform admins see every CI token."""
    mine = Q(user=user) | Q(kind=ApiToken.Kind.CI, owner=user) | Q(kind=ApiToken.Kind.CI, made_by=user)
    if user.has_perm("ci_integrations.change_apitoken"):
        mine |= Q(kind=ApiToken.Kind.CI)
    return list(
        ApiToken.objects.filter(mine)
        .select_related("user", "owner")
        .prefetch_related(Prefetch("integrations", queryset=Integration.objects.only("id", "name")))
        .order_by("-created_at")[:limit]
    )


def environment_names() -> set[str]:
    """Every environment some integration has a bucket in: the names a freeze window can block."""
    return set(Bucket.objects.values_list("env", flat=True).distinct())


def freeze_windows_recent(*, limit: int = 100) -> list[FreezeWindow]:
    """Recurring windows, and one-off ones that have not ended long ago; latest start first."""
    since = timezone.now() - timedelta(days=30)
    windows = FreezeWindow.objects.filter(Q(ends_at__gte=since) | Q(ends_at__isnull=True))
    return list(windows.order_by(F("starts_at").desc(nulls_first=True), "name")[:limit])


def freeze_windows_next_by_environment(*, days: int = 14, per_environment: int = 3) -> list[tuple[str, list]]:
    """For each environment, the next stretches of time freeze windows cover over the coming `days` (windows that
    name no environment count for every one)."""
    return [
        (env, occurrences)
        for env in sorted(environment_names())
        if (occurrences := freeze_windows_upcoming(env=env, days=days, limit=per_environment))
    ]


# --- the API: what a caller may see ----------------------------------------------------------------------------------


def integrations_visible_to(actor: Actor) -> QuerySet[Integration]:
    """The integrations `actor` may see: a CI token's own, a person's (their teams' and those no team owns, or all
    for auditors and platform admins), or all of them for the system."""
    if actor.is_ci_token:
        return Integration.objects.filter(tokens=actor.token)
    if actor.user is None:
        return Integration.objects.all()
    return Integration.objects.filter(visible_integrations_q(actor.user))


def integration_visible_to(actor: Actor, name: str) -> Integration | None:
    """`integrations_visible_to(actor).get(name=name)` or None, in plain SQL: every integration URL runs it."""
    sql = f"SELECT {columns(Integration, 'i')} FROM {table(Integration)} i WHERE i.name = %s"
    params: list = [name]
    if actor.is_ci_token:
        link = ApiToken.integrations.through
        sql += (
            f" AND EXISTS (SELECT 1 FROM {table(link)} l WHERE l.{link._meta.get_field('integration').column} = i.id"
            f" AND l.{link._meta.get_field('apitoken').column} = %s)"
        )
        params.append(actor.token.pk)
    elif actor.user is not None and not sees_every_team(actor.user):
        teams = sorted(team_ids_of(actor.user))
        sql += " AND (i.team_id IS NULL" + "".join(" OR i.team_id = %s" for _ in teams) + ")"
        params.extend(teams)
    found = fetch_one(sql, params, [(Integration, "i")])
    return found[0] if found else None


def integrations_with_buckets(actor: Actor, *, name: str | None = None) -> QuerySet[Integration]:
    """Visible integrations by name, each with its workflow and its buckets, and what each bucket runs."""
    buckets = Bucket.objects.select_related("registry", "current_arrival__artifact").order_by("position", "env")
    integrations = integrations_visible_to(actor).order_by("name")
    if name is not None:
        integrations = integrations.filter(name=name)
    return integrations.select_related("workflow").prefetch_related(Prefetch("buckets", queryset=buckets))


def artifact_visible_to(actor: Actor, pk: int) -> Artifact | None:
    """An artifact of a visible integration, with its checks and arrivals (as the API shows them)."""
    return _artifacts_shown(Artifact.objects.filter(pk=pk, integration__in=integrations_visible_to(actor))).first()


def _artifacts_shown(artifacts: QuerySet[Artifact]) -> QuerySet[Artifact]:
    return artifacts.select_related("integration").prefetch_related(
        "checks", Prefetch("arrivals", queryset=Arrival.objects.select_related("bucket").order_by("-id"))
    )


def artifacts_search(*, integration: Integration, env: str = "", tag: str = "", digest: str = "") -> QuerySet:
    """An integration's artifacts that arrived in `env` (under `tag`), or have `digest`; unordered (the caller
    paginates), each with its checks and arrivals."""
    artifacts = Artifact.objects.filter(integration=integration)
    if env or tag:
        arrivals = Arrival.objects.filter(bucket__integration=integration)
        if env:
            arrivals = arrivals.filter(bucket__env=env)
        if tag:
            arrivals = arrivals.filter(tag=tag)
        artifacts = artifacts.filter(pk__in=arrivals.values("artifact_id"))
    if digest:
        artifacts = artifacts.filter(digest=digest)
    return _artifacts_shown(artifacts)


def artifact_by_reference(integration: Integration, reference: str, *, env: str | None = None) -> Artifact | None:
    """An artifact named by id, digest or tag; a tag is looked up in `env`'s bucket first, then anywhere."""
    if reference.isdigit() and len(reference) <= 18:
        return integration.artifacts.filter(pk=int(reference)).first()
    if ":" in reference:
        if not DIGEST.is_valid(reference):
            raise InvalidInput(f"artifact: {reference!r} is not a digest", details={"artifact": "invalid digest"})
        return integration.artifacts.filter(digest=reference).first()
    arrivals = Arrival.objects.filter(bucket__integration=integration, tag=reference).select_related("artifact")
    arrival = arrivals.filter(bucket__env=env).newest() if env else None
    arrival = arrival or arrivals.newest()
    return arrival.artifact if arrival else None


def bucket_of(integration: Integration, env: str) -> Bucket | None:
    """The integration's bucket for `env`, with its registry."""
    return Bucket.objects.select_related("registry").filter(integration=integration, env=env).first()


def arrival_in(bucket: Bucket, artifact: Artifact) -> Arrival | None:
    """The newest arrival of `artifact` in `bucket`: what a rollback to it returns to."""
    return Arrival.objects.filter(bucket=bucket, artifact=artifact).newest()


def import_job_visible_to(actor: Actor, pk: int) -> ImportJob | None:
    return (
        ImportJob.objects.select_related("integration")
        .filter(pk=pk, integration__in=integrations_visible_to(actor))
        .first()
    )


def _promotions_shown(promotions: QuerySet[Promotion]) -> QuerySet[Promotion]:
    return promotions.select_related("integration", "artifact", "from_bucket", "to_bucket").prefetch_related(
        Prefetch("approvals", queryset=Approval.objects.select_related("user"))
    )


def promotion_visible_to(actor: Actor, pk: int) -> Promotion | None:
    """A promotion of a visible integration, with its buckets and approvals (as the API shows it)."""
    return _promotions_shown(Promotion.objects.filter(pk=pk, integration__in=integrations_visible_to(actor))).first()


def promotion_as_shown(pk: int) -> Promotion:
    """A promotion read again after a change, as the API shows it."""
    return _promotions_shown(Promotion.objects.filter(pk=pk)).get()


def audit_entries_visible_to(actor: Actor, filters: AuditFilters) -> QuerySet[AuditEntry]:
    """Filtered audit entries; a CI token sees its integrations' entries only, and a person who is not an auditor
    sees the entries of the integrations they see and those about no integration."""
    entries = filters.queryset()
    if actor.is_ci_token:
        entries = entries.filter(integration__in=integrations_visible_to(actor).values("name"))
    elif actor.user is not None and not sees_every_team(actor.user):
        entries = entries.filter(Q(integration="") | Q(integration__in=integrations_visible_to(actor).values("name")))
    return entries


def insight_integration_ids(actor: Actor, *, team: str = "", integration: str = "") -> list[int] | None:
    """Which integrations an insights report covers: the named integration, the named team's, or every one the
    actor sees (None when that is all of them). Raises NotFound for a team or integration the actor cannot see."""
    visible = integrations_visible_to(actor)
    if integration:
        visible = visible.filter(name=integration)
    if team:
        if not Team.objects.filter(name=team).exists():
            raise NotFound(f"no team named {team!r}")
        visible = visible.filter(team__name=team)
    ids = list(visible.values_list("pk", flat=True))
    if integration and not ids:
        raise NotFound(f"no integration named {integration!r}" + (f" in team {team!r}" if team else ""))
    if not (team or integration) and (actor.user is None or sees_every_team(actor.user)) and not actor.is_ci_token:
        return None
    return ids


def team_names_visible_to(actor: Actor) -> list[str]:
    """The teams whose integrations the actor sees (every team for auditors and platform admins)."""
    if actor.user is not None and not actor.is_ci_token and sees_every_team(actor.user):
        return list(Team.objects.order_by("name").values_list("name", flat=True))
    return list(
        Team.objects.filter(integrations__in=integrations_visible_to(actor))
        .distinct()
        .order_by("name")
        .values_list("name", flat=True)
    )
