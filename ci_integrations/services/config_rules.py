"""Rules of a config file that hold across the file and the database: a workflow the file changes must still suit
the integrations outside the file that use it.

May import: models.
"""

from __future__ import annotations

from ci_integrations.models import Integration, WorkflowStep


def workflow_environments(name: str, workflows: dict) -> list[str]:
    """Every environment a workflow moves between: as the file describes it, else as the database holds it."""
    if name in workflows:
        pairs = [(step["from_env"], step["to_env"]) for step in workflows[name]["steps"]]
    else:
        steps = WorkflowStep.objects.filter(workflow__name=name).order_by("position")
        pairs = list(steps.values_list("from_env", "to_env"))
    return [env for pair in pairs for env in pair if env]


def workflow_kinds_hold(reader, workflows: dict, integrations: dict) -> None:
    """A workflow whose kind the file changes must not leave integrations outside the file on the old kind."""
    for name, spec in workflows.items():
        if not spec["kind"]:
            continue
        users = Integration.objects.filter(workflow__name=name).exclude(kind=spec["kind"])
        for other, other_kind in users.exclude(name__in=list(integrations)).values_list("name", "kind")[:5]:
            reader.problem(
                f"{spec['path']}.kind",
                f"integration {other!r} (not in this file) uses workflow {name!r} with kind {other_kind}",
            )


def workflow_buckets_hold(reader, workflows: dict, integrations: dict) -> None:
    """A workflow the file changes must not reach an environment where integrations outside the file have no
    bucket (the file's own integrations are checked against their buckets as they are read)."""
    for name, spec in workflows.items():
        envs = set(workflow_environments(name, workflows))
        users = Integration.objects.filter(workflow__name=name).exclude(name__in=list(integrations))
        for integration in users.order_by("name").prefetch_related("buckets")[:5]:
            missing = sorted(envs - {bucket.env for bucket in integration.buckets.all()})
            if missing:
                reader.problem(
                    f"{spec['path']}.steps",
                    f"integration {integration.name!r} (not in this file) uses workflow {name!r} and has no "
                    f"bucket for {', '.join(repr(env) for env in missing)}",
                )
