#!/usr/bin/env bash
# The tests that run inside PostgreSQL, on one version: the pg_tests (cargo pgrx test), the SQL tests in tests/sql and
# the pg_regress tests in tests/regress, each on a throw-away cluster. scripts/test.sh runs them on the distribution's
# PostgreSQL and on 18; any of 13–18 works (one the distribution does not package is built from source first, see
# scripts/postgres.sh). Without a version: the distribution's.
#
#     bash scripts/test-postgres.sh 17
set -euo pipefail
cd "$(dirname "$0")/.."
[ -z "${1:-}" ] || export PG_VERSION=$1
source scripts/postgres.sh
export PG_VERSION
bash scripts/install-deps.sh
export PATH=$HOME/.cargo/bin:$PATH # where rustup puts cargo on a machine that had none
source scripts/cluster.sh
echo "PostgreSQL: $("$PG_CONFIG" --version) ($PG_BIN)"

# Release builds throughout: the pg_tests, the installed extension and the Debian package (tests/package.sh) then
# share one build of the dependencies instead of a debug one and a release one (CI time on 2 cores).
echo "== pg_tests (PostgreSQL $PG_VERSION)"
# RUST_TEST_NOCAPTURE: a pg_test that cannot check something on this machine says SKIPPED (scripts/test.sh counts them).
RUST_TEST_NOCAPTURE=1 cargo pgrx test "pg$PG_VERSION" --release --runas pgrxtest --pgdata "/tmp/pgrx-pgdata-$PG_VERSION"

echo "== SQL tests (PostgreSQL $PG_VERSION)"
install_extension --release
bash tests/run_sql_tests.sh

echo "== pg_regress tests (PostgreSQL $PG_VERSION)"
bash tests/run_regress.sh
