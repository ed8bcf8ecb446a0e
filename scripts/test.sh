#!/usr/bin/env bash
# All tests: the model core against transformers' reference vectors (plain cargo test), the extension's pg_tests on a
# throw-away server (cargo pgrx test), and the SQL tests in tests/sql against the system cluster with the extension
# installed (transactions, rollback, settings across statements, as a client sees them), then the server-level fault
# and load tests (tests/faults.sh, tests/load.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
source scripts/cluster.sh

echo "== model core"
cargo test -p qwen_embed_model

echo "== pg_tests"
cargo pgrx test pg15 --runas pgrxtest --pgdata /tmp/pgrx-pgdata

echo "== SQL tests"
install_extension
model=$(install_model tests/fixtures/tiny-qwen3 tiny-qwen3)
install_model tests/fixtures/tiny-qwen3 tiny-qwen3-copy >/dev/null
configure_cluster "$model" f32 # f32: results compare with transformers' fp32 reference to 1e-4 on any CPU
bash tests/run_sql_tests.sh

echo "== faults: kill -9 mid-embed, a model over the memory limit"
bash tests/faults.sh

echo "== load: pgbench, 8 clients, 60 s"
bash tests/load.sh 60 8
