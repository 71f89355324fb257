"""Shared fixtures: the real PostgreSQL, Redis with an RQ worker, and the audit trigger's place in test flushes."""

import os

import pytest
from django.conf import settings
from django.db import connection

os.environ.setdefault("P2P_VAR_DIR", os.path.join(os.path.dirname(__file__), "..", "var", "test"))


def pytest_configure(config):
    _let_test_flushes_empty_the_audit_table()


def _let_test_flushes_empty_the_audit_table():
    """Between transactional tests Django empties every table with TRUNCATE, which the audit trigger refuses.

    The test database (and only it) lifts the truncate trigger around that flush; the row triggers stay on.
    """
    from django.db.backends.postgresql.operations import DatabaseOperations

    original = DatabaseOperations.sql_flush
    table = "ci_integrations_auditentry"

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        statements = original(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        if table not in tables or not statements:
            return statements
        return [
            f"ALTER TABLE {table} DISABLE TRIGGER audit_append_only_truncate;",
            f"GRANT TRUNCATE ON {table} TO CURRENT_USER;",
            *statements,
            f"REVOKE TRUNCATE ON {table} FROM CURRENT_USER;",
            f"ALTER TABLE {table} ENABLE TRIGGER audit_append_only_truncate;",
        ]

    DatabaseOperations.sql_flush = sql_flush


def pytest_collection_modifyitems(config, items):
    if settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def on_postgres():
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")


@pytest.fixture
def rq_queues():
    """The real RQ queues on the test Redis database, emptied before and after the test."""
    import django_rq

    queues = [django_rq.get_queue(name) for name in settings.RQ_QUEUES]
    for queue in queues:
        queue.empty()
    yield {queue.name: queue for queue in queues}
    for queue in queues:
        queue.empty()


@pytest.fixture
def run_worker(rq_queues):
    """Run a real RQ SimpleWorker in burst mode over every queue: work through what is enqueued, then return."""
    from rq import SimpleWorker

    def run() -> None:
        queues = list(rq_queues.values())
        SimpleWorker(queues, connection=queues[0].connection).work(burst=True)

    return run


@pytest.fixture(autouse=True)
def no_cached_emergency_stop_banner():
    """The banner of an emergency stop a test pulled is cached for seconds: no later test may see it."""
    yield
    from django.core.cache import cache

    from ci_integrations.services.emergency_stop import BANNER_KEY

    try:
        cache.delete(BANNER_KEY)
    except Exception:  # noqa: BLE001 - no Redis, no cached banner
        pass
