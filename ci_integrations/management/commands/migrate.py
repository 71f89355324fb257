"""`manage.py migrate`, run as the tables' owner, then granting the app's role what it needs (and no more).

Django's own command with two additions, both off unless configured (SQLite and single-role development are
unchanged):
- with DATABASE_MIGRATE_URL set, the default database is reached as that URL's role, the owner, for this command
  only; the web and worker processes keep connecting with DATABASE_URL;
- with P2P_APP_DB_ROLE set (PostgreSQL), that role is granted the portal's tables and only SELECT and INSERT on
  the audit log once the migrations have run. Running it after every migration covers tables added later.
"""

from django.conf import settings
from django.core.management.base import CommandError
from django.core.management.commands.migrate import Command as DjangoMigrate
from django.db import DEFAULT_DB_ALIAS, connections

from ci_integrations.services.database_roles import RoleRefused, database_role_grant


class Command(DjangoMigrate):
    help = (
        "Apply migrations as DATABASE_MIGRATE_URL's role when set, then grant P2P_APP_DB_ROLE the app's privileges "
        "(SELECT and INSERT only on the audit log)."
    )

    def handle(self, *args, **options):
        database = options["database"]
        if settings.DATABASE_MIGRATE and database == DEFAULT_DB_ALIAS:
            self._connect_as_owner()
        super().handle(*args, **options)
        if options["plan"] or options["check_unapplied"] or not settings.P2P_APP_DB_ROLE:
            return
        connection = connections[database]
        if connection.vendor != "postgresql":
            return
        try:
            database_role_grant(role=settings.P2P_APP_DB_ROLE)
        except RoleRefused as refused:
            raise CommandError(str(refused)) from None
        if options["verbosity"] >= 1:
            self.stdout.write(f"Granted {settings.P2P_APP_DB_ROLE} the app's privileges (audit log: SELECT, INSERT).")

    def _connect_as_owner(self) -> None:
        """Reconnect the default database as DATABASE_MIGRATE_URL's role; it must name the same database."""
        connection = connections[DEFAULT_DB_ALIAS]
        owner = settings.DATABASE_MIGRATE
        app = connection.settings_dict
        if (owner["ENGINE"], owner["NAME"]) != (app["ENGINE"], app["NAME"]):
            raise CommandError(
                f"DATABASE_MIGRATE_URL names database {owner['NAME']!r}, DATABASE_URL {app['NAME']!r}: "
                "both must name the same database"
            )
        connection.close()
        for key in ("USER", "PASSWORD", "HOST", "PORT", "OPTIONS"):
            app[key] = owner[key]
