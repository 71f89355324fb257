"""`ci_identities` in the config file: read with path-naming errors, applied (and audited) exactly as listed, exported
back so that an export applies as no change."""

import pytest
import yaml

from ci_integrations.models import AuditEntry, CiIdentity
from tests.foundation.conftest import EXAMPLE_CONFIG
from tests.foundation.test_config import failing, run

GITHUB = """
    ci_identities:
      - issuer: https://token.actions.githubusercontent.com
        audience: p2p-portal
        claims: {repository: acme/payments-api, ref: "refs/tags/v*"}
        scopes: [artifacts:write, checks:write, promotions:request, read]
"""


def with_identities(text: str) -> str:
    """The example file, its integration trusting the CI identities in `text`."""
    return EXAMPLE_CONFIG.rstrip("\n") + "\n" + text.strip("\n") + "\n"


def test_ci_identities_are_applied_exported_and_applied_again_as_no_change(db, config_file, tmp_path):
    out, _ = run("apply_config", config_file(with_identities(GITHUB)))
    assert "~ integration payments-api ci_identities (0 → 1)" in out
    [identity] = CiIdentity.objects.all()
    assert identity.integration.name == "payments-api" and identity.audience == "p2p-portal"
    assert identity.claims == {"repository": "acme/payments-api", "ref": "refs/tags/v*"}
    assert identity.scopes == ["artifacts:write", "checks:write", "promotions:request", "read"]
    entry = AuditEntry.objects.filter(action="config.update", object_type="integration").get()
    assert entry.after["ci_identities"][0]["issuer"] == "https://token.actions.githubusercontent.com"

    exported = tmp_path / "exported.yaml"
    run("export_config", "-o", str(exported))
    [integration] = yaml.safe_load(exported.read_text())["integrations"]
    assert integration["ci_identities"][0]["claims"]["ref"] == "refs/tags/v*"
    entries = AuditEntry.objects.count()
    assert run("apply_config", str(exported))[0].strip() == "No changes."
    assert AuditEntry.objects.count() == entries


def test_an_integration_listed_without_ci_identities_trusts_none_any_more(db, config_file):
    run("apply_config", config_file(with_identities(GITHUB)))
    out, _ = run("apply_config", config_file())
    assert "ci_identities (1 → 0)" in out and not CiIdentity.objects.exists()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            "{issuer: http://token.example.com, audience: p2p, claims: {repository: a/b}, scopes: [read]}",
            "integrations[0].ci_identities[0].issuer: 'http://token.example.com' must be https",
        ),
        (
            "{issuer: https://gitlab.com, audience: p2p, scopes: [read]}",
            "integrations[0].ci_identities[0].claims: needs at least one claim",
        ),
        (
            "{issuer: https://gitlab.com, audience: p2p, claims: {project_path: '*'}, scopes: [read]}",
            "integrations[0].ci_identities[0].claims.project_path: '*' matches any value",
        ),
        (
            "{issuer: https://gitlab.com, audience: p2p, claims: {aud: x}, scopes: [read]}",
            "integrations[0].ci_identities[0].claims.aud: 'aud' is checked by the exchange itself",
        ),
        (
            "{issuer: https://gitlab.com, audience: p2p, claims: {project_path: a/b}, scopes: [promotions:approve]}",
            "integrations[0].ci_identities[0].scopes: ['promotions:approve'] are not CI scopes",
        ),
        (
            "{issuer: https://gitlab.com, claims: {project_path: a/b}, scopes: [read]}",
            "integrations[0].ci_identities[0].audience: must be the audience",
        ),
        (
            "{issuer: https://gitlab.com, audience: p2p, claims: {project_path: a/b}, scopes: [read], role: admin}",
            "integrations[0].ci_identities[0].role: unknown key",
        ),
    ],
)
def test_a_bad_ci_identity_is_refused_with_its_path(db, config_file, entry, expected):
    err, _ = failing("apply_config", config_file(with_identities(f"    ci_identities:\n      - {entry}\n")))
    assert expected in err
    assert not CiIdentity.objects.exists()


def test_a_plain_http_loopback_issuer_is_for_development_only(db, config_file, settings):
    local = (
        "    ci_identities:\n      - {issuer: 'http://127.0.0.1:9000', audience: p2p, claims: {sub: x}, scopes: [read]}"
    )
    local += "\n"
    settings.P2P_OIDC_ALLOW_HTTP_LOOPBACK = True
    run("apply_config", config_file(with_identities(local)))
    assert CiIdentity.objects.get().issuer == "http://127.0.0.1:9000"
    settings.P2P_OIDC_ALLOW_HTTP_LOOPBACK = False
    err, _ = failing("apply_config", config_file(with_identities(local)))
    assert "a loopback issuer is accepted in development only" in err
