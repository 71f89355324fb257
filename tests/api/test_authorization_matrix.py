"""Every API URL × every kind of caller, with the exact status each must get.

The world's `shop` belongs to a team whose members are the release managers and `team_member` (no role); the
viewer is in no team and `other_team_rm` manages releases for another team: for them `shop` and everything in it
does not exist (404), while requests their roles do not allow at all are refused first (403).

The URL list comes from the resolver, so a new endpoint without a row here fails the test. Each call runs in a
savepoint that is rolled back, so every caller meets the same state.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver

from ci_integrations.models import ImportJob, Promotion
from ci_integrations.services.actors import Actor
from ci_integrations.services.artifacts import artifact_register
from ci_integrations.services.promotions import promotion_request
from tests.api.conftest import SYSTEM

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

CALLERS = [
    "anonymous",
    "revoked",
    "expired",
    "wrong_checksum",
    "ci_own",
    "ci_other",
    "ci_rm_owned",
    "ci_system",
    "viewer",
    "auditor",
    "rm",
    "admin",
    "team_member",
    "other_team_rm",
]
BAD_TOKENS = {"revoked": 401, "expired": 401, "wrong_checksum": 401}
UNAUTHENTICATED = {"anonymous": 401, **BAD_TOKENS}


def everyone(status: int) -> dict:
    return dict.fromkeys(CALLERS, status)


def authed(**statuses) -> dict:
    return {**UNAUTHENTICATED, **statuses}


READ_OWN = authed(
    ci_own=200,
    ci_other=404,
    ci_rm_owned=200,
    ci_system=200,
    viewer=404,
    auditor=200,
    rm=200,
    admin=200,
    team_member=200,
    other_team_rm=404,
)


@pytest.fixture
def world(world):
    """The API world with `shop` owned by a team (the release managers and a member with no role) and another
    team's release manager; both new people call with personal tokens."""
    from django.contrib.auth.models import Group, User

    from ci_integrations.models import Team
    from ci_integrations.services.tokens import token_create

    team = Team.objects.create(name=f"team-{world.shop.name}")
    team.members.add(world.users["rm"], world.users["rm2"])
    world.shop.team = team
    world.shop.save(update_fields=["team"])
    member = User.objects.create_user(f"member-{world.shop.name}")
    team.members.add(member)
    outsider = User.objects.create_user(f"outsider-{world.shop.name}")
    outsider.groups.add(Group.objects.get(name="release-managers"))
    other_team = Team.objects.create(name=f"team-{world.other.name}")
    other_team.members.add(outsider)
    world.other.team = other_team
    world.other.save(update_fields=["team"])
    for name, user in (("team_member", member), ("other_team_rm", outsider)):
        world.users[name] = user
        world.tokens[name], world.plain[name] = token_create(name=name, kind="personal", user=user, actor=SYSTEM)
    return world


@dataclass
class Row:
    method: str
    path: str
    expected: dict
    body: dict | None = None


class _Rollback(Exception):
    pass


def api_url_names() -> set[str]:
    names = set()

    def walk(patterns, prefix):
        for pattern in patterns:
            route = prefix + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.lstrip("^").startswith("api/"):
                names.add(pattern.name)

    walk(get_resolver().url_patterns, "")
    return names


