"""On PostgreSQL, one call takes the audit append lock and reads the chain's head: a round trip less per append.

A VOLATILE PL/pgSQL function takes a new snapshot for each statement in READ COMMITTED, so the head is read after the
lock is granted and sees every entry committed before it (a single SELECT calling the lock would not).
"""

from django.db import migrations

INSTALL = """
CREATE OR REPLACE FUNCTION p2p_audit_append_lock(lock_id bigint) RETURNS varchar AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_id);
    RETURN (SELECT hash FROM ci_integrations_auditentry ORDER BY id DESC LIMIT 1);
END;
$$ LANGUAGE plpgsql VOLATILE;
"""

UNINSTALL = "DROP FUNCTION IF EXISTS p2p_audit_append_lock(bigint);"


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(INSTALL, params=None)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(UNINSTALL, params=None)


class Migration(migrations.Migration):
    dependencies = [("ci_integrations", "0006_arrival_tag_index")]
    operations = [migrations.RunPython(install, uninstall)]
