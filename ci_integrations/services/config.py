"""Config as code: apply a YAML description of registries, workflows and integrations, idempotently.

The whole document is validated before anything is written, every problem is reported with its path
(`integrations[2].buckets[0].registry`), and the apply is one transaction: all of it or nothing. Applying the same
file twice changes nothing and writes no audit entry. Nothing is ever deleted by an apply, except workflow steps that
the file no longer lists. Strings of the form ${NAME} in credentials and webhook secrets are read from the
environment, so secrets need not live in the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import yaml
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F

from ci_integrations.models import (
    Bucket,
    Integration,
    IntegrationKind,
    Registry,
    Webhook,
    Workflow,
    WorkflowStep,
    validate_check_name,
    validate_registry_url,
    validate_repository,
)
from ci_integrations.services.actors import Actor
from ci_integrations.services.audit import audit_record

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


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


def format_duration(value: timedelta | None) -> str | None:
    if value is None:
        return None
    seconds = int(value.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class _Reader:
    """Validates the document into normalised specs, collecting every problem with its path."""

    def __init__(self, data: dict):
        self.data = data
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def listed(self, path: str, value: Any) -> list:
        """A list-valued key: absent (or null) is an empty list; anything else that is not a list is one problem."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(path, "must be a list")
            return []
        return value

    def items(self, key: str) -> list[tuple[str, dict]]:
        found = []
        for index, item in enumerate(self.listed(key, self.data.get(key))):
            path = f"{key}[{index}]"
            if isinstance(item, dict):
                found.append((path, item))
            else:
                self.problem(path, "must be a mapping")
        return found

    def known_keys(self, path: str, item: dict, allowed: set[str]) -> None:
        for key in sorted(set(item) - allowed):
            self.problem(f"{path}.{key}", f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def slug(self, path: str, value: Any, what: str = "name") -> str | None:
        if not isinstance(value, str) or not SLUG.match(value):
            self.problem(path, f"{what} {value!r} must be lowercase letters, digits and '-', at most 63 characters")
            return None
        return value

    def choice(self, path: str, value: Any, choices: list[str]) -> str | None:
        if value not in choices:
            self.problem(path, f"{value!r} is not one of {', '.join(choices)}")
            return None
        return value

    def boolean(self, path: str, value: Any, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(path, f"{value!r} must be true or false")
            return default
        return value

    def count(self, path: str, value: Any, default: int | None) -> int | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.problem(path, f"{value!r} must be a whole number of 0 or more")
            return default
        return value

    def duration(self, path: str, value: Any) -> timedelta | None:
        if value in (None, "", 0):
            return None
        match = DURATION.match(str(value).strip())
        if not match:
            self.problem(path, f"{value!r} is not a duration like 90s, 30m, 1h, 2d or 1w")
            return None
        return timedelta(**{DURATION_UNITS[match.group(2)]: int(match.group(1))})

    def secret_text(self, path: str, value: Any) -> str | None:
        if not isinstance(value, str):
            self.problem(path, "must be a string")
            return None
        reference = ENV_REFERENCE.match(value)
        if reference:
            if reference.group(1) not in os.environ:
                self.problem(path, f"environment variable {reference.group(1)} is not set")
                return None
            return os.environ[reference.group(1)]
        return value

    def registries(self) -> dict[str, dict]:
        found: dict[str, dict] = {}
        for path, item in self.items("registries"):
            self.known_keys(path, item, {"name", "provider", "url", "options", "credentials"})
            name = self.slug(f"{path}.name", item.get("name"))
            if name in found:
                self.problem(f"{path}.name", f"registry {name!r} is listed twice")
            provider = self.choice(f"{path}.provider", item.get("provider", "generic"), Registry.Provider.values)
            url = item.get("url")
            try:
                validate_registry_url(url if isinstance(url, str) else "")
            except ValidationError as exc:
                self.problem(f"{path}.url", exc.messages[0])
            options = item.get("options") or {}
            if not isinstance(options, dict):
                self.problem(f"{path}.options", "must be a mapping")
                options = {}
            credentials = item.get("credentials", "ambient")
            if (
                credentials == "stored"
                and not Registry.objects.filter(name=name).exclude(credentials_encrypted="").exists()
            ):
                self.problem(f"{path}.credentials", "stored, but no credentials are stored for this registry yet")
            if credentials not in ("ambient", "stored"):
                if not isinstance(credentials, dict) or not credentials:
                    self.problem(
                        f"{path}.credentials", "must be ambient, stored, or a mapping such as {username, password}"
                    )
                    credentials = "ambient"
                else:
                    credentials = {
                        str(key): self.secret_text(f"{path}.credentials.{key}", value)
                        for key, value in credentials.items()
                    }
            if name:
                found[name] = {
                    "path": path,
                    "provider": provider,
                    "url": url.rstrip("/") if isinstance(url, str) else url,
                    "options": options,
                    "credentials": credentials,
                }
        return found

    def workflows(self) -> dict[str, dict]:
        found: dict[str, dict] = {}
        step_keys = {
            "from",
            "to",
            "approvals",
            "rollback_approvals",
            "approver_group",
            "required_checks",
            "min_soak",
            "self_approval",
            "auto",
            "tag_rule",
        }
        for path, item in self.items("workflows"):
            self.known_keys(path, item, {"name", "kind", "description", "steps"})
            name = self.slug(f"{path}.name", item.get("name"))
            if name in found:
                self.problem(f"{path}.name", f"workflow {name!r} is listed twice")
            kind = self.choice(f"{path}.kind", item.get("kind", "environment"), IntegrationKind.values)
            steps = []
            reached: set[str] = set()
            for index, step in enumerate(self.listed(f"{path}.steps", item.get("steps"))):
                step_path = f"{path}.steps[{index}]"
                if not isinstance(step, dict):
                    self.problem(step_path, "must be a mapping")
                    continue
                self.known_keys(step_path, step, step_keys)
                from_env = self.slug(f"{step_path}.from", step.get("from"), "environment")
                to_env = self.slug(f"{step_path}.to", step.get("to"), "environment")
                if from_env and to_env:
                    if from_env == to_env:
                        self.problem(step_path, "from and to must differ")
                    if to_env in reached or any(s["to_env"] == to_env for s in steps):
                        self.problem(f"{step_path}.to", f"environment {to_env!r} is already reached by another step")
                    if steps and from_env not in reached and from_env != steps[0]["from_env"]:
                        self.problem(f"{step_path}.from", f"{from_env!r} is not reached by an earlier step")
                    reached.add(to_env)
                checks = self.listed(f"{step_path}.required_checks", step.get("required_checks"))
                for check_index, check in enumerate(checks):
                    try:
                        validate_check_name(check)
                    except ValidationError as exc:
                        self.problem(f"{step_path}.required_checks[{check_index}]", exc.messages[0])
                tag_rule = step.get("tag_rule") or ""
                try:
                    re.compile(str(tag_rule))
                except re.error as exc:
                    self.problem(f"{step_path}.tag_rule", f"not a valid regular expression: {exc}")
                group = step.get("approver_group")
                if group is not None and not isinstance(group, str):
                    self.problem(f"{step_path}.approver_group", "must be a group name")
                    group = None
                steps.append(
                    {
                        "from_env": from_env,
                        "to_env": to_env,
                        "required_approvals": self.count(f"{step_path}.approvals", step.get("approvals"), 0),
                        "rollback_approvals": self.count(
                            f"{step_path}.rollback_approvals", step.get("rollback_approvals"), None
                        ),
                        "approver_group": group,
                        "required_checks": checks,
                        "min_soak": self.duration(f"{step_path}.min_soak", step.get("min_soak")),
                        "self_approval": self.boolean(f"{step_path}.self_approval", step.get("self_approval"), False),
                        "auto_promote": self.boolean(f"{step_path}.auto", step.get("auto"), False),
                        "tag_rule": str(tag_rule),
                    }
                )
            if name:
                found[name] = {
                    "path": path,
                    "kind": kind,
                    "description": str(item.get("description") or ""),
                    "steps": steps,
                }
        return found

    def integrations(self, registries: dict, workflows: dict) -> dict[str, dict]:
        known_registries = set(registries) | set(Registry.objects.values_list("name", flat=True))
        found: dict[str, dict] = {}
        for path, item in self.items("integrations"):
            self.known_keys(path, item, {"name", "kind", "workflow", "description", "buckets", "webhooks"})
            name = self.slug(f"{path}.name", item.get("name"))
            if name in found:
                self.problem(f"{path}.name", f"integration {name!r} is listed twice")
            kind = self.choice(f"{path}.kind", item.get("kind", "environment"), IntegrationKind.values)
            workflow = item.get("workflow")
            if workflow is not None and not isinstance(workflow, str):
                self.problem(f"{path}.workflow", f"{workflow!r} must be a workflow name")
                workflow = None
            workflow_exists = False  # in the file or in the database
            if workflow is not None:
                workflow_kind = (
                    workflows[workflow]["kind"]
                    if workflow in workflows
                    else Workflow.objects.filter(name=workflow).values_list("kind", flat=True).first()
                )
                workflow_exists = workflow in workflows or workflow_kind is not None
                if not workflow_exists:
                    self.problem(f"{path}.workflow", f"unknown workflow {workflow!r}")
                elif kind and workflow_kind and workflow_kind != kind:
                    self.problem(f"{path}.workflow", f"workflow {workflow!r} is for kind {workflow_kind}, not {kind}")
            buckets = []
            for index, bucket in enumerate(self.listed(f"{path}.buckets", item.get("buckets"))):
                bucket_path = f"{path}.buckets[{index}]"
                if not isinstance(bucket, dict):
                    self.problem(bucket_path, "must be a mapping")
                    continue
                self.known_keys(
                    bucket_path,
                    bucket,
                    {"env", "registry", "repository", "immutable_tags", "allow_push_credentials"}
                    | {"allow_direct_register", "push_role_arn", "push_service_account"},
                )
                env = self.slug(f"{bucket_path}.env", bucket.get("env"), "environment")
                if env and any(b["env"] == env for b in buckets):
                    self.problem(f"{bucket_path}.env", f"environment {env!r} has two buckets")
                registry = bucket.get("registry")
                if not isinstance(registry, str) or registry not in known_registries:
                    self.problem(f"{bucket_path}.registry", f"unknown registry {registry!r}")
                repository = bucket.get("repository")
                try:
                    validate_repository(repository if isinstance(repository, str) else "")
                except ValidationError as exc:
                    self.problem(f"{bucket_path}.repository", exc.messages[0])
                buckets.append(
                    {
                        "env": env,
                        "position": index,
                        "registry": registry,
                        "repository": repository,
                        "immutable_tags": self.boolean(
                            f"{bucket_path}.immutable_tags", bucket.get("immutable_tags"), False
                        ),
                        "allow_push_credentials": self.boolean(
                            f"{bucket_path}.allow_push_credentials", bucket.get("allow_push_credentials"), False
                        ),
                        "allow_direct_register": self.boolean(
                            f"{bucket_path}.allow_direct_register", bucket.get("allow_direct_register"), False
                        ),
                        "push_role_arn": str(bucket.get("push_role_arn") or ""),  # checked by the model's validator
                        "push_service_account": str(bucket.get("push_service_account") or ""),
                    }
                )
            if workflow_exists:
                envs = {b["env"] for b in buckets}
                for env in self.workflow_environments(workflow, workflows):
                    if env not in envs:
                        self.problem(f"{path}.buckets", f"workflow {workflow!r} needs a bucket for {env!r}")
                        envs.add(env)
            webhooks = []
            for index, hook in enumerate(self.listed(f"{path}.webhooks", item.get("webhooks"))):
                hook_path = f"{path}.webhooks[{index}]"
                if not isinstance(hook, dict):
                    self.problem(hook_path, "must be a mapping")
                    continue
                self.known_keys(hook_path, hook, {"url", "secret", "events"})
                url = hook.get("url")
                if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                    self.problem(f"{hook_path}.url", f"{url!r} is not an http(s) URL")
                events = self.listed(f"{hook_path}.events", hook.get("events"))
                unknown = [e for e in events if e not in Webhook.EVENTS]
                if unknown:
                    self.problem(f"{hook_path}.events", f"unknown events {unknown}; known: {', '.join(Webhook.EVENTS)}")
                secret = None  # absent: keep the stored secret (export never writes it)
                if "secret" in hook:
                    secret = self.secret_text(f"{hook_path}.secret", hook["secret"])
                elif not (
                    isinstance(url, str)
                    and Webhook.objects.filter(integration__name=item.get("name"), url=url).exists()
                ):
                    self.problem(f"{hook_path}.secret", "a new webhook needs a secret (${NAME} reads it from the env)")
                webhooks.append({"url": url, "secret": secret, "events": events if not unknown else []})
            if name:
                found[name] = {
                    "path": path,
                    "kind": kind,
                    "workflow": workflow,
                    "description": str(item.get("description") or ""),
                    "buckets": buckets,
                    "webhooks": webhooks,
                }
        self.workflow_kinds_hold(workflows, found)
        self.workflow_buckets_hold(workflows, found)
        return found

    @staticmethod
    def workflow_environments(name: str, workflows: dict) -> list[str]:
        """Every environment a workflow moves between: as the file describes it, else as the database holds it."""
        if name in workflows:
            pairs = [(step["from_env"], step["to_env"]) for step in workflows[name]["steps"]]
        else:
            steps = WorkflowStep.objects.filter(workflow__name=name).order_by("position")
            pairs = list(steps.values_list("from_env", "to_env"))
        return [env for pair in pairs for env in pair if env]

    def workflow_kinds_hold(self, workflows: dict, integrations: dict) -> None:
        """A workflow whose kind the file changes must not leave integrations outside the file on the old kind."""
        for name, spec in workflows.items():
            if not spec["kind"]:
                continue
            users = Integration.objects.filter(workflow__name=name).exclude(kind=spec["kind"])
            for integration in users.exclude(name__in=list(integrations)).values_list("name", flat=True)[:5]:
                self.problem(
                    f"{spec['path']}.kind",
                    f"integration {integration!r} (not in this file) uses workflow {name!r} with kind "
                    f"{Integration.objects.get(name=integration).kind}",
                )

    def workflow_buckets_hold(self, workflows: dict, integrations: dict) -> None:
        """A workflow the file changes must not reach an environment where integrations outside the file have no
        bucket (the file's own integrations are checked against their buckets above)."""
        for name, spec in workflows.items():
            envs = set(self.workflow_environments(name, workflows))
            users = Integration.objects.filter(workflow__name=name).exclude(name__in=list(integrations))
            for integration in users.order_by("name").prefetch_related("buckets")[:5]:
                missing = sorted(envs - {bucket.env for bucket in integration.buckets.all()})
                if missing:
                    self.problem(
                        f"{spec['path']}.steps",
                        f"integration {integration.name!r} (not in this file) uses workflow {name!r} and has no "
                        f"bucket for {', '.join(repr(env) for env in missing)}",
                    )


class _Applier:
    """Writes validated specs, recording one change line and one audit entry per object that differs."""

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
        if model_rules:
            obj.full_clean(validate_unique=False, validate_constraints=False)
        else:
            obj.clean_fields()

    def registry(self, name: str, spec: dict) -> None:
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
            existing = integration.webhooks.filter(url=hook["url"]).first()
            same_secret = hook["secret"] is None or (existing and existing.get_secret() == hook["secret"])
            if existing and same_secret and existing.events == hook["events"]:
                continue
            webhook = existing or Webhook(integration=integration, url=hook["url"])
            webhook.events = hook["events"]
            if hook["secret"] is not None:
                webhook.set_secret(hook["secret"])
            webhook.save()
            self.changes.append(f"{'~' if existing else '+'} webhook {name} → {hook['url']}")
            audit_record(
                actor=self.actor,
                action="config.update" if existing else "config.create",
                obj=webhook,
                after={"url": hook["url"], "events": hook["events"]},
                reason=f"apply_config {self.source}",
            )


def _shown(value) -> str:
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
    reader = _Reader(data)
    reader.known_keys("(top level)", data, {"registries", "workflows", "integrations"})
    registries = reader.registries()
    workflows = reader.workflows()
    integrations = reader.integrations(registries, workflows)
    if reader.problems:
        raise ConfigError(source, reader.problems)
    applier = _Applier(actor, source)
    try:
        with transaction.atomic():
            for name, spec in registries.items():
                applier.registry(name, spec)
            for name, spec in workflows.items():
                applier.workflow(name, spec)
            for name, spec in integrations.items():
                applier.integration(name, spec)
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
            if step.approver_group:
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
        Integration.objects.select_related("workflow").prefetch_related("buckets__registry").order_by("name")
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
                **{
                    key: getattr(bucket, key)
                    for key in ("push_role_arn", "push_service_account")
                    if getattr(bucket, key)
                },
            }
            for bucket in integration.buckets.order_by("position", "env")
        ]
        webhooks = [
            {"url": webhook.url, **({"events": list(webhook.events)} if webhook.events else {})}
            for webhook in integration.webhooks.order_by("id")
        ]
        if webhooks:
            item["webhooks"] = webhooks  # secrets stay stored; apply keeps them when the file names none
        integrations.append(item)
    return {"registries": registries, "workflows": workflows, "integrations": integrations}


def config_dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
