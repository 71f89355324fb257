"""The app's PostgreSQL role: what it needs on the portal's tables, and only reading and appending on the audit log.

A table's owner can disable its triggers, drop them or rewrite rows, so the append-only trigger of migration 0002
only binds a role that does not own the table. `manage.py migrate` runs as the owner (DATABASE_MIGRATE_URL) and then
calls `database_role_grant` for P2P_APP_DB_ROLE, the role the web and worker processes connect as. The statements are
idempotent, so running them after every migration also covers tables later migrations create.
"""

from __future__ import annotations

from django.db import connection

from ci_integrations.models import AuditEntry

# Django's record of applied migrations: the app reads it (runserver's check), only the owner writes it.
MIGRATIONS_TABLE = "django_migrations"


class RoleRefused(Exception):
    """P2P_APP_DB_ROLE names a role that would still be able to rewrite the audit log."""


def database_role_grant(*, role: str) -> None:
    """Grant `role` what the portal needs in the current schema, then take back all but SELECT and INSERT on the
    audit table (and on the migrations table all but SELECT). Refuses a role that owns the tables, belongs to their
    owner or is a superuser: for such a role no REVOKE would hold."""
    quote = connection.ops.quote_name
    audit = quote(AuditEntry._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            # MEMBER: a member of the owner's role could SET ROLE to it and act as the owner.
            "SELECT r.rolsuper, pg_has_role(r.oid, t.tableowner, 'MEMBER'), current_schema()"
            " FROM pg_roles r, pg_tables t"
            " WHERE r.rolname = %s AND t.tablename = %s AND t.schemaname = current_schema()",
            [role, AuditEntry._meta.db_table],
        )
        found = cursor.fetchone()
        if found is None:
            raise RoleRefused(f"P2P_APP_DB_ROLE {role!r} does not exist (create it with LOGIN first)")
        superuser, owns, schema = found
        if superuser or owns:
            raise RoleRefused(
                f"P2P_APP_DB_ROLE {role!r} is a superuser or owns the tables (or is a member of their owner), so it "
                "could disable the audit log's trigger; connect the app as a separate role"
            )
        name, schema = quote(role), quote(schema)
        for statement in (
            f"GRANT USAGE ON SCHEMA {schema} TO {name}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {name}",
            # USAGE lets nextval() number new rows; without UPDATE the role cannot setval() a sequence back.
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {name}",
            f"REVOKE ALL ON {audit} FROM {name}",
            f"GRANT SELECT, INSERT ON {audit} TO {name}",
            f"REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {quote(MIGRATIONS_TABLE)} FROM {name}",
        ):
            cursor.execute(statement)