@pytest.fixture
def matrix(world) -> dict[str, Row]:
    shop, ci = world.shop.name, Actor.system("ci")
    for tag in ("v1", "v2", "v3", "matrix"):
        world.push(world.dev, tag)
    for tag in ("v1", "v2", "matrix"):  # "matrix" too: staging's refusal must not be a missing image
        world.copy(world.dev, world.staging, tag)
    a, _, _ = artifact_register(integration=world.shop, env="dev", tag="v1", actor=ci)
    b, _, _ = artifact_register(integration=world.shop, env="dev", tag="v2", actor=ci)
    c, _, _ = artifact_register(integration=world.shop, env="dev", tag="v3", actor=ci)
    artifact_register(integration=world.shop, env="staging", tag="v1", actor=ci)
    artifact_register(integration=world.shop, env="staging", tag="v2", actor=ci)
    pending = promotion_request(artifact=a, to_env="prod", actor=Actor.for_user(world.users["rm2"]))
    assert pending.state == Promotion.State.PENDING_APPROVAL
    failed = Promotion.objects.create(
        integration=world.shop,
        step=world.to_prod,
        artifact=b,
        digest=b.digest,
        from_bucket=world.staging,
        to_bucket=world.prod,
        tag="v2",
        state=Promotion.State.FAILED,
        error="registry went away",
    )
    job = ImportJob.objects.create(integration=world.shop, arguments={"source": "x"})
    host = world.registry_url.split("://", 1)[1]
    # ci_rm_owned may do what its owner, a release manager, may: request and manage, not register or report checks.
    # The team's member may request and manage its promotions but not register, report checks or approve; another
    # team's release manager may request in general, so for them the team's objects are 404.
    write = authed(
        ci_own=201,
        ci_other=404,
        ci_rm_owned=403,
        ci_system=201,
        viewer=403,
        auditor=403,
        rm=403,
        admin=201,
        team_member=403,
        other_team_rm=403,
    )
    decide = authed(
        ci_own=403,
        ci_other=403,
        ci_rm_owned=403,
        ci_system=403,
        viewer=403,
        auditor=403,
        rm=200,
        admin=403,
        team_member=403,
        other_team_rm=404,
    )
    manage = authed(
        ci_own=200,
        ci_other=404,
        ci_rm_owned=200,
        ci_system=200,
        viewer=403,
        auditor=403,
        rm=200,
        admin=200,
        team_member=200,
        other_team_rm=404,
    )
    request = {"rm": 201, "ci_rm_owned": 201, "team_member": 201, "other_team_rm": 404}
    people_only = authed(**{k: 403 for k in CALLERS[4:]})
    return {
        "api-schema": Row("GET", "/api/schema/", {**everyone(200), **BAD_TOKENS}),
        "api-docs": Row("GET", "/api/docs/", {**everyone(200), **BAD_TOKENS}),
        "api-not-found": Row("GET", "/api/v1/nothing-here/", everyone(404)),
        "api-cli": Row("GET", "/api/v1/cli/p2p", everyone(200)),
        # The ID token in the body is the credential, whatever Authorization says: a token no CI identity trusts is
        # refused for everyone (tests/api/test_oidc_exchange.py covers the 201s).
        "api-auth-oidc": Row("POST", "/api/v1/auth/oidc/", everyone(401), {"token": "not-a-jwt"}),
        "api-integrations": Row("GET", "/api/v1/integrations/", authed(**{k: 200 for k in CALLERS[4:]})),
        "api-integration": Row("GET", f"/api/v1/integrations/{shop}/", READ_OWN),
        "api-artifacts": Row("GET", f"/api/v1/integrations/{shop}/artifacts/?env=dev", READ_OWN),
        "api-artifacts POST": Row(
            "POST", f"/api/v1/integrations/{shop}/artifacts/", write, {"env": "dev", "tag": "matrix"}
        ),
        # Images reach staging by promotion only: no token may register there, whatever its scopes.
        "api-artifacts POST staging": Row(
            "POST",
            f"/api/v1/integrations/{shop}/artifacts/",
            {**write, "ci_own": 403, "ci_system": 403, "admin": 403},
            {"env": "staging", "tag": "matrix"},
        ),
        "api-imports": Row(
            "POST",
            f"/api/v1/integrations/{shop}/imports/",
            {**write, "ci_own": 202, "ci_system": 202, "admin": 202},
            {"source": f"{host}/elsewhere/app:1"},
        ),
        "api-rollback": Row(
            "POST",
            f"/api/v1/integrations/{shop}/rollback/",
            {**write, **request},
            {"env": "staging", "to": a.digest, "reason": "v2 is broken"},
        ),
        # The world's registry asks for no credentials, so nothing can be scoped to one repository: those allowed
        # past authorisation get 409 (tests/api/test_push_credentials.py covers the 200s on a token-auth registry).
        "api-push-credentials": Row(
            "POST",
            f"/api/v1/integrations/{shop}/push-credentials/",
            {**write, "ci_own": 409, "ci_system": 409, "admin": 409},
            {"env": "dev"},
        ),
        "api-artifact": Row("GET", f"/api/v1/artifacts/{a.pk}/", READ_OWN),
        "api-checks": Row("POST", f"/api/v1/artifacts/{a.pk}/checks/", write, {"name": "unit", "status": "passed"}),
        "api-job": Row("GET", f"/api/v1/jobs/{job.pk}/", READ_OWN),
        "api-promotions": Row(
            "POST",
            "/api/v1/promotions/",
            {**write, **request},
            {"integration": shop, "artifact": c.digest, "to_env": "staging"},
        ),
        "api-promotion": Row("GET", f"/api/v1/promotions/{pending.pk}/", READ_OWN),
        "api-promotion-approve": Row("POST", f"/api/v1/promotions/{pending.pk}/approve/", decide, {"comment": "ok"}),
        "api-promotion-reject": Row("POST", f"/api/v1/promotions/{pending.pk}/reject/", decide, {"comment": "no"}),
        "api-promotion-cancel": Row("POST", f"/api/v1/promotions/{pending.pk}/cancel/", manage, {"comment": "x"}),
        "api-promotion-retry": Row("POST", f"/api/v1/promotions/{failed.pk}/retry/", manage, {}),
        "api-audit": Row(
            "GET",
            "/api/v1/audit/",
            authed(
                ci_own=200,
                ci_other=200,
                ci_rm_owned=200,
                ci_system=200,
                viewer=403,
                auditor=200,
                rm=200,
                admin=200,
                team_member=200,
                other_team_rm=200,
            ),
        ),
        "api-stop": Row("GET", "/api/v1/stop/", authed(**{k: 404 for k in CALLERS[4:]})),
        "api-stop POST": Row("POST", "/api/v1/stop/", {**people_only, "rm": 201, "admin": 201}, {"reason": "INC-1"}),
        "api-stop DELETE": Row("DELETE", "/api/v1/stop/", {**people_only, "rm": 409, "admin": 409}),
        "api-insights-dora": Row("GET", f"/api/v1/insights/dora/?integration={shop}", READ_OWN),
        "api-audit-verify": Row(
            "GET",
            "/api/v1/audit/verify/",
            authed(
                ci_own=403,
                ci_other=403,
                ci_rm_owned=403,
                ci_system=403,
                viewer=403,
                auditor=200,
                rm=403,
                admin=200,
                team_member=403,
                other_team_rm=403,
            ),
        ),
    }


