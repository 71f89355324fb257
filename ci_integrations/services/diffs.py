"""What changes in an environment if a candidate lands there: the diff shown on the promote preview, the approval
panel and inbox, the promotion page and the API.

`before` is what the target bucket runs (for a promotion that already succeeded: what it ran just before), `after`
the candidate. The registry part (image config, layers, platforms, SBOM, vulnerabilities; registry/image_diff.py)
is kept in ImageDiff by digest pair for P2P_DIFF_CACHE_SECONDS, since an SBOM or a scan may be attached after the
push; a registry failure is never kept. The rest is read from the database each time: commits (a compare link and
the changelog CI registered), checks and metadata side by side.

Nothing here raises for registry trouble: a diff that cannot be computed says so in one line (`unavailable`).

May import: models, registry, encryption, services.errors.
"""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from ci_integrations.encryption import CredentialsUnreadable
from ci_integrations.models import Arrival, Artifact, Bucket, ImageDiff, Promotion, WorkflowStep
from ci_integrations.registry import RegistryError
from ci_integrations.registry.image_diff import image_diff
from ci_integrations.services.errors import NotFound

METADATA_FIELDS = ("git_sha", "branch", "build_url", "repo_url")


def compare_url(repo_url: str, before_sha: str, after_sha: str) -> str:
    """The web page comparing two commits on GitHub, GitLab or Bitbucket (by host name); empty for other hosts."""
    parts = urlsplit(repo_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not before_sha or not after_sha:
        return ""
    base = f"{parts.scheme}://{parts.netloc}{parts.path.removesuffix('.git').rstrip('/')}"
    a, b = quote(before_sha, safe=""), quote(after_sha, safe="")
    host = parts.hostname.lower()
    if "github" in host:
        return f"{base}/compare/{a}...{b}"
    if "gitlab" in host:
        return f"{base}/-/compare/{a}...{b}"
    if "bitbucket" in host:
        # Bitbucket Cloud names the newer commit first, the two joined by a carriage return.
        return f"{base}/branches/compare/{b}%0D{a}"
    return ""


def _commits(before: Artifact | None, after: Artifact) -> dict:
    repo_url = after.repo_url or (before.repo_url if before else "")
    before_sha = before.git_sha if before else ""
    link = compare_url(repo_url, before_sha, after.git_sha)
    result = {
        "before_sha": before_sha,
        "after_sha": after.git_sha,
        "repo_url": repo_url,
        "compare_url": link,
        "changelog": after.changelog or [],
    }
    if not link and not after.changelog:
        if not after.git_sha or not repo_url:
            result["unavailable"] = "the candidate was registered without git_sha and repo_url, and no changelog"
        elif not before_sha:
            result["unavailable"] = "what runs now has no git_sha to compare with"
        else:
            result["unavailable"] = f"no compare link for {urlsplit(repo_url).hostname} (GitHub, GitLab, Bitbucket)"
    return result


def _checks(before: Artifact | None, after: Artifact) -> list[dict]:
    old = {c.name: c for c in before.checks.all()} if before else {}
    new = {c.name: c for c in after.checks.all()}
    return [
        {
            "name": name,
            "before": old[name].status if name in old else None,
            "after": new[name].status if name in new else None,
            "after_url": new[name].url if name in new else "",
        }
        for name in sorted(set(old) | set(new))
    ]


def _metadata(before: Artifact | None, after: Artifact) -> list[dict]:
    rows = [
        {"name": key, "before": getattr(before, key) if before else None, "after": getattr(after, key)}
        for key in METADATA_FIELDS
    ]
    old_labels, new_labels = (before.labels if before else {}) or {}, after.labels or {}
    rows += [
        {"name": f"labels.{key}", "before": old_labels.get(key), "after": new_labels.get(key)}
        for key in sorted(set(old_labels) | set(new_labels))
    ]
    for row in rows:
        row["changed"] = (row["before"] or None) != (row["after"] or None)
    return rows


def _image_part(before: tuple[Bucket, Artifact] | None, after: tuple[Bucket, Artifact]) -> dict:
    """The registry part, from the cache when it is fresh enough."""
    before_digest = before[1].digest if before else ""
    fresh_after = timezone.now() - timedelta(seconds=settings.P2P_DIFF_CACHE_SECONDS)
    cached = ImageDiff.objects.filter(
        before_digest=before_digest, after_digest=after[1].digest, computed_at__gte=fresh_after
    ).first()
    if cached is not None:
        return {**cached.result, "cached_at": cached.computed_at.isoformat()}
    try:
        old = before[0].location(before_digest) if before else None
        result = image_diff(old, after[0].location(after[1].digest))
    except CredentialsUnreadable as exc:
        return {"unavailable": f"the registry's stored credentials cannot be read: {exc}"}
    except RegistryError as exc:
        return {"unavailable": exc.message}
    if "unavailable" not in result:
        try:
            with transaction.atomic():
                ImageDiff.objects.update_or_create(
                    before_digest=before_digest,
                    after_digest=after[1].digest,
                    defaults={"result": result, "computed_at": timezone.now()},
                )
        except IntegrityError:
            pass  # another request stored the same pair at the same moment
    return result


def image_change(*, target: Bucket, before: Artifact | None, source: Bucket, after: Artifact) -> dict:
    """The whole diff between `before` (in `target`, None when it runs nothing) and the candidate `after` (readable
    in `source`)."""
    same = before is not None and before.pk == after.pk
    answer = {
        "environment": target.env,
        "before": {"digest": before.digest, "artifact": before.pk} if before else None,
        "after": {"digest": after.digest, "artifact": after.pk},
        "same_image": same,
        "commits": _commits(before, after),
        "checks": _checks(before, after),
        "metadata": _metadata(before, after),
    }
    if same:
        answer["image"] = {"unavailable": f"{target.env} already runs this image: nothing in it changes"}
    else:
        answer["image"] = _image_part((target, before) if before else None, (source, after))
    return answer


def _previous_artifact(promotion: Promotion, target: Bucket) -> Artifact | None:
    """What the target ran just before the promotion landed, or what it runs now while the promotion is open."""
    if promotion.state == Promotion.State.SUCCEEDED:
        landed = Arrival.objects.filter(promotion=promotion).order_by("id").first()
        if landed is not None:
            earlier = Arrival.objects.filter(bucket_id=target.pk, id__lt=landed.id).select_related("artifact").newest()
            return earlier.artifact if earlier else None
    return target.current_arrival.artifact if target.current_arrival else None


def promotion_diff(*, promotion: Promotion) -> dict:
    """The diff of one promotion (or rollback): what its target ran against what it brings."""
    target = Bucket.objects.select_related("registry", "current_arrival__artifact").get(pk=promotion.to_bucket_id)
    # Once copied, the candidate is in the target too; before that (and for a rollback, always) it is in the source.
    source = promotion.from_bucket or target
    return image_change(
        target=target, before=_previous_artifact(promotion, target), source=source, after=promotion.artifact
    )


def preview_diff(*, artifact: Artifact, to_env: str) -> dict:
    """The diff a promotion of `artifact` into `to_env` would bring, for the promote preview; NotFound names what is
    missing (no such bucket, no step into it)."""
    try:
        target = Bucket.objects.select_related("registry", "current_arrival__artifact").get(
            integration_id=artifact.integration_id, env=to_env
        )
    except Bucket.DoesNotExist:
        raise NotFound(f"integration {artifact.integration.name!r} has no bucket {to_env!r}") from None
    step = WorkflowStep.objects.filter(workflow_id=artifact.integration.workflow_id, to_env=to_env).first()
    if step is None:
        raise NotFound(f"no workflow step of {artifact.integration.name!r} leads into {to_env!r}")
    source = (
        Bucket.objects.select_related("registry")
        .filter(integration_id=artifact.integration_id, env=step.from_env)
        .first()
    )
    if source is None:
        raise NotFound(f"integration {artifact.integration.name!r} has no bucket {step.from_env!r}")
    current = target.current_arrival.artifact if target.current_arrival else None
    return image_change(target=target, before=current, source=source, after=artifact)
