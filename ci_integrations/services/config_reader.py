"""Reading a config file: the rules its registries, workflows and integrations must meet.

`config_read` turns the file's plain data into the specs that `config_apply` writes and lists every problem at once,
each as "path: what is wrong" (`integrations[0].buckets[2].registry: unknown registry 'prd'`). It writes nothing; it
reads the database only for rows the file refers to without listing them.

May import: models, input_rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError

from ci_integrations.input_rules import CHECK_NAME, NAME, is_http_url
from ci_integrations.models import (
    Integration,
    IntegrationKind,
    Registry,
    Webhook,
    Workflow,
    WorkflowStep,
    validate_registry_url,
    validate_repository,
)

TOP_LEVEL_KEYS = {"registries", "workflows", "integrations"}
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
}
INTEGRATION_KEYS = {"name", "kind", "workflow", "description", "buckets", "webhooks"}
BUCKET_KEYS = {
    "env",
    "registry",
    "repository",
    "immutable_tags",
    "allow_push_credentials",
    "allow_direct_register",
    "push_role_arn",
    "push_service_account",
    "create_repository",
    "scan_on_push",
    "encryption",
    "kms_key",
}
WEBHOOK_KEYS = {"url", "secret", "events"}

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


def config_read(data: dict) -> ConfigSpecs:
    """Check a whole document against every rule, and against the rows it refers to, collecting every problem."""
    reader = _Reader(data)
    reader.known_keys("(top level)", data, TOP_LEVEL_KEYS)
    registries = reader.registries()
    workflows = reader.workflows()
    integrations = reader.integrations(registries, workflows)
    reader.workflow_kinds_hold(workflows, integrations)
    reader.workflow_buckets_hold(workflows, integrations)
    return ConfigSpecs(registries, workflows, integrations, reader.problems)


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
        return {
            "from_env": from_env,
            "to_env": to_env,
            "required_approvals": self.count(f"{path}.approvals", step.get("approvals"), 0),
            "rollback_approvals": self.count(f"{path}.rollback_approvals", step.get("rollback_approvals"), None),
            "approver_group": group,
            "required_checks": checks,
            "min_soak": self.duration(f"{path}.min_soak", step.get("min_soak")),
            "self_approval": self.boolean(f"{path}.self_approval", step.get("self_approval"), False),
            "auto_promote": self.boolean(f"{path}.auto", step.get("auto"), False),
            "tag_rule": tag_rule,
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
                for env in dict.fromkeys(self.workflow_environments(workflow, workflows)):
                    if env not in have:
                        self.problem(f"{path}.buckets", f"workflow {workflow!r} needs a bucket for {env!r}")
            webhooks = [
                self.webhook(hook_path, hook, item.get("name"))
                for _, hook_path, hook in self.mappings(f"{path}.webhooks", item.get("webhooks"))
            ]
            if name:
                found[name] = {
                    "kind": kind,
                    "workflow": workflow,
                    "description": str(item.get("description") or ""),
                    "buckets": buckets,
                    "webhooks": webhooks,
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

    def webhook(self, path: str, hook: dict, integration: Any) -> dict:
        """One webhook of an integration. Its secret may be left out only when the webhook is already stored (export
        never writes a secret); `secret` None then means "keep the stored one"."""
        self.known_keys(path, hook, WEBHOOK_KEYS)
        url = hook.get("url")
        if not is_http_url(url):
            self.problem(f"{path}.url", f"{url!r} is not an http(s) URL")
        events = self.listed(f"{path}.events", hook.get("events"))
        unknown = [event for event in events if event not in Webhook.EVENTS]
        if unknown:
            self.problem(f"{path}.events", f"unknown events {unknown}; known: {', '.join(Webhook.EVENTS)}")
        secret = None
        if "secret" in hook:
            secret = self.secret_text(f"{path}.secret", hook["secret"])
        elif not (isinstance(url, str) and Webhook.objects.filter(integration__name=integration, url=url).exists()):
            self.problem(f"{path}.secret", "a new webhook needs a secret (${NAME} reads it from the env)")
        return {"url": url, "secret": secret, "events": [] if unknown else events}

    # Rules across the file and the database.

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
            for other, other_kind in users.exclude(name__in=list(integrations)).values_list("name", "kind")[:5]:
                self.problem(
                    f"{spec['path']}.kind",
                    f"integration {other!r} (not in this file) uses workflow {name!r} with kind {other_kind}",
                )

    def workflow_buckets_hold(self, workflows: dict, integrations: dict) -> None:
        """A workflow the file changes must not reach an environment where integrations outside the file have no
        bucket (the file's own integrations are checked against their buckets as they are read)."""
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
