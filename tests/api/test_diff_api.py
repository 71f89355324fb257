"""The diff in the API: for a promotion, and for one not requested yet; bad input named in a 4xx."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def _register(world, tag: str, metadata: dict | None = None) -> dict:
    world.push(world.dev, tag)
    body = {"env": "dev", "tag": tag, **({"metadata": metadata} if metadata else {})}
    answer = world.caller("ci_own").post(f"/api/v1/integrations/{world.shop.name}/artifacts/", body)
    assert answer.status_code == 201, answer.content
    return answer.json()


def test_the_preview_diff_names_the_commits_ci_registered_and_the_layers(world):
    changelog = [{"sha": "c" * 40, "title": "Faster checkout", "author": "ana"}]
    artifact = _register(
        world, "1.0.0", {"git_sha": "c" * 40, "repo_url": "https://gitlab.com/acme/shop", "changelog": changelog}
    )
    ci = world.caller("ci_own")

    answer = ci.get(f"/api/v1/integrations/{world.shop.name}/diff/?artifact=1.0.0&to_env=staging")

    assert answer.status_code == 200, answer.content
    diff = answer.json()
    assert diff["before"] is None and diff["after"]["digest"] == artifact["digest"]
    assert diff["commits"]["changelog"] == changelog
    assert diff["image"]["layers"]["added_bytes"] > 0 and diff["image"]["layers"]["shared"] == []
    assert diff["image"]["sbom"]["unavailable"] == "the candidate carries no readable SBOM"
    shown = ci.get(f"/api/v1/artifacts/{artifact['id']}/").json()
    assert shown["repo_url"] == "https://gitlab.com/acme/shop" and shown["changelog"] == changelog


def test_the_promotion_diff_is_the_same_as_its_preview(world):
    artifact = _register(world, "1.0.0")
    ci = world.caller("ci_own")
    promotion = ci.post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": artifact["digest"], "to_env": "staging"}
    ).json()

    diff = ci.get(f"/api/v1/promotions/{promotion['id']}/diff/").json()

    preview = ci.get(f"/api/v1/integrations/{world.shop.name}/diff/?artifact={artifact['id']}&to_env=staging").json()
    assert diff["image"]["layers"] == preview["image"]["layers"]


@pytest.mark.parametrize(
    ("query", "status", "names"),
    [
        ("to_env=staging", 400, "artifact"),
        ("artifact=1.0.0&to_env=nowhere", 404, "nowhere"),
        ("artifact=9.9.9&to_env=staging", 404, "9.9.9"),
        ("artifact=sha256:xyz&to_env=staging", 400, "digest"),
    ],
)
def test_bad_preview_queries_get_a_4xx_naming_what_is_wrong(world, query, status, names):
    _register(world, "1.0.0")

    answer = world.caller("ci_own").get(f"/api/v1/integrations/{world.shop.name}/diff/?{query}")

    assert answer.status_code == status, answer.content
    assert names in answer.content.decode()


def test_a_changelog_that_is_not_a_list_of_commits_is_refused(world):
    world.push(world.dev, "1.0.0")
    body = {"env": "dev", "tag": "1.0.0", "metadata": {"changelog": [{"title": "no sha"}]}}

    answer = world.caller("ci_own").post(f"/api/v1/integrations/{world.shop.name}/artifacts/", body)

    assert answer.status_code == 400 and "sha" in answer.content.decode()
