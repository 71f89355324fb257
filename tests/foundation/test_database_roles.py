"""Two real PostgreSQL roles: migrations run as the owner, the app connects as a role that can only read and append
to the audit log.

Each test makes its own database and two LOGIN roles with unique names on the test server, runs `manage.py migrate`
in a child process the way a deployment does, and drops all of it afterwards.
"""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from psycopg import errors, sql

ROOT = Path(__file__).resolve().parents[2]
AUDIT_TABLE = "ci_integrations_auditentry"

pytestmark = pytest.mark.postgres


def _url(role: str, database: str) -> str:
    db = connection.settings_dict
    return f"postgres://{role}:{role}-pw@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{database}"


def _admin() -> psycopg.Connection:
    """An autocommit connection to the server's `postgres` database as the test run's (superuser) role."""
    db = connection.settings_dict
    return psycopg.connect(
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"],
        password=db["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )


@pytest.fixture
def two_roles(db):
    """A fresh database owned by a new owner role, and a new app role that owns nothing: (owner, app, database)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")
        superuser, create_role = cursor.fetchone()
    if not (superuser or create_role):
        pytest.skip("needs a PostgreSQL role that may create roles and databases")
    suffix = secrets.token_hex(4)
    owner, app, database = f"p2p_owner_{suffix}", f"p2p_app_{suffix}", f"p2p_roles_{suffix}"
    with _admin() as admin:
        for role in (owner, app):
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(f"{role}-pw"))
            )
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(owner)))
    yield owner, app, database
    with _admin() as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        for role in (app, owner):
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def manage(*arguments: str, env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run manage.py in a child process with `env` on top of a clean environment, as a deployment would."""
    base = {key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_", "P2P_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=ROOT,
        env={**base, "P2P_VAR_DIR": str(tmp_path), "LOG_LEVEL": "WARNING", **env},
        capture_output=True,
        text=True,
        timeout=180,
    )


def migrate_as_owner(owner: str, app: str, database: str, tmp_path: Path) -> None:
    result = manage(
        "migrate",
        "--noinput",
        env={
            "DATABASE_URL": _url(app, database),
            "DATABASE_MIGRATE_URL": _url(owner, database),
            "P2P_APP_DB_ROLE": app,
        },
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Granted {app} the app's privileges" in result.stdout


# Each must be refused by PostgreSQL's privileges (not merely by the append-only trigger, which an owner can lift).
REFUSED = [
    f"UPDATE {AUDIT_TABLE} SET reason = 'nothing happened'",
    f"DELETE FROM {AUDIT_TABLE}",
    f"TRUNCATE {AUDIT_TABLE}",
    f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER USER",
    f"ALTER TABLE {AUDIT_TABLE} DISABLE TRIGGER audit_append_only_rows",
    f"ALTER TABLE {AUDIT_TABLE} ADD COLUMN note text",
    f"DROP TRIGGER audit_append_only_rows ON {AUDIT_TABLE}",
    f"ALTER TABLE {AUDIT_TABLE} OWNER TO CURRENT_USER",
    "SELECT setval(pg_get_serial_sequence('ci_integrations_auditentry', 'id'), 1)",
    "INSERT INTO django_migrations (app, name, applied) VALUES ('x', 'y', now())",
]


def test_the_app_role_cannot_rewrite_the_audit_log_but_can_append_and_read(two_roles, tmp_path):
    owner, app, database = two_roles
    migrate_as_owner(owner, app, database, tmp_path)
    recorded = manage(
        "shell",
        "-c",
        "from ci_integrations.services.audit import audit_record; "
        "print(audit_record(actor='tester', action='test.roles', reason='as the app').hash)",
        env={"DATABASE_URL": _url(app, database)},
        tmp_path=tmp_path,
    )
    assert recorded.returncode == 0, recorded.stderr[-3000:]

    with psycopg.connect(_url(app, database), autocommit=True) as as_app:
        (count,) = as_app.execute(f"SELECT count(*) FROM {AUDIT_TABLE}").fetchone()
        assert count == 1
        allowed = []
        for statement in REFUSED:
            try:
                as_app.execute(statement)
            except errors.InsufficientPrivilege as refused:
                if "permission denied" in str(refused) or "must be owner" in str(refused):
                    continue
                allowed.append(f"{statement} (refused only by: {refused})")
            else:
                allowed.append(statement)
        assert allowed == []
        (count,) = as_app.execute(f"SELECT count(*) FROM {AUDIT_TABLE}").fetchone()
        assert count == 1
        # Everything else the app does still works: it writes its other tables.
        as_app.execute("UPDATE ci_integrations_integration SET name = name")
        as_app.execute("DELETE FROM django_session")

    verified = manage("verify_audit", env={"DATABASE_URL": _url(app, database)}, tmp_path=tmp_path)
    assert verified.returncode == 0 and verified.stdout.startswith("OK 1 entries"), verified.stderr
    assert recorded.stdout.split()[-1] in verified.stdout  # the entry the app role appended


def test_migrate_refuses_to_grant_an_app_role_that_owns_the_tables(two_roles, tmp_path):
    owner, _, database = two_roles
    result = manage(
        "migrate",
        "--noinput",
        env={"DATABASE_URL": _url(owner, database), "P2P_APP_DB_ROLE": owner},
        tmp_path=tmp_path,
    )
    assert result.returncode != 0
    assert f"P2P_APP_DB_ROLE '{owner}' is a superuser or owns the tables" in result.stderr


def test_migrate_refuses_a_migrate_url_for_another_database(two_roles, tmp_path):
    owner, app, database = two_roles
    result = manage(
        "migrate",
        "--noinput",
        env={"DATABASE_URL": _url(app, database), "DATABASE_MIGRATE_URL": _url(owner, "postgres")},
        tmp_path=tmp_path,
    )
    assert result.returncode != 0 and "both must name the same database" in result.stderr
