#!/usr/bin/env bash
# Start a local PostgreSQL server for the tests marked `postgres` (ingest from a real server, no mock).
# Installs Debian's postgresql package when missing, starts a cluster on localhost, makes a role and a
# database, and prints the connection URL. Idempotent: safe to run when the server is already up.
# Usage: export ES_ANALYTICS_POSTGRES_URL="$(.ci/postgres.sh)"
set -euo pipefail
ROLE=es_analytics
DB=es_analytics_test
PORT="${ES_ANALYTICS_POSTGRES_PORT:-5432}"
as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y postgresql >&2
fi
VERSION="$(ls /usr/lib/postgresql | sort -V | tail -1)"
cluster() { pg_lsclusters -h | awk -v v="$VERSION" -v f="$1" '$1==v && $2=="main" {print $f}'; }
if [ -z "$(cluster 2)" ]; then
  pg_createcluster "$VERSION" main -p "$PORT" >&2
fi
if [ "$(cluster 4)" != online ]; then
  pg_ctlcluster "$VERSION" main start >&2
fi
PORT="$(cluster 3)"
for _ in $(seq 1 50); do
  as_postgres psql -p "$PORT" -qtAc "SELECT 1" >/dev/null 2>&1 && break
  sleep 0.2
done
if [ "$(as_postgres psql -p "$PORT" -qtAc "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
  as_postgres psql -p "$PORT" -qc "CREATE ROLE $ROLE LOGIN SUPERUSER PASSWORD '$ROLE'" >&2
fi
if [ "$(as_postgres psql -p "$PORT" -qtAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
  as_postgres psql -p "$PORT" -qc "CREATE DATABASE $DB OWNER $ROLE" >&2
fi
echo "postgresql://$ROLE:$ROLE@localhost:$PORT/$DB"
