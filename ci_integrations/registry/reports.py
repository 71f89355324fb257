"""SBOMs and vulnerability reports attached to an image, read into comparable sets.

Where they are found: referrers and cosign tags (see referrers.py) of kind sbom or attestation, or whose artifact
type names a report (SARIF, Trivy). Each layer is read with a size cap and recognised by its content:
  - SPDX JSON (`spdxVersion`, `packages[].name/versionInfo`) and CycloneDX JSON (`bomFormat`, `components`, nested);
  - a DSSE envelope (cosign `.att`) or a bare in-toto Statement, whose predicate is one of those
    (`https://spdx.dev/Document`, `https://cyclonedx.org/bom`) or a cosign vulnerability attestation
    (`https://cosign.sigstore.dev/attestation/vuln/v1`, its `scanner.result` a Trivy or SARIF report);
  - Trivy JSON (`Results[].Vulnerabilities[]`) and SARIF 2.1 (`runs[].results[]`, severity from the rule's
    `security-severity` score, else the level).
A plain JSON reader does all of this: these formats are JSON documents with a few fields we need.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from .client import RegistryClient
from .errors import ProtocolError, RegistryError
from .referrers import attachments_of
from .refs import check_reference

MAX_REPORT_BYTES = 16 * 1024 * 1024  # a large SBOM (thousands of packages) is a few MiB
MAX_REPORT_LAYERS = 8  # documents read per image, whatever is attached
MAX_LISTED = 200  # entries listed per added/removed/changed list; the counts are exact
SEVERITIES = ("critical", "high", "medium", "low", "unknown")
REPORT_TYPES = ("sarif", "trivy", "vuln", "spdx", "cyclonedx", "in-toto", "dsse")
VULN_PREDICATE = "https://cosign.sigstore.dev/attestation/vuln/v1"


@dataclass
class Reports:
    """What the attached documents say: packages {name: {versions}}, findings {(id, package): severity}."""

    sbom: dict[str, set[str]] | None = None
    vulnerabilities: dict[tuple[str, str], str] | None = None
    sources: dict[str, str] = field(default_factory=dict)  # kind → the attachment (and format) it came from
    problem: str = ""  # why an attached document could not be read, if one could not


def _is_report(attachment) -> bool:
    return attachment.kind in ("sbom", "attestation") or any(t in attachment.artifact_type for t in REPORT_TYPES)


def attached_reports(client: RegistryClient, repository: str, digest: str) -> Reports:
    """The SBOM and vulnerability report attached to `digest`; the first readable one of each kind counts."""
    reports = Reports()
    read = 0
    for attachment in (a for a in attachments_of(client, repository, digest) if _is_report(a)):
        try:
            manifest = client.get_manifest(repository, attachment.reference)
            layers = manifest.parsed().get("layers") or []
        except RegistryError as exc:
            reports.problem = reports.problem or f"attachment {attachment.digest}: {exc.message}"
            continue
        for layer in layers if isinstance(layers, list) else []:
            if read >= MAX_REPORT_LAYERS or (reports.sbom is not None and reports.vulnerabilities is not None):
                return reports
            if not isinstance(layer, dict) or not str(layer.get("digest") or "").startswith("sha"):
                continue
            read += 1
            try:
                size = int(layer.get("size") or 0)
                if size > MAX_REPORT_BYTES:
                    raise ProtocolError(f"{size} bytes, over the {MAX_REPORT_BYTES}-byte limit for a report")
                check_reference(str(layer["digest"]))
                raw = client.read_blob(repository, str(layer["digest"]), limit=MAX_REPORT_BYTES, what="report")
            except (RegistryError, ValueError) as exc:
                why = exc.message if isinstance(exc, RegistryError) else str(exc)
                reports.problem = reports.problem or f"attachment {attachment.digest} could not be read: {why}"
                continue
            _recognise(raw, reports, f"{attachment.kind} {attachment.digest}")
    return reports


def _recognise(raw: bytes, reports: Reports, where: str) -> None:
    try:
        document = json.loads(raw)
    except ValueError:
        return  # not JSON: SPDX tag-value, a signature payload, a binary; nothing to compare
    document = _unwrap(document)
    if not isinstance(document, dict):
        return
    predicate_type = document.get("predicateType")
    if isinstance(predicate_type, str) and "predicate" in document:
        predicate = document["predicate"]
        if predicate_type == VULN_PREDICATE and isinstance(predicate, dict):
            scanner = predicate.get("scanner") if isinstance(predicate.get("scanner"), dict) else {}
            predicate = scanner.get("result")
        document = _unwrap(predicate)
        where = f"{where} ({predicate_type})"
        if not isinstance(document, dict):
            return
    packages = packages_of(document)
    if packages is not None and reports.sbom is None:
        reports.sbom = packages
        reports.sources["sbom"] = f"{where}, {'SPDX' if 'spdxVersion' in document else 'CycloneDX'}"
    findings = findings_of(document)
    if findings is not None and reports.vulnerabilities is None:
        reports.vulnerabilities = findings
        reports.sources["vulnerabilities"] = f"{where}, {'SARIF' if 'runs' in document else 'Trivy'}"


def _unwrap(document):
    """A DSSE envelope's payload (base64 JSON), or the document itself."""
    if isinstance(document, dict) and isinstance(document.get("payload"), str) and "payloadType" in document:
        try:
            return json.loads(base64.b64decode(document["payload"], validate=True))
        except (binascii.Error, ValueError):
            return None
    return document


