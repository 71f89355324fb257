"""Schemathesis over the live /api/schema/ with every check: what the schema calls valid the API accepts, what it
calls invalid the API refuses, and every answer (status, content type, headers, body) is one the schema describes.

The run is schemathesis's own CLI, as a CI team would run it, against a live server on real PostgreSQL, Redis and a
docker-registry. Every operation the schema lists is covered (new ones too, with no change here); a seeded integration
and its artifact, promotion and import job stand in for path parameters so that cases reach the real code rather
than a 404, and the stateful phase follows the schema's links (a promotion's life, an import's job).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES_PER_OPERATION = 10
# A 422 is the API's answer to a well-formed request it cannot act on as it stands (an Idempotency-Key reused with
# another body: generated keys repeat); everything else positive data may meet is schemathesis's default.
POSITIVE_STATUSES = ["2xx", "401", "403", "404", "409", "422", "429"]


def seeded_objects(world) -> dict[str, int]:
    """An artifact, a promotion and an import job of the seeded integration, made through the API itself."""
    world.push(world.dev, "1.0.0")
    ci = world.caller("ci_own")
    artifact = ci.post(f"/api/v1/integrations/{world.shop.name}/artifacts/", {"env": "dev", "tag": "1.0.0"}).json()
    promotion = ci.post(
        "/api/v1/promotions/", {"integration": world.shop.name, "artifact": artifact["digest"], "to_env": "staging"}
    ).json()
    source = f"{world.registry_url.split('://', 1)[1]}/elsewhere/app:1"  # imports read from configured registries
    job = ci.post(f"/api/v1/integrations/{world.shop.name}/imports/", {"source": source}).json()
    return {"artifacts": artifact["id"], "promotions": promotion["id"], "jobs": job["id"]}


def schemathesis_config(world, objects: dict[str, int]) -> str:
    """schemathesis.toml: the seeded names and ids for path parameters, and the positive statuses (see above)."""
    lines = [
        f'parameters = {{ "path.name" = "{world.shop.name}" }}',
        "[checks.positive_data_acceptance]",
        f"expected-statuses = {json.dumps(POSITIVE_STATUSES)}",
    ]
    for collection, pk in objects.items():
        lines += [
            "[[operations]]",
            f'include-path-regex = "^/api/v1/{collection}/\\\\{{id\\\\}}/"',
            f'parameters = {{ "path.id" = {pk} }}',
        ]
    return "\n".join(lines) + "\n"


# About two minutes on a quiet 2-core machine; the limit leaves room for a loaded one.
@pytest.mark.timeout(600)
def test_schemathesis_with_every_check_finds_nothing(world, live_server, rq_queues, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(schemathesis_config(world, seeded_objects(world)))
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{live_server.url}/api/schema/?format=json",
            "--url",
            live_server.url,
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--seed",
            "16",
            "--workers",
            "2",
            # The admin's personal token gets past authentication everywhere, so cases reach the validation code.
            "--header",
            f"Authorization: Bearer {world.plain['admin']}",
            "--suppress-health-check",
            "too_slow,filter_too_much",
            "--report",
            "ndjson",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=560,
        cwd=tmp_path,  # schemathesis keeps its cache in the working directory
    )
    output = run.stdout + run.stderr
    summary = [line.strip() for line in output.splitlines() if re.fullmatch(r"=+ .* in [0-9.]+s =+", line.strip())]
    cases = re.search(r"(\d+) generated, (\d+) passed", output)
    print(output)
    print(f"schemathesis summary: {summary[-1] if summary else '(none)'}")
    print(f"cases run: {cases.group(1) if cases else '?'}")
    assert run.returncode == 0, output[-8000:]
    assert summary and "failure" not in summary[-1] and "error" not in summary[-1], summary
    assert cases and cases.group(1) == cases.group(2), "every generated case must pass"
