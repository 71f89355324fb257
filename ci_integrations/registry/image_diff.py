"""What changes between two images: config, layers, platforms, and what their SBOMs and vulnerability reports say.

Everything is read from the registry by digest, so a diff of two digests never changes, except for what is
attached later (an SBOM or a scan added after the push); the caller caches it by digest pair for a while.
Reads are bounded: a config blob by MAX_CONFIG_BYTES, each report (see reports.py) by its own cap.

Each section is computed on its own: a section that cannot be computed carries `unavailable` (one line saying why)
and the others still show.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .client import Manifest, RegistryClient
from .client_cache import shared_client
from .errors import ProtocolError, RegistryError
from .refs import ImageLocation, check_reference, check_repository
from .reports import Reports, attached_reports, packages_diff, vulnerabilities_diff

MAX_CONFIG_BYTES = 1024 * 1024  # an image config is a few KiB; history-heavy ones reach a few hundred
PREFERRED_PLATFORM = "linux/amd64"
# Labels an approver looks at first: what the image was built from and when.
HIGHLIGHTED_LABELS = (
    "org.opencontainers.image.revision",
    "org.opencontainers.image.version",
    "org.opencontainers.image.created",
    "org.opencontainers.image.base.digest",
)
CONFIG_FIELDS = (("entrypoint", "Entrypoint"), ("cmd", "Cmd"), ("user", "User"), ("workdir", "WorkingDir"))


@dataclass
class ImageFacts:
    """What one image is made of, as far as a diff needs: its platforms, and for one platform, config and layers."""

    digest: str
    platforms: list[str] = field(default_factory=list)  # of an index; empty for a single image
    platform: str = ""  # the platform whose config and layers were read
    layers: list[tuple[str, int]] = field(default_factory=list)  # (digest, size) in order
    config: dict = field(default_factory=dict)  # the image config's "config" object
    reports: Reports = field(default_factory=Reports)


def _platform_name(descriptor: dict) -> str:
    platform = descriptor.get("platform") if isinstance(descriptor.get("platform"), dict) else {}
    parts = [str(platform.get("os") or "?"), str(platform.get("architecture") or "?")]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def read_facts(client: RegistryClient, repository: str, digest: str, *, platform: str = "") -> ImageFacts:
    """The facts of the image `digest`; for an index, of the `platform` child (else linux/amd64, else the first)."""
    top = client.get_manifest(repository, digest)
    facts = ImageFacts(digest=digest)
    manifest = top
    if top.is_index:
        children = [c for c in top.parsed().get("manifests") or [] if isinstance(c, dict) and c.get("digest")]
        # Attestation manifests buildx adds to an index are "unknown/unknown": not a platform anyone runs.
        runnable = [(c, _platform_name(c)) for c in children if _platform_name(c) not in ("unknown/unknown", "?/?")]
        facts.platforms = sorted({name for _, name in runnable})
        chosen = next((c for c, name in runnable if name == platform), None)
        chosen = chosen or next((c for c, name in runnable if name == PREFERRED_PLATFORM), None)
        chosen = chosen or (runnable[0][0] if runnable else None)
        if chosen is None:
            return facts
        facts.platform = _platform_name(chosen)
        check_reference(str(chosen["digest"]))
        manifest = client.get_manifest(repository, str(chosen["digest"]))
        if manifest.is_index:
            raise ProtocolError(f"index {digest} nests another index")
    _read_image(client, repository, manifest, facts)
    return facts


def _read_image(client: RegistryClient, repository: str, manifest: Manifest, facts: ImageFacts) -> None:
    body = manifest.parsed()
    facts.layers = [(d.digest, d.size) for d in manifest.blobs()[1:]] if isinstance(body.get("config"), dict) else []
    config = body.get("config") if isinstance(body.get("config"), dict) else None
    if config is None or not str(config.get("digest") or "").startswith("sha"):
        return
    check_reference(str(config["digest"]))
    raw = client.read_blob(repository, str(config["digest"]), limit=MAX_CONFIG_BYTES, what="image config")
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise ProtocolError(f"image config {config['digest']} is not JSON") from None
    inner = parsed.get("config") if isinstance(parsed, dict) else None
    facts.config = inner if isinstance(inner, dict) else {}


# --- comparing -------------------------------------------------------------------------------------------------------


def _labels(config: dict) -> dict[str, str]:
    labels = config.get("Labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _env_names(config: dict) -> set[str]:
    env = config.get("Env") if isinstance(config.get("Env"), list) else []
    return {str(item).partition("=")[0] for item in env}


def _env_values(config: dict) -> dict[str, str]:
    env = config.get("Env") if isinstance(config.get("Env"), list) else []
    return dict(str(item).partition("=")[::2] for item in env)


def _ports(config: dict) -> set[str]:
    ports = config.get("ExposedPorts")
    return {str(p) for p in ports} if isinstance(ports, dict) else set()


def config_diff(before: dict, after: dict) -> dict:
    """Labels added, removed and changed; env names added, removed and changed (values never shown); entrypoint,
    cmd, user and working dir when they differ; exposed ports added and removed."""
    old, new = _labels(before), _labels(after)
    labels = {
        "added": [
            {"name": k, "value": new[k], "highlight": k in HIGHLIGHTED_LABELS} for k in sorted(set(new) - set(old))
        ],
        "removed": [
            {"name": k, "value": old[k], "highlight": k in HIGHLIGHTED_LABELS} for k in sorted(set(old) - set(new))
        ],
        "changed": [
            {"name": k, "before": old[k], "after": new[k], "highlight": k in HIGHLIGHTED_LABELS}
            for k in sorted(set(old) & set(new))
            if old[k] != new[k]
        ],
    }
    old_env, new_env = _env_values(before), _env_values(after)
    env = {
        "added": sorted(_env_names(after) - _env_names(before)),
        "removed": sorted(_env_names(before) - _env_names(after)),
        "changed": sorted(k for k in set(old_env) & set(new_env) if old_env[k] != new_env[k]),
    }
    settings = [
        {"name": name, "before": before.get(key), "after": after.get(key)}
        for name, key in CONFIG_FIELDS
        if (before.get(key) or None) != (after.get(key) or None)
    ]
    ports = {"added": sorted(_ports(after) - _ports(before)), "removed": sorted(_ports(before) - _ports(after))}
    return {"labels": labels, "env": env, "settings": settings, "ports": ports}


def layers_diff(before: list[tuple[str, int]], after: list[tuple[str, int]]) -> dict:
    """Layers both share, and those added and removed, with sizes and the change in total size."""
    old, new = dict(before), dict(after)
    shared = [{"digest": d, "size": s} for d, s in after if d in old]
    added = [{"digest": d, "size": s} for d, s in after if d not in old]
    removed = [{"digest": d, "size": s} for d, s in before if d not in new]
    return {
        "shared": shared,
        "added": added,
        "removed": removed,
        "shared_bytes": sum(x["size"] for x in shared),
        "added_bytes": sum(x["size"] for x in added),
        "removed_bytes": sum(x["size"] for x in removed),
        "total_before": sum(old.values()),
        "total_after": sum(new.values()),
        "total_change": sum(new.values()) - sum(old.values()),
    }


def image_diff(before: ImageLocation | None, after: ImageLocation) -> dict:
    """The image part of the diff between what runs now (`before`, None when nothing does) and the candidate.

    Never raises for registry trouble: the whole answer, or a section, then says `unavailable` and why.
    """
    for location in (before, after):
        if location is not None:
            check_repository(location.repository)
            check_reference(location.reference)
    try:
        new = _facts_with_reports(after)
        old = _facts_with_reports(before, platform=new.platform) if before is not None else ImageFacts(digest="")
    except RegistryError as exc:
        return {"unavailable": f"the images could not be read from the registry: {exc.message}"}
    return {
        "platform": new.platform,
        "platforms": {
            "before": old.platforms,
            "after": new.platforms,
            "added": sorted(set(new.platforms) - set(old.platforms)) if old.platforms else [],
            "removed": sorted(set(old.platforms) - set(new.platforms)) if new.platforms else [],
        },
        "config": config_diff(old.config, new.config),
        "layers": layers_diff(old.layers, new.layers),
        "sbom": _reports_section(old, new, "sbom", packages_diff),
        "vulnerabilities": _reports_section(old, new, "vulnerabilities", vulnerabilities_diff),
    }


def _facts_with_reports(location: ImageLocation, *, platform: str = "") -> ImageFacts:
    client = shared_client(location.registry)
    facts = read_facts(client, location.repository, location.reference, platform=platform)
    facts.reports = attached_reports(client, location.repository, location.reference)
    return facts


def _reports_section(old: ImageFacts, new: ImageFacts, kind: str, compare) -> dict:
    """The SBOM or vulnerability comparison; unavailable when the candidate carries no such report."""
    after = getattr(new.reports, kind)
    before = getattr(old.reports, kind)
    if after is None:
        what = "SBOM" if kind == "sbom" else "vulnerability report"
        why = f"the candidate carries no readable {what}" + (f" ({new.reports.problem})" if new.reports.problem else "")
        return {"unavailable": why}
    result = compare(before or {}, after)
    result["source"] = new.reports.sources.get(kind, "")
    if before is None and old.digest:
        result["note"] = "what runs now has none attached: everything counts as new"
    return result
