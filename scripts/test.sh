#!/usr/bin/env bash
# All tests: the model core against transformers' reference vectors (plain cargo test), the extension's pg_tests on a
# throw-away server (cargo pgrx test), and the SQL tests in tests/sql against the system cluster with the extension
# installed (transactions, rollback, settings across statements, as a client sees them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
source scripts/cluster.sh

echo "== model core"
cargo test -p qwen_embed_model

echo "== pg_tests"
cargo pgrx test pg15 --runas pgrxtest --pgdata /tmp/pgrx-pgdata

echo "== SQL tests"
cargo pgrx install --pg-config $PG_CONFIG ${SUDO:+--sudo}
start_cluster
model=$(install_model tests/fixtures/tiny-qwen3 tiny-qwen3)
install_model tests/fixtures/tiny-qwen3 tiny-qwen3-copy >/dev/null
pg -c "LOAD 'qwen_embed'" -c "ALTER SYSTEM SET qwen_embed.model_path = '$model'" \
    -c "ALTER SYSTEM SET qwen_embed.dtype = 'f32'" -c "SELECT pg_reload_conf()" >/dev/null
bash tests/run_sql_tests.sh
