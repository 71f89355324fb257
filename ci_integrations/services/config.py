"""Config as code: load a YAML file of registries, workflows and integrations, apply it idempotently, export it.

The whole document is checked first (services/config_reader.py), so every problem is reported with its path before
anything is written; the apply is one transaction: all of it or nothing. Applying the same file twice changes nothing
and writes no audit entry. Nothing is ever deleted by an apply, except workflow steps that the file no longer lists.

May import: models, config_reader, config_freeze, config_notifications, config_teams, audit, actors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import yaml
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F

from ci_integrations.models import Bucket, CiIdentity, Integration, Registry, Webhook, Workflow, WorkflowStep
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record
from ci_integrations.services.config_freeze import freeze_windows_apply, freeze_windows_export
from ci_integrations.services.config_notifications import (
    notifications_apply,
    notifications_export,
    webhook_apply,
    webhook_export,
)
from ci_integrations.services.config_reader import TEAM_RELEASE_MANAGERS, config_read, format_duration
from ci_integrations.services.config_teams import apply_roles, apply_teams, export_roles, export_teams
from ci_integrations.services.supply_chain import require_signature_export


class ConfigError(Exception):
    """The file cannot be applied; `problems` lists every "path: what is wrong" found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {problem}" for problem in problems))


@dataclass
class ConfigResult:
    """What an apply changed (or, with check, would change), one human-readable line per change."""

    changes: list[str] = field(default_factory=list)
    applied: bool = False


