#!/usr/bin/env bash
# The whole suite as two pytest processes side by side (the machine's two cores): the pages, browser, security and
# API tests in one, everything else in the other (about even halves). Each has its own test database, Redis database and var directory, so
# they never meet. Prints each half's output in turn and fails when either half fails.
#
#   tests/run_suite.sh PYTHON          DATABASE_URL (PostgreSQL, or unset for SQLite) and REDIS_URL as for pytest
set -uo pipefail
python=$1
redis_base=${REDIS_URL%/*}
redis_db=${REDIS_URL##*/}
out=var/test-output
mkdir -p "$out"

half() {  # NAME REDIS_DB PYTEST_ARGS...
  local name=$1 db=$2
  shift 2
  local database=${DATABASE_URL:-}
  case $database in postgres://* | postgresql://*) database="${database}_${name}" ;; esac
  DATABASE_URL=$database REDIS_URL="$redis_base/$db" P2P_VAR_DIR="var/test-$name" \
    "$python" -m pytest "$@" >"$out/$name.log" 2>&1
  echo $? >"$out/$name.rc"
}

started=$(date +%s)
half pages "$redis_db" tests/ui tests/security tests/api &
half rest "$((redis_db - 1))" tests --ignore=tests/ui --ignore=tests/security --ignore=tests/api &
wait
status=0
for name in rest pages; do
  echo "=== tests: $name ($(cat "$out/$name.rc" 2>/dev/null || echo '?'))"
  cat "$out/$name.log"
  [ "$(cat "$out/$name.rc" 2>/dev/null)" = 0 ] || status=1
done
echo "=== the whole suite took $(($(date +%s) - started)) s"
exit $status