def test_every_api_url_gives_each_caller_exactly_the_expected_status(world, matrix):
    covered = {key.split(" ")[0] for key in matrix}
    missing = api_url_names() - covered
    assert not missing, f"API URLs missing from the authorisation matrix: {sorted(missing)}"
    assert covered <= api_url_names(), f"matrix rows for URLs that no longer exist: {sorted(covered - api_url_names())}"

    failures = []
    for key, row in matrix.items():
        assert set(row.expected) == set(CALLERS), key
        for name in CALLERS:
            caller = world.caller(name)
            try:
                with transaction.atomic():
                    response = caller.call(row.method, row.path, row.body)
                    raise _Rollback
            except _Rollback:
                pass
            if response.status_code != row.expected[name]:
                body = response.content[:300].decode(errors="replace")
                failures.append(
                    f"{row.method} {row.path} as {name}: {response.status_code} != {row.expected[name]} {body}"
                )
                continue
            if response.status_code >= 400 and row.path.startswith("/api/v1/"):
                error = response.json()["error"]
                assert error["code"] and error["message"], (key, name)
            if response.status_code == 401:
                assert response["WWW-Authenticate"].startswith("Bearer"), (key, name)
    assert not failures, "\n".join(failures)


def test_a_ci_token_lists_only_its_own_integrations_and_their_audit_entries(world, matrix):
    names = [i["name"] for i in world.caller("ci_other").get("/api/v1/integrations/").json()]
    assert names == [world.other.name]
    entries = world.caller("ci_other").get("/api/v1/audit/").json()["results"]
    assert all(entry["integration"] == world.other.name for entry in entries)
    entries = world.caller("ci_own").get(f"/api/v1/audit/?integration={world.shop.name}").json()["results"]
    assert entries and all(entry["integration"] == world.shop.name for entry in entries)


def test_personal_tokens_cannot_exceed_their_scopes(world, matrix):
    from ci_integrations.services.tokens import token_create

    _, plain = token_create(name="read only", kind="personal", user=world.users["rm"], scopes=["read"], actor=SYSTEM)
    from tests.api.conftest import Caller

    pending = Promotion.objects.get(state=Promotion.State.PENDING_APPROVAL)
    response = Caller("rm-read", plain).post(f"/api/v1/promotions/{pending.pk}/approve/", {"comment": "ok"})
    assert response.status_code == 403
    assert "promotions:approve" in response.json()["error"]["message"]
