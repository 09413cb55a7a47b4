#!/usr/bin/env bash
# Makes sure a PostgreSQL answers where the tests look for it (127.0.0.1:5432,
# user postgres, no password), so that `./scripts/test.sh` works on a fresh
# Debian machine too:
#   1. one already answers: nothing to do;
#   2. a cluster is installed but stopped: start it;
#   3. none is installed: install Debian's `postgresql` package (as root or
#      with sudo), start its cluster, and let local TCP connections in without
#      a password (trust for 127.0.0.1 only: a test machine's setting).
# POSTBOX_TEST_DATABASE_URL points the tests elsewhere; then this script only
# reports whether that server answers.
set -euo pipefail

HOST=127.0.0.1
PORT=5432
READY_WAIT_S=30

answers() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

wait_ready() {
    for _ in $(seq "$READY_WAIT_S"); do
        answers && return 0
        sleep 1
    done
    echo "postgres.sh: PostgreSQL did not answer on $HOST:$PORT within ${READY_WAIT_S}s" >&2
    return 1
}

if [ -n "${POSTBOX_TEST_DATABASE_URL:-}" ]; then
    echo "postgres.sh: the tests use POSTBOX_TEST_DATABASE_URL; not managing PostgreSQL" >&2
    exit 0
fi

if answers; then
    exit 0
fi

if ! command -v pg_lsclusters >/dev/null; then
    echo "postgres.sh: no PostgreSQL here; installing Debian's postgresql package" >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
fi

version=$(pg_lsclusters --no-header | awk 'NR == 1 { print $1 }')
cluster=$(pg_lsclusters --no-header | awk 'NR == 1 { print $2 }')
if [ -z "$version" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    cluster=main
    as_root pg_createcluster "$version" "$cluster"
fi

hba="/etc/postgresql/$version/$cluster/pg_hba.conf"
if [ -f "$hba" ] && ! as_root grep -Eq "^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust" "$hba"; then
    echo "postgres.sh: letting 127.0.0.1 connect without a password (test machine)" >&2
    as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
fi

echo "postgres.sh: starting PostgreSQL $version/$cluster" >&2
as_root pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start || true
wait_ready