# --- SBOM ------------------------------------------------------------------------------------------------------------


def packages_of(document: dict) -> dict[str, set[str]] | None:
    """{package name: versions} of an SPDX or CycloneDX JSON document; None when it is neither."""
    if "spdxVersion" in document:
        entries = [(p.get("name"), p.get("versionInfo")) for p in _dicts(document.get("packages"))]
    elif document.get("bomFormat") == "CycloneDX":
        entries = [(c.get("name"), c.get("version")) for c in _components(document.get("components"))]
    else:
        return None
    packages: dict[str, set[str]] = {}
    for name, version in entries:
        if isinstance(name, str) and name:
            packages.setdefault(name, set()).add(str(version) if version else "")
    return packages


def _dicts(value) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _components(value, depth: int = 0) -> list[dict]:
    found = []
    for component in _dicts(value):
        found.append(component)
        if depth < 8:
            found.extend(_components(component.get("components"), depth + 1))
    return found


def _versions(versions: set[str]) -> str:
    return ", ".join(sorted(v for v in versions if v)) or "?"


def packages_diff(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict:
    """Packages added, removed and whose version changed."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(name for name in set(before) & set(after) if before[name] != after[name])
    return {
        "counts": {"added": len(added), "removed": len(removed), "changed": len(changed), "total": len(after)},
        "added": [{"name": n, "version": _versions(after[n])} for n in added[:MAX_LISTED]],
        "removed": [{"name": n, "version": _versions(before[n])} for n in removed[:MAX_LISTED]],
        "changed": [
            {"name": n, "before": _versions(before[n]), "after": _versions(after[n])} for n in changed[:MAX_LISTED]
        ],
    }


# --- vulnerabilities -------------------------------------------------------------------------------------------------


def findings_of(document: dict) -> dict[tuple[str, str], str] | None:
    """{(vulnerability id, package): severity} of a Trivy JSON or SARIF report; None when it is neither."""
    if isinstance(document.get("Results"), list):
        findings = {}
        for result in _dicts(document["Results"]):
            for vuln in _dicts(result.get("Vulnerabilities")):
                key = (str(vuln.get("VulnerabilityID") or "?"), str(vuln.get("PkgName") or ""))
                findings[key] = _severity(vuln.get("Severity"))
        return findings
    if isinstance(document.get("runs"), list) and "version" in document:
        findings = {}
        for run in _dicts(document["runs"]):
            driver = (run.get("tool") or {}).get("driver") if isinstance(run.get("tool"), dict) else None
            rules = {r.get("id"): r for r in _dicts((driver or {}).get("rules"))} if isinstance(driver, dict) else {}
            for result in _dicts(run.get("results")):
                rule_id = str(result.get("ruleId") or "?")
                findings[(rule_id, _sarif_location(result))] = _sarif_severity(result, rules.get(rule_id) or {})
        return findings
    return None


def _severity(value) -> str:
    value = str(value or "").lower()
    return value if value in SEVERITIES else "unknown"


def _sarif_location(result: dict) -> str:
    for location in _dicts(result.get("locations")):
        physical = location.get("physicalLocation")
        artifact = physical.get("artifactLocation") if isinstance(physical, dict) else None
        if isinstance(artifact, dict) and artifact.get("uri"):
            return str(artifact["uri"])
    return ""


def _sarif_severity(result: dict, rule: dict) -> str:
    """SARIF has no severity field: scanners put a CVSS score in the rule's `security-severity` property."""
    properties = rule.get("properties") if isinstance(rule.get("properties"), dict) else {}
    try:
        score = float(properties.get("security-severity"))
    except (TypeError, ValueError):
        level = result.get("level") or (rule.get("defaultConfiguration") or {}).get("level")
        return {"error": "high", "warning": "medium", "note": "low"}.get(str(level), "unknown")
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "medium"
    return "low" if score > 0 else "unknown"


def _by_severity(findings: dict[tuple[str, str], str], keys) -> dict[str, int]:
    counts = dict.fromkeys(SEVERITIES, 0)
    for key in keys:
        counts[findings[key]] += 1
    return counts


def vulnerabilities_diff(before: dict[tuple[str, str], str], after: dict[tuple[str, str], str]) -> dict:
    """Findings new in the candidate and fixed by it, counted by severity, worst first."""
    new = sorted(set(after) - set(before), key=lambda k: (SEVERITIES.index(after[k]), k))
    fixed = sorted(set(before) - set(after), key=lambda k: (SEVERITIES.index(before[k]), k))
    return {
        "new_by_severity": _by_severity(after, new),
        "fixed_by_severity": _by_severity(before, fixed),
        "total_by_severity": _by_severity(after, after),
        "new": [{"id": i, "package": p, "severity": after[(i, p)]} for i, p in new[:MAX_LISTED]],
        "fixed": [{"id": i, "package": p, "severity": before[(i, p)]} for i, p in fixed[:MAX_LISTED]],
    }
