#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL server.
#
#   scripts/with-postgres.sh <command> [args…]
#
# Starts a fresh cluster in a temporary directory on a free loopback port, exports
# KEYWARD_TEST_POSTGRES_URL (a superuser URL to the `postgres` database; tests create their own
# databases), runs the command, then stops the server and removes the directory whatever the
# command's outcome. If KEYWARD_TEST_POSTGRES_URL is already set, the command just runs against it.
set -euo pipefail

if [ -n "${KEYWARD_TEST_POSTGRES_URL:-}" ]; then
  exec "$@"
fi

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$pgbin" ] || [ ! -x "$pgbin/initdb" ]; then
  echo "with-postgres: PostgreSQL server binaries not found (apt-get install postgresql)" >&2
  exit 1
fi

dir=$(mktemp -d /tmp/keyward-pg.XXXXXX)
chmod 755 "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')

# PostgreSQL refuses to run as root: run the server as the `postgres` system user then.
as_pg=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$dir"
  as_pg=(runuser -u postgres --)
fi

cleanup() {
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

"${as_pg[@]}" "$pgbin/initdb" -D "$dir/data" -U keyward --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c shared_buffers=128MB" start >/dev/null \
  || { cat "$dir/server.log" >&2; exit 1; }

export KEYWARD_TEST_POSTGRES_URL="postgres://keyward@127.0.0.1:$port/postgres"
echo "with-postgres: PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
set +e
"$@"
status=$?
set -e
exit $status
