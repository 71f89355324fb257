"""Fixtures for the foundation tests: config files on disk and audit rows that can be tampered with."""

import textwrap

import pytest
from django.db import connection

AUDIT_TABLE = "ci_integrations_auditentry"

EXAMPLE_CONFIG = """
registries:
  - name: qa
    provider: generic
    url: http://127.0.0.1:5001
  - name: prod
    provider: ecr
    url: https://123456789012.dkr.ecr.eu-west-1.amazonaws.com
    options: {region: eu-west-1}
    credentials: ambient
  - name: build
    url: https://build.example.com
    credentials: {username: robot, password: "${P2P_TEST_BUILD_PASSWORD}"}
workflows:
  - name: standard
    kind: environment
    steps:
      - {from: qa, to: staging, approvals: 0, auto: true}
      - {from: staging, to: prod, approvals: 2, approver_group: release-managers,
         required_checks: [functional, nft], min_soak: 1h, self_approval: false}
integrations:
  - name: payments-api
    kind: environment
    workflow: standard
    buckets:
      - {env: qa, registry: qa, repository: team/payments-api}
      - {env: staging, registry: qa, repository: staging/payments-api}
      - {env: prod, registry: prod, repository: payments/api, immutable_tags: true}
"""


def child_database_url() -> str | None:
    """DATABASE_URL for child processes that must use this run's test database (None on SQLite)."""
    db = connection.settings_dict
    if connection.vendor != "postgresql":
        return None
    return f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """Users are created in many tests here; a real password hash costs a noticeable fraction of a second each."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    """Write YAML text to a file and return its path; the example's ${ENV} secret is set."""
    monkeypatch.setenv("P2P_TEST_BUILD_PASSWORD", "hunter2-build")
    counter = iter(range(1000))

    def write(text: str = EXAMPLE_CONFIG) -> str:
        path = tmp_path / f"p2p-{next(counter)}.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return str(path)

    return write


@pytest.fixture
def tamper(on_postgres):
    """Run SQL on the audit table with its triggers off, as a superuser could; they are back on afterwards."""

    def run(sql: str, params=None) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER USER")
            try:
                cursor.execute(sql, params)
            finally:
                cursor.execute(f"ALTER TABLE {AUDIT_TABLE} ENABLE TRIGGER USER")

    return run
