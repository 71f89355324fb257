"""Reading a config file: the rules its registries, workflows and integrations must meet.

`config_read` turns the file's plain data into the specs that `config_apply` writes and lists every problem at once,
each as "path: what is wrong" (`integrations[0].buckets[2].registry: unknown registry 'prd'`). It writes nothing; it
reads the database only for rows the file refers to without listing them.

May import: models, input_rules, ci_trust, config_teams, config_rules, supply_chain, config_freeze (the
freeze_windows section), config_notifications (webhooks, and the notifications section).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError

from ci_integrations.input_rules import CHECK_NAME, NAME
from ci_integrations.models import (
    Attached,
    IntegrationKind,
    Registry,
    Webhook,
    Workflow,
    validate_registry_url,
    validate_repository,
)
from ci_integrations.services.ci_trust import ci_identity_read
from ci_integrations.services.config_freeze import freeze_windows_read
from ci_integrations.services.config_notifications import notifications_read, webhook_read
from ci_integrations.services.config_rules import workflow_buckets_hold, workflow_environments, workflow_kinds_hold
from ci_integrations.services.config_teams import read_roles, read_teams
from ci_integrations.services.supply_chain import require_signature_parse

TOP_LEVEL_KEYS = {"registries", "workflows", "integrations", "teams", "roles", "freeze_windows", "notifications"}
REGISTRY_KEYS = {"name", "provider", "url", "options", "credentials"}
WORKFLOW_KEYS = {"name", "kind", "description", "steps"}
STEP_KEYS = {
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
    "approval_timeout",
    "attached",
    "require_signature",
}
INTEGRATION_KEYS = {"name", "kind", "workflow", "description", "buckets", "webhooks", "ci_identities"}
BUCKET_KEYS = {
    "env",
    "registry",
    "repository",
    "immutable_tags",
    "allow_push_credentials",
    "allow_direct_register",
    "push_role_arn",
    "push_service_account",
    "attached",
    "create_repository",
    "scan_on_push",
    "encryption",
    "kms_key",
}

# `approver_group: "@release_managers"`: the release managers of the integration's team.
TEAM_RELEASE_MANAGERS = "@release_managers"
DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
DURATION_SIZES = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60))
ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


@dataclass
class ConfigSpecs:
    """What a file asks for, each kind keyed by name, as plain dicts in the shape the applier writes; `problems`
    lists every "path: what is wrong" found, and the specs may be written only when it is empty."""

    registries: dict[str, dict]
    workflows: dict[str, dict]
    integrations: dict[str, dict]
    problems: list[str]
    teams: dict[str, dict] | None = None  # None: the file has no teams section, so teams stay as they are
    roles: dict[str, list[str]] | None = None
    freeze_windows: dict[str, dict] | None = None  # None: the file has no freeze_windows key
    notifications: dict[str, dict] | None = None  # None: the file has no notifications key


def config_read(data: dict) -> ConfigSpecs:
    """Check a whole document against every rule, and against the rows it refers to, collecting every problem."""
    reader = _Reader(data)
    reader.known_keys("(top level)", data, TOP_LEVEL_KEYS)
    registries = reader.registries()
    workflows = reader.workflows()
    integrations = reader.integrations(registries, workflows)
    workflow_kinds_hold(reader, workflows, integrations)
    workflow_buckets_hold(reader, workflows, integrations)
    teams = read_teams(reader, integrations)
    roles = read_roles(reader)
    freeze_windows = freeze_windows_read(reader, data)
    notifications = notifications_read(reader, data)
    return ConfigSpecs(
        registries,
        workflows,
        integrations,
        reader.problems,
        teams=teams,
        roles=roles,
        freeze_windows=freeze_windows,
        notifications=notifications,
    )


def format_duration(value: timedelta | None) -> str | None:
    """A duration as the file writes it, in its largest whole unit (`1h`, `90m`, `45s`); None stays None."""
    if value is None:
        return None
    seconds = int(value.total_seconds())
    for unit, size in DURATION_SIZES:
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class _Reader:
    """Checks values one rule at a time. Each check records its problem and returns a value to go on with (None or
    the default), so one bad value never hides the problems after it."""

    def __init__(self, data: dict):
        self.data = data
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        """Record one problem at `path`."""
        self.problems.append(f"{path}: {message}")

    # The shapes: lists, mappings and their keys.

    def listed(self, path: str, value: Any) -> list:
        """A list-valued key: absent (or null) is an empty list; anything else that is not a list is one problem."""
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(path, "must be a list")
            return []
        return value

    def mappings(self, path: str, value: Any) -> Iterator[tuple[int, str, dict]]:
        """The items of a list of mappings, each with its index and path; an item that is not a mapping is a
        problem, recorded as the iteration reaches it."""
        for index, item in enumerate(self.listed(path, value)):
            if isinstance(item, dict):
                yield index, f"{path}[{index}]", item
            else:
                self.problem(f"{path}[{index}]", "must be a mapping")

    def items(self, key: str) -> list[tuple[str, dict]]:
        """The mappings listed under a top-level key, each with its path."""
        return [(path, item) for _, path, item in self.mappings(key, self.data.get(key))]

    def known_keys(self, path: str, item: dict, allowed: set[str]) -> None:
        """Each key of `item` that is not in `allowed` is a problem of its own."""
        for key in sorted(set(item) - allowed):
            self.problem(f"{path}.{key}", f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    # The values.

    def name(self, path: str, value: Any, *, word: str | None = None) -> str | None:
        """A name by input_rules.NAME; `word` says what it names where "name" is too vague ("environment")."""
        if not NAME.is_valid(value):
            self.problem(path, NAME.problem(value, word=word))
            return None
        return value

    def unique_name(self, path: str, value: Any, found: dict, what: str) -> str | None:
        """An item's name, which no earlier item of the same kind (`what`: "registry", …) may have."""
        name = self.name(path, value)
        if name in found:
            self.problem(path, f"{what} {name!r} is listed twice")
        return name

    def choice(self, path: str, value: Any, choices: list[str]) -> str | None:
        """One of `choices`."""
        if value not in choices:
            self.problem(path, f"{value!r} is not one of {', '.join(choices)}")
            return None
        return value

    def attached(self, path: str, value: Any) -> str:
        """Which attachments travel (all, signatures, none); absent means as the bucket says, or all."""
        if value is None:
            return Attached.INHERIT
        return self.choice(path, value, [c for c in Attached.values if c]) or Attached.INHERIT

    def boolean(self, path: str, value: Any, default: bool) -> bool:
        """true or false; a string or a number is refused rather than guessed at."""
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(path, f"{value!r} must be true or false")
            return default
        return value

    def count(self, path: str, value: Any, default: int | None) -> int | None:
        """A whole number of 0 or more (true and false are not numbers, though Python counts them as such)."""
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.problem(path, f"{value!r} must be a whole number of 0 or more")
            return default
        return value

    def duration(self, path: str, value: Any) -> timedelta | None:
        """A duration such as `90s`, `30m`, `1h`, `2d` or `1w`; absent, empty or 0 is none."""
        if value in (None, "", 0):
            return None
        match = DURATION.match(str(value).strip())
        if not match:
            self.problem(path, f"{value!r} is not a duration like 90s, 30m, 1h, 2d or 1w")
            return None
        return timedelta(**{DURATION_UNITS[match.group(2)]: int(match.group(1))})

    def mapping(self, path: str, value: Any) -> dict:
        """A mapping; absent (or empty) is an empty one."""
        value = value or {}
        if not isinstance(value, dict):
            self.problem(path, "must be a mapping")
            return {}
        return value

    def model_rule(self, path: str, validator, value: Any) -> None:
        """A rule the model holds too (repository paths, registry URLs); checked here as well so that it is reported
        with its path, alongside every other problem."""
        try:
            validator(value if isinstance(value, str) else "")
        except ValidationError as exc:
            self.problem(path, exc.messages[0])

    def secret_text(self, path: str, value: Any) -> str | None:
        """A secret: the text itself, or `${NAME}` for the value of that environment variable."""
        if not isinstance(value, str):
            self.problem(path, "must be a string")
            return None
        reference = ENV_REFERENCE.match(value)
        if not reference:
            return value
        if reference.group(1) not in os.environ:
            self.problem(path, f"environment variable {reference.group(1)} is not set")
            return None
        return os.environ[reference.group(1)]

    # Registries.

    def registries(self) -> dict[str, dict]:
        """The file's registries by name."""
        found: dict[str, dict] = {}
        for path, item in self.items("registries"):
            self.known_keys(path, item, REGISTRY_KEYS)
            name = self.unique_name(f"{path}.name", item.get("name"), found, "registry")
            provider = self.choice(f"{path}.provider", item.get("provider", "generic"), Registry.Provider.values)
            url = item.get("url")
            self.model_rule(f"{path}.url", validate_registry_url, url)
            options = self.mapping(f"{path}.options", item.get("options"))
            credentials = self.credentials(f"{path}.credentials", item.get("credentials", "ambient"), name)
            if name:
                found[name] = {
                    "provider": provider,
                    "url": url.rstrip("/") if isinstance(url, str) else url,
                    "options": options,
                    "credentials": credentials,
                }
        return found

    def credentials(self, path: str, value: Any, registry: str | None) -> str | dict:
        """`ambient`, `stored` (keep what is stored, which must exist: export writes this, as it never writes a
        secret) or a mapping of secrets such as {username, password}."""
        if value == "stored":
            if not Registry.objects.filter(name=registry).exclude(credentials_encrypted="").exists():
                self.problem(path, "stored, but no credentials are stored for this registry yet")
            return value
        if value == "ambient":
            return value
        if not isinstance(value, dict) or not value:
            self.problem(path, "must be ambient, stored, or a mapping such as {username, password}")
            return "ambient"
        return {str(key): self.secret_text(f"{path}.{key}", secret) for key, secret in value.items()}

    # Workflows.

    def workflows(self) -> dict[str, dict]:
        """The file's workflows by name, each with its path (for problems found once integrations are read)."""
        found: dict[str, dict] = {}
        for path, item in self.items("workflows"):
            self.known_keys(path, item, WORKFLOW_KEYS)
            name = self.unique_name(f"{path}.name", item.get("name"), found, "workflow")
            kind = self.choice(f"{path}.kind", item.get("kind", "environment"), IntegrationKind.values)
            steps: list[dict] = []
            for _, step_path, step in self.mappings(f"{path}.steps", item.get("steps")):
                steps.append(self.step(step_path, step, steps))
            if name:
                found[name] = {
                    "path": path,
                    "kind": kind,
                    "description": str(item.get("description") or ""),
                    "steps": steps,
                }
        return found

    def step(self, path: str, step: dict, earlier: list[dict]) -> dict:
        """One workflow step, after the `earlier` ones."""
        self.known_keys(path, step, STEP_KEYS)
        from_env = self.name(f"{path}.from", step.get("from"), word="environment")
        to_env = self.name(f"{path}.to", step.get("to"), word="environment")
        if from_env and to_env:
            self.step_route(path, from_env, to_env, earlier)
        checks = self.listed(f"{path}.required_checks", step.get("required_checks"))
        for index, check in enumerate(checks):
            if not CHECK_NAME.is_valid(check):
                self.problem(f"{path}.required_checks[{index}]", CHECK_NAME.problem(check))
        tag_rule = str(step.get("tag_rule") or "")
        try:
            re.compile(tag_rule)
        except re.error as exc:
            self.problem(f"{path}.tag_rule", f"not a valid regular expression: {exc}")
        group = step.get("approver_group")
        if group is not None and not isinstance(group, str):
            self.problem(f"{path}.approver_group", "must be a group name")
            group = None
        from_team = group == TEAM_RELEASE_MANAGERS
        if isinstance(group, str) and group.startswith("@") and not from_team:
            self.problem(
                f"{path}.approver_group", f"{group!r}: the only team-relative group is {TEAM_RELEASE_MANAGERS}"
            )
            group = None
        return {
            "from_env": from_env,
            "to_env": to_env,
            "required_approvals": self.count(f"{path}.approvals", step.get("approvals"), 0),
            "rollback_approvals": self.count(f"{path}.rollback_approvals", step.get("rollback_approvals"), None),
            "approver_group": None if from_team else group,
            "approvers_from_team": from_team,
            "required_checks": checks,
            "min_soak": self.duration(f"{path}.min_soak", step.get("min_soak")),
            "self_approval": self.boolean(f"{path}.self_approval", step.get("self_approval"), False),
            "auto_promote": self.boolean(f"{path}.auto", step.get("auto"), False),
            "tag_rule": tag_rule,
            "approval_timeout": self.duration(f"{path}.approval_timeout", step.get("approval_timeout")),
            "attached": self.attached(f"{path}.attached", step.get("attached")),
            "require_signature": require_signature_parse(
                step.get("require_signature"),
                lambda suffix, message: self.problem(f"{path}.require_signature{suffix}", message),
            ),
        }

    def step_route(self, path: str, from_env: str, to_env: str, earlier: list[dict]) -> None:
        """A workflow is one route: each step moves to an environment no other step reaches, from where the first
        step starts or from where an earlier step arrives."""
        if from_env == to_env:
            self.problem(path, "from and to must differ")
        if any(step["to_env"] == to_env for step in earlier):
            self.problem(f"{path}.to", f"environment {to_env!r} is already reached by another step")
        # An earlier step whose own start was refused is not on the route, so it reaches nothing.
        reached = {step["to_env"] for step in earlier if step["from_env"]}
        if earlier and from_env not in reached and from_env != earlier[0]["from_env"]:
            self.problem(f"{path}.from", f"{from_env!r} is not reached by an earlier step")

    # Integrations.

    def integrations(self, registries: dict, workflows: dict) -> dict[str, dict]:
        """The file's integrations by name; their registries and workflows are the file's or the database's."""
        known_registries = set(registries) | set(Registry.objects.values_list("name", flat=True))
        found: dict[str, dict] = {}
        for path, item in self.items("integrations"):
            self.known_keys(path, item, INTEGRATION_KEYS)
            name = self.unique_name(f"{path}.name", item.get("name"), found, "integration")
            kind = self.choice(f"{path}.kind", item.get("kind", "environment"), IntegrationKind.values)
            workflow = self.integration_workflow(f"{path}.workflow", item.get("workflow"), kind, workflows)
            buckets: list[dict] = []
            for index, bucket_path, bucket in self.mappings(f"{path}.buckets", item.get("buckets")):
                buckets.append(self.bucket(bucket_path, bucket, index, buckets, known_registries))
            if workflow:
                have = {bucket["env"] for bucket in buckets}
                for env in dict.fromkeys(workflow_environments(workflow, workflows)):
                    if env not in have:
                        self.problem(f"{path}.buckets", f"workflow {workflow!r} needs a bucket for {env!r}")
            stored = {
                hook.url: hook for hook in Webhook.objects.filter(integration__name=item.get("name") or "", name="")
            }
            webhooks = [
                webhook_read(self, hook_path, hook, stored=stored.get(hook.get("url")))
                for _, hook_path, hook in self.mappings(f"{path}.webhooks", item.get("webhooks"))
            ]
            ci_identities = []
            for _, identity_path, identity in self.mappings(f"{path}.ci_identities", item.get("ci_identities")):
                spec, problems = ci_identity_read(identity_path, identity)
                self.problems += problems
                ci_identities.append(spec)
            if name:
                found[name] = {
                    "kind": kind,
                    "workflow": workflow,
                    "description": str(item.get("description") or ""),
                    "buckets": buckets,
                    "webhooks": webhooks,
                    "ci_identities": ci_identities,
                }
        return found

    def integration_workflow(self, path: str, value: Any, kind: str | None, workflows: dict) -> str | None:
        """The name of an integration's workflow, which must exist (in the file or the database) and be for the
        integration's kind; None when it has none, or when it is refused."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem(path, f"{value!r} must be a workflow name")
            return None
        if value in workflows:
            workflow_kind = workflows[value]["kind"]
        else:
            workflow_kind = Workflow.objects.filter(name=value).values_list("kind", flat=True).first()
            if workflow_kind is None:
                self.problem(path, f"unknown workflow {value!r}")
                return None
        if kind and workflow_kind and workflow_kind != kind:
            self.problem(path, f"workflow {value!r} is for kind {workflow_kind}, not {kind}")
        return value

    def bucket(self, path: str, bucket: dict, position: int, earlier: list[dict], known_registries: set[str]) -> dict:
        """One bucket of an integration, after the `earlier` ones; its position is its place in the file's list."""
        self.known_keys(path, bucket, BUCKET_KEYS)
        env = self.name(f"{path}.env", bucket.get("env"), word="environment")
        if env and any(other["env"] == env for other in earlier):
            self.problem(f"{path}.env", f"environment {env!r} has two buckets")
        registry = bucket.get("registry")
        if not isinstance(registry, str) or registry not in known_registries:
            self.problem(f"{path}.registry", f"unknown registry {registry!r}")
        repository = bucket.get("repository")
        self.model_rule(f"{path}.repository", validate_repository, repository)
        return {
            "env": env,
            "position": position,
            "registry": registry,
            "repository": repository,
            "immutable_tags": self.boolean(f"{path}.immutable_tags", bucket.get("immutable_tags"), False),
            "allow_push_credentials": self.boolean(
                f"{path}.allow_push_credentials", bucket.get("allow_push_credentials"), False
            ),
            "allow_direct_register": self.boolean(
                f"{path}.allow_direct_register", bucket.get("allow_direct_register"), False
            ),
            "push_role_arn": str(bucket.get("push_role_arn") or ""),  # checked by the model's validator
            "push_service_account": str(bucket.get("push_service_account") or ""),
            "attached": self.attached(f"{path}.attached", bucket.get("attached")),
            "create_repository": self.boolean(f"{path}.create_repository", bucket.get("create_repository"), False),
            "scan_on_push": self.boolean(f"{path}.scan_on_push", bucket.get("scan_on_push"), False),
            "encryption": self.encryption(f"{path}.encryption", bucket.get("encryption")),
            "kms_key": str(bucket.get("kms_key") or ""),
        }

    def encryption(self, path: str, value: Any) -> str:
        """A new repository's encryption: AES256 or KMS (ECR's names), or none for the registry's default."""
        if value is None or value == "":
            return ""
        if not isinstance(value, str) or value.upper() not in ("AES256", "KMS"):
            self.problem(path, f"{value!r} must be AES256 or KMS")
            return ""
        return value.upper()