def config_load(path: str) -> dict:
    """Read a YAML config file into plain data; syntax errors name the line."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(path, [f"cannot be read: {exc.strerror}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(path, [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, ["the top level must be a mapping with registries, workflows and integrations"])
    return data


class _Applier:
    """Writes the specs config_read found valid, recording one change line and one audit entry per row that
    differs."""

    def __init__(self, actor: Actor, source: str):
        self.actor = actor
        self.source = source
        self.changes: list[str] = []

    def sync(self, model, lookup: dict, desired: dict, label: str, *, model_rules: bool = True):
        """Create or update one row; model_rules=False checks fields only (for rules the reader already checked
        across the whole file, which may hold only once every row is written)."""
        obj = model.objects.filter(**lookup).first()
        if obj is None:
            obj = model(**lookup, **desired)
            self.validate(obj, model_rules)
            obj.save()
            self.changes.append(f"+ {label}")
            audit_record(
                actor=self.actor,
                action="config.create",
                obj=obj,
                after=_loggable(desired),
                reason=f"apply_config {self.source}",
            )
            return obj
        before = {key: getattr(obj, key) for key in desired}
        changed = {key: value for key, value in desired.items() if before[key] != value}
        if changed:
            for key, value in changed.items():
                setattr(obj, key, value)
            self.validate(obj, model_rules)
            obj.save()
            details = ", ".join(f"{key}: {_shown(before[key])} → {_shown(value)}" for key, value in changed.items())
            self.changes.append(f"~ {label} ({details})")
            audit_record(
                actor=self.actor,
                action="config.update",
                obj=obj,
                before=_loggable({key: before[key] for key in changed}),
                after=_loggable(changed),
                reason=f"apply_config {self.source}",
            )
        return obj

    @staticmethod
    def validate(obj, model_rules: bool) -> None:
        """The model's rules, which also catch what the reader leaves to the model (field lengths, for one)."""
        if model_rules:
            obj.full_clean(validate_unique=False, validate_constraints=False)
        else:
            obj.clean_fields()

    def changed(self, obj, line: str, after: dict) -> None:
        """Record a change that is not one row's fields (a team's members, a role's groups)."""
        self.changes.append(line)
        audit_record(
            actor=self.actor, action="config.update", obj=obj, after=after, reason=f"apply_config {self.source}"
        )

    def registry(self, name: str, spec: dict) -> None:
        """One registry, then its credentials (compared decrypted, so an unchanged secret is no change)."""
        desired = {"provider": spec["provider"], "url": spec["url"], "options": spec["options"]}
        registry = self.sync(Registry, {"name": name}, desired, f"registry {name}")
        credentials = spec["credentials"]
        if credentials == "stored":
            return  # keep whatever is stored (export writes this, since it never writes secrets)
        wanted = None if credentials == "ambient" else credentials
        if registry.get_credentials() != wanted:
            registry.set_credentials(wanted)
            registry.save(update_fields=["credentials_encrypted", "updated_at"])
            created = f"+ registry {name}"
            if self.changes and self.changes[-1] == created:
                self.changes[-1] = f"{created} (credentials: stored)"
            else:
                self.changes.append(f"~ registry {name} (credentials: {'stored' if wanted else 'ambient'})")
            audit_record(
                actor=self.actor,
                action="config.credentials",
                obj=registry,
                after={"credentials": "stored" if wanted else "ambient"},
                reason=f"apply_config {self.source}",
            )

    def workflow(self, name: str, spec: dict) -> None:
        """One workflow: steps the file no longer lists are deleted, the others written in the file's order."""
        workflow = self.sync(
            Workflow,
            {"name": name},
            {"kind": spec["kind"], "description": spec["description"]},
            f"workflow {name}",
            model_rules=False,  # a kind change is valid once the file's integrations follow it (checked below)
        )
        wanted_targets = [step["to_env"] for step in spec["steps"]]
        for step in workflow.steps.exclude(to_env__in=wanted_targets):
            self.changes.append(f"- workflow {name} step {step.from_env} → {step.to_env}")
            audit_record(
                actor=self.actor,
                action="config.delete",
                obj=step,
                before={"from_env": step.from_env, "to_env": step.to_env},
                reason=f"apply_config {self.source}",
            )
            step.delete()
        for position, step in enumerate(spec["steps"]):
            group = None
            if step["approver_group"]:
                group, created = Group.objects.get_or_create(name=step["approver_group"])
                if created:
                    self.changes.append(f"+ group {group.name}")
                    audit_record(
                        actor=self.actor,
                        action="config.create",
                        after={"group": group.name},
                        reason=f"apply_config {self.source}",
                    )
            desired = {key: value for key, value in step.items() if key not in ("to_env", "approver_group")}
            desired["position"] = position
            desired["approver_group"] = group
            self.sync(
                WorkflowStep,
                {"workflow": workflow, "to_env": step["to_env"]},
                desired,
                f"workflow {name} step {step['from_env']} → {step['to_env']}",
            )

    def integration(self, name: str, spec: dict) -> None:
        """One integration with its buckets and webhooks (a webhook without a secret in the file keeps its own)."""
        workflow = Workflow.objects.get(name=spec["workflow"]) if spec["workflow"] else None
        integration = self.sync(
            Integration,
            {"name": name},
            {"kind": spec["kind"], "workflow": workflow, "description": spec["description"]},
            f"integration {name}",
        )
        for bucket in spec["buckets"]:
            desired = {key: value for key, value in bucket.items() if key != "env"}
            desired["registry"] = Registry.objects.get(name=bucket["registry"])
            self.sync(
                Bucket, {"integration": integration, "env": bucket["env"]}, desired, f"bucket {name}/{bucket['env']}"
            )
        for hook in spec["webhooks"]:
            webhook = integration.webhooks.filter(url=hook["url"], name="").first()
            webhook = webhook or Webhook(integration=integration, url=hook["url"])
            if line := webhook_apply(webhook, hook, actor=self.actor, source=self.source, label=name):
                self.changes.append(line)
        self.ci_identities(integration, spec["ci_identities"])

    def ci_identities(self, integration: Integration, wanted: list[dict]) -> None:
        """An integration's CI identities exactly as the file lists them, in its order (an integration in the file
        without `ci_identities` trusts no CI identity): replaced together, audited as one change."""
        current = [ci_identity_spec(identity) for identity in integration.ci_identities.order_by("position", "id")]
        if current == wanted:
            return
        integration.ci_identities.all().delete()
        CiIdentity.objects.bulk_create(
            CiIdentity(integration=integration, position=position, **spec) for position, spec in enumerate(wanted)
        )
        self.changes.append(f"~ integration {integration.name} ci_identities ({len(current)} → {len(wanted)})")
        audit_record(
            actor=self.actor,
            action="config.update",
            obj=integration,
            before={"ci_identities": current},
            after={"ci_identities": wanted},
            reason=f"apply_config {self.source}",
        )


def ci_identity_spec(identity: CiIdentity) -> dict:
    """A CI identity as the file writes it."""
    return {
        "issuer": identity.issuer,
        "audience": identity.audience,
        "claims": dict(identity.claims),
        "scopes": list(identity.scopes),
    }


def _shown(value) -> str:
    """A field value in a change line: durations as the file writes them, related rows by name."""
    if isinstance(value, timedelta):
        return format_duration(value)
    if hasattr(value, "name"):
        return value.name
    return repr(value)


def _loggable(values: dict) -> dict:
    """Field values as plain data for the audit log (related rows by name, durations as text)."""
    return {
        key: format_duration(value) if isinstance(value, timedelta) else getattr(value, "name", value)
        for key, value in values.items()
    }


