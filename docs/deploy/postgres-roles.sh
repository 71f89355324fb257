#!/bin/sh
# Creates P2P Portal's two database roles in a new PostgreSQL cluster (the postgres image runs it once, on an empty
# volume; elsewhere run the same SQL as a superuser):
#   p2p_owner  owns the database and every table; `manage.py migrate` connects as it (DATABASE_MIGRATE_URL)
#   p2p_app    web and worker (DATABASE_URL); owns nothing, so it cannot disable the audit log's trigger. migrate
#              grants it its privileges (P2P_APP_DB_ROLE=p2p_app): SELECT and INSERT only on the audit table.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v owner_password="$P2P_OWNER_DB_PASSWORD" -v app_password="$P2P_APP_DB_PASSWORD" <<'SQL'
CREATE ROLE p2p_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE p2p_app LOGIN PASSWORD :'app_password';
ALTER DATABASE p2p OWNER TO p2p_owner;
-- PostgreSQL 15+ lets the database owner create in the public schema; older versions need this line.
ALTER SCHEMA public OWNER TO p2p_owner;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
