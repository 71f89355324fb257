"""On PostgreSQL the audit table refuses UPDATE, DELETE and TRUNCATE: a trigger for everyone, REVOKE for the app."""

from django.db import migrations

TABLE = "ci_integrations_auditentry"

INSTALL = f"""
CREATE OR REPLACE FUNCTION p2p_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only: % refused on %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_append_only_rows BEFORE UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION p2p_audit_append_only();
CREATE TRIGGER audit_append_only_truncate BEFORE TRUNCATE ON {TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION p2p_audit_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON {TABLE} FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON {TABLE} FROM CURRENT_USER;
"""

UNINSTALL = f"""
DROP TRIGGER IF EXISTS audit_append_only_rows ON {TABLE};
DROP TRIGGER IF EXISTS audit_append_only_truncate ON {TABLE};
DROP FUNCTION IF EXISTS p2p_audit_append_only();
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(INSTALL, params=None)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(UNINSTALL, params=None)


class Migration(migrations.Migration):
    dependencies = [("ci_integrations", "0001_initial")]
    operations = [migrations.RunPython(install, uninstall)]
