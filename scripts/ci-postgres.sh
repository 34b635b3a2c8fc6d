#!/usr/bin/env bash
# Installs Debian's PostgreSQL, starts a cluster on localhost, creates the role and database the
# server tests use, and prints the URL. Idempotent: running it again reuses what is there.
#
#   eval "$(scripts/ci-postgres.sh)"            # exports CRT_TEST_POSTGRES_URL
#   cargo test -p crt-server                    # the server suite, now against Postgres
#
# Needs root (apt-get, and to act as the postgres user). Everything it says goes to stderr except
# the final `export` line.
set -euo pipefail

ROLE=${CRT_PG_ROLE:-crt}
PASSWORD=${CRT_PG_PASSWORD:-crt}
DB=${CRT_PG_DB:-crt}
PORT=${CRT_PG_PORT:-5432}

say() { echo "ci-postgres: $*" >&2; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  say "installing postgresql (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
fi

VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
say "PostgreSQL $VERSION"

# The package usually creates the "main" cluster; create it if not (e.g. a container build
# where the post-install step did not run).
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$VERSION main"; then
  say "creating cluster $VERSION/main on port $PORT"
  pg_createcluster "$VERSION" main --port "$PORT" >&2
fi
CLUSTER_PORT=$(pg_lsclusters -h | awk -v v="$VERSION" '$1==v && $2=="main" {print $3}')
if ! pg_lsclusters -h | awk -v v="$VERSION" '$1==v && $2=="main" {print $4}' | grep -q online; then
  say "starting cluster $VERSION/main"
  pg_ctlcluster "$VERSION" main start >&2
fi

# Wait until it accepts connections.
for _ in $(seq 1 50); do
  if su postgres -c "pg_isready -q -h 127.0.0.1 -p $CLUSTER_PORT"; then break; fi
  sleep 0.2
done
su postgres -c "pg_isready -h 127.0.0.1 -p $CLUSTER_PORT" >&2

psql_admin() { su postgres -c "psql -v ON_ERROR_STOP=1 -q -p $CLUSTER_PORT -tAc \"$1\""; }

# CREATEDB: each test creates (and drops) its own database.
if [ "$(psql_admin "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != "1" ]; then
  say "creating role $ROLE"
  psql_admin "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'"
fi
if [ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
  say "creating database $DB"
  psql_admin "CREATE DATABASE $DB OWNER $ROLE"
fi

URL="postgres://$ROLE:$PASSWORD@127.0.0.1:$CLUSTER_PORT/$DB"
say "ready: $URL"
echo "export CRT_TEST_POSTGRES_URL=$URL"
