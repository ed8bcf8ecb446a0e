#!/usr/bin/env bash
# Runs each tests/sql/*.sql in a fresh database of a throw-away cluster (qwen_embed preloaded, the bundled test model)
# as its superuser. A test file checks its own results and fails by raising an ERROR, which stops psql
# (ON_ERROR_STOP). tests/sql_lib/checks.sql runs first in each database: expect(), expect_error(), and ASSERT proven on.
# NOTICEs starting with "qwen_embed test:" are figures worth showing; QWEN_EMBED_SQL_TESTS picks the files.
# Needs the extension installed (scripts/test.sh does that).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
test_cluster sql
models=$(dirname "$QWEN_EMBED_MODEL")

# Broken model directories for tests/sql/errors.sql, each wrong in one way.
broken() { mkdir -p "$models/$1" && cp tests/fixtures/tiny-qwen3/{config.json,tokenizer.json} "$models/$1"/; }
broken unreadable && cp tests/fixtures/tiny-qwen3/model.safetensors "$models/unreadable"/ &&
    chmod 000 "$models/unreadable/model.safetensors"
broken truncated && head -c 100000 tests/fixtures/tiny-qwen3/model.safetensors >"$models/truncated/model.safetensors"
broken llama && cp tests/fixtures/tiny-qwen3/model.safetensors "$models/llama"/ &&
    sed -i 's/"model_type": *"qwen3"/"model_type": "llama"/' "$models/llama/config.json"
grep -q '"llama"' "$models/llama/config.json" || { echo "could not make the llama fixture" >&2; exit 1; }
chmod -R a+rX "$models" && chmod 000 "$models/unreadable/model.safetensors"

passed=0 failed=0 summary=()
for test in ${QWEN_EMBED_SQL_TESTS:-tests/sql/*.sql}; do
    name=$(basename "$test" .sql)
    # WITH (FORCE): sessions a failed file left behind (a psql it started, an async worker) do not stop the next file.
    if ! pg -q -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS qwen_embed_test WITH (FORCE)" \
        -c "CREATE DATABASE qwen_embed_test" >/dev/null; then
        echo "FAILED $name: could not make its database"
        summary+=("FAILED $name (no database)")
        failed=$((failed + 1))
        continue
    fi
    if out=$(PGDATABASE=qwen_embed_test pg -q -v model_dir="$models" -f tests/sql_lib/checks.sql -f "$test" 2>&1); then
        echo "ok     $name"
        echo "$out" | sed -n 's/.*NOTICE:  qwen_embed test: /       /p'
        summary+=("ok $name")
        passed=$((passed + 1))
    else
        echo "FAILED $name"
        echo "$out" | sed 's/^/    /' | tail -n 30
        cluster_log "$PGHOST" 20 | sed 's/^/    server: /'
        summary+=("FAILED $name")
        failed=$((failed + 1))
    fi
done
printf -v list '%s; ' "${summary[@]}"
echo "SQL tests: $passed passed, $failed failed (${list%; })"
[ "$failed" -eq 0 ]