def config_apply(*, data: dict, actor: Actor, source: str = "config", check: bool = False) -> ConfigResult:
    """Validate the whole document, then apply it in one transaction (rolled back again when check is set)."""
    specs = config_read(data)
    if specs.problems:
        raise ConfigError(source, specs.problems)
    applier = _Applier(actor, source)
    try:
        with transaction.atomic():
            for name, spec in specs.registries.items():
                applier.registry(name, spec)
            for name, spec in specs.workflows.items():
                applier.workflow(name, spec)
            for name, spec in specs.integrations.items():
                applier.integration(name, spec)
            if specs.teams is not None:
                apply_teams(applier, specs.teams)
            if specs.roles is not None:
                apply_roles(applier, specs.roles)
            applier.changes += freeze_windows_apply(specs=specs.freeze_windows, actor=actor, source=source)
            applier.changes += notifications_apply(specs=specs.notifications, actor=actor, source=source)
            # Kinds are checked once every row is written: a workflow and its integrations may change kind together.
            mismatched = (
                Integration.objects.filter(workflow__isnull=False)
                .exclude(kind=F("workflow__kind"))
                .values_list("name", "kind", "workflow__name", "workflow__kind")
            )
            if mismatched:
                raise ConfigError(
                    source,
                    [f"integration {n!r} is {k} but its workflow {w!r} is {wk}" for n, k, w, wk in mismatched],
                )
            if check:
                transaction.set_rollback(True)
    except ValidationError as exc:
        if hasattr(exc, "error_dict"):
            problems = [f"{field}: {'; '.join(msgs)}" for field, msgs in exc.message_dict.items()]
        else:
            problems = exc.messages
        raise ConfigError(source, problems) from None
    return ConfigResult(changes=applier.changes, applied=not check)


def config_export() -> dict:
    """The current registries, workflows and integrations in the apply_config format (secrets never written)."""
    registries = [
        {
            "name": registry.name,
            "provider": registry.provider,
            "url": registry.url,
            **({"options": registry.options} if registry.options else {}),
            "credentials": "stored" if registry.has_stored_credentials else "ambient",
        }
        for registry in Registry.objects.order_by("name")
    ]
    workflows = []
    for workflow in Workflow.objects.prefetch_related("steps__approver_group").order_by("name"):
        steps = []
        for step in workflow.steps.order_by("position"):
            entry = {"from": step.from_env, "to": step.to_env, "approvals": step.required_approvals}
            if step.rollback_approvals is not None:
                entry["rollback_approvals"] = step.rollback_approvals
            if step.approvers_from_team:
                entry["approver_group"] = TEAM_RELEASE_MANAGERS
            elif step.approver_group:
                entry["approver_group"] = step.approver_group.name
            if step.required_checks:
                entry["required_checks"] = list(step.required_checks)
            if step.min_soak:
                entry["min_soak"] = format_duration(step.min_soak)
            if step.self_approval:
                entry["self_approval"] = True
            if step.auto_promote:
                entry["auto"] = True
            if step.tag_rule:
                entry["tag_rule"] = step.tag_rule
            if step.approval_timeout:
                entry["approval_timeout"] = format_duration(step.approval_timeout)
            if step.attached:
                entry["attached"] = step.attached
            if step.require_signature:
                entry["require_signature"] = require_signature_export(step.require_signature)
            steps.append(entry)
        workflows.append(
            {
                "name": workflow.name,
                "kind": workflow.kind,
                **({"description": workflow.description} if workflow.description else {}),
                "steps": steps,
            }
        )
    integrations = []
    for integration in (
        Integration.objects.select_related("workflow")
        .prefetch_related("buckets__registry", "ci_identities")
        .order_by("name")
    ):
        item = {"name": integration.name, "kind": integration.kind}
        if integration.workflow:
            item["workflow"] = integration.workflow.name
        if integration.description:
            item["description"] = integration.description
        item["buckets"] = [
            {
                "env": bucket.env,
                "registry": bucket.registry.name,
                "repository": bucket.repository,
                **({"immutable_tags": True} if bucket.immutable_tags else {}),
                **({"allow_push_credentials": True} if bucket.allow_push_credentials else {}),
                **({"allow_direct_register": True} if bucket.allow_direct_register else {}),
                **({"attached": bucket.attached} if bucket.attached else {}),
                **{
                    key: getattr(bucket, key)
                    for key in (
                        "push_role_arn",
                        "push_service_account",
                        "create_repository",
                        "scan_on_push",
                        "encryption",
                        "kms_key",
                    )
                    if getattr(bucket, key)
                },
            }
            for bucket in integration.buckets.order_by("position", "env")
        ]
        webhooks = [webhook_export(webhook) for webhook in integration.webhooks.order_by("id")]
        if webhooks:
            item["webhooks"] = webhooks  # secrets stay stored; apply keeps them when the file names none
        identities = sorted(integration.ci_identities.all(), key=lambda identity: (identity.position, identity.id))
        if identities:
            item["ci_identities"] = [ci_identity_spec(identity) for identity in identities]
        integrations.append(item)
    exported = {"registries": registries, "workflows": workflows, "integrations": integrations}
    if teams := export_teams():
        exported["teams"] = teams
    if roles := export_roles():
        exported["roles"] = roles
    if windows := freeze_windows_export(format_duration):
        exported["freeze_windows"] = windows
    if notifications := notifications_export():
        exported["notifications"] = notifications
    return exported


def config_dump(data: dict) -> str:
    """Exported data as YAML, keys in the order export wrote them."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
