"""The preflight of a promotion: what its copy would meet (source readable, target writable, tag conflict, bytes
to move, attachments, a repository to create), within the web request's budget for registry calls.

May import: models, registry, policy, registry_budget, supply_chain.
"""

from __future__ import annotations

from ci_integrations.encryption import CredentialsUnreadable
from ci_integrations.models import Artifact
from ci_integrations.registry import check_access, list_attachments, plan_copy
from ci_integrations.registry import errors as registry_errors
from ci_integrations.registry.repositories import repository_state
from ci_integrations.services.actors import Actor
from ci_integrations.services.policy import promotion_evaluate
from ci_integrations.services.registry_budget import web_budget
from ci_integrations.services.supply_chain import attached_mode


def promotion_preflight(*, artifact: Artifact, to_env: str) -> dict:
    """What a copy would meet: source readable, target writable, tag conflict, bytes to move. Never raises for
    registry trouble; each problem becomes an entry in `errors`."""
    ev = promotion_evaluate(artifact=artifact, to_env=to_env, actor=Actor.system("preflight"))
    with web_budget("preflight"):
        return _preflight(artifact, ev, to_env)


def _preflight(artifact: Artifact, ev, to_env: str) -> dict:
    result = {
        "source_readable": None,
        "target_writable": None,
        "tag_conflict": None,
        "tag": ev.tag,
        "blobs_total": None,
        "bytes_total": None,
        "bytes_to_move": None,
        "attachments": None,
        "errors": [],
        "notes": [],
    }
    if ev.from_bucket is None or ev.to_bucket is None:
        result["errors"].append("no workflow step with both buckets leads into " + to_env)
        return result
    locations = {}
    for key, bucket, reference, push in (
        ("source_readable", ev.from_bucket, artifact.digest, False),
        ("target_writable", ev.to_bucket, ev.tag or artifact.digest, True),
    ):
        side = "source" if key == "source_readable" else "target"
        try:
            # Building the location reads the registry's stored credentials, which fails when they were encrypted
            # under a key no longer in P2P_FERNET_KEYS.
            locations[key] = bucket.location(reference)
            if push and _repository_preflight(result, bucket, locations[key]):
                continue
            check_access(locations[key], push=push)
            result[key] = True
        except CredentialsUnreadable as exc:
            result[key] = False
            result["errors"].append(f"{side}: registry {bucket.registry.name!r}: {exc}")
        except registry_errors.RegistryError as exc:
            result[key] = False
            result["errors"].append(f"{side}: {exc.message}")
        except Exception as exc:  # noqa: BLE001 - a preflight reports, it never fails the page
            result[key] = False
            result["errors"].append(registry_errors.redact(f"{key}: {exc}"))
    if len(locations) < 2:
        return result
    try:
        plan = plan_copy(locations["source_readable"], locations["target_writable"])
        result.update(
            tag_conflict=plan.tag_conflict_digest,
            blobs_total=plan.blobs_total,
            bytes_total=plan.bytes_total,
            bytes_to_move=plan.bytes_to_move,
        )
        if plan.layer_too_large:
            result["errors"].append(f"plan: {plan.layer_too_large}")
    except registry_errors.RegistryError as exc:
        result["errors"].append(f"plan: {exc.message}")
    except Exception as exc:  # noqa: BLE001
        result["errors"].append(registry_errors.redact(f"plan: {exc}"))
    try:
        mode = attached_mode(step=ev.step, bucket=ev.to_bucket)
        result["attachments"] = len(list_attachments(locations["source_readable"], mode))
    except registry_errors.RegistryError as exc:
        result["errors"].append(f"attachments: {exc.message}")
    return result


def _repository_preflight(result: dict, bucket, location) -> bool:
    """Whether the target repository's absence (ECR, Artifact Registry) already answers "writable": a repository the
    copy will create is (a note says so), one it may not create is not (an error says why)."""
    state = repository_state(location)
    if state.will_be_created:
        result["target_writable"] = True
        result["notes"].append(f"{bucket.env} repository does not exist; it will be created ({bucket.image_name})")
        return True
    if state.blocks_the_copy:
        result["target_writable"] = False
        result["errors"].append(
            f"{bucket.env} repository does not exist and the bucket does not allow creating it ({bucket.image_name};"
            " set create_repository: true on the bucket, or create it in the registry)"
        )
        return True
    return False
