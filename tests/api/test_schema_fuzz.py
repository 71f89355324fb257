"""Fuzz every operation of /api/schema/ with schemathesis: no generated input may make the API answer with a 5xx.

Cases are generated from the schema the API serves and sent through Django's test client, in process, which keeps
the run fast enough for every commit.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode, urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

EXAMPLES_PER_OPERATION = 50


def real_path_parameters(operation, world, objects: dict) -> dict | None:
    """Path parameters naming objects that exist, so generated bodies reach the services, not just the 404."""
    path = operation.path
    if "{name}" in path:
        return {"name": world.shop.name}
    for prefix, key in (
        ("/api/v1/artifacts/", "artifact"),
        ("/api/v1/promotions/", "promotion"),
        ("/api/v1/jobs/", "job"),
    ):
        if path.startswith(prefix) and "{pk}" in path:
            return {"pk": objects[key]}
    return None


def declared_types(operation, status: int) -> set[str]:
    """The media types the schema declares for this answer (JSON unless an operation says otherwise, as the CSV of
    insights does)."""
    responses = operation.definition.raw.get("responses", {})
    declared = responses.get(str(status), {}).get("content", {})
    return set(declared) | {"application/json"}


def test_no_generated_input_makes_the_api_fail_with_a_5xx(world, client):
    world.push(world.dev, "1.0.0")
    ci = world.caller("ci_own")
    artifact = ci.post(f"/api/v1/integrations/{world.shop.name}/artifacts/", {"env": "dev", "tag": "1.0.0"}).json()
    promotion = ci.post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": artifact["digest"], "to_env": "staging"}
    ).json()
    source = f"{world.registry_url.split('://', 1)[1]}/elsewhere/app:1"  # imports read from configured registries
    job = ci.post(f"/api/v1/integrations/{world.shop.name}/imports/", {"source": source}).json()
    objects = {"artifact": artifact["id"], "promotion": promotion["id"], "job": job["id"]}
    raw = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert raw.status_code == 200
    schema = schemathesis.openapi.from_dict(json.loads(raw.content))
    # The admin's personal token gets past authentication everywhere, so the fuzzer reaches the validation code.
    auth = f"Bearer {world.plain['admin']}"
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 18
    sent = 0

    for operation in operations:
        strategies = [operation.as_strategy(mode) for mode in GenerationMode]
        real = real_path_parameters(operation, world, objects)
        if real:
            strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real))

        @given(case=st.one_of(strategies))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def call(case):
            nonlocal sent
            kwargs = case.as_transport_kwargs(base_url="http://testserver")
            url = urlsplit(kwargs["url"])
            path = url.path + ("?" + url.query if url.query else "")
            if kwargs.get("params"):
                path += ("&" if "?" in path else "?") + urlencode(kwargs["params"], doseq=True)
            body = json.dumps(kwargs["json"]) if "json" in kwargs else (kwargs.get("data") or "")
            response = client.generic(case.method, path, body, content_type="application/json", HTTP_AUTHORIZATION=auth)
            sent += 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {path} → {response.status_code}: {response.content[:200]!r}")
            elif response["Content-Type"].split(";")[0] not in declared_types(case.operation, response.status_code):
                failures.append(f"{case.method} {path} → {response['Content-Type']}")

        call()
    assert sent >= len(operations) * 10
    assert not failures, "\n".join(failures[:20])
