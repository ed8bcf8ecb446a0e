#!/usr/bin/env bash
# Runs each tests/sql/*.sql in a fresh database as the postgres superuser. A test file checks its own results (DO
# blocks with ASSERT, \if on queried booleans) and fails by raising an ERROR, which stops psql (ON_ERROR_STOP).
# NOTICEs starting with "qwen_embed test:" are figures worth showing; QWEN_EMBED_SQL_TESTS picks the files.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
passed=0 failed=0
for test in ${QWEN_EMBED_SQL_TESTS:-tests/sql/*.sql}; do
    name=$(basename "$test" .sql)
    pg -q -c "DROP DATABASE IF EXISTS qwen_embed_test" -c "CREATE DATABASE qwen_embed_test" >/dev/null
    if out=$(pg -q -d qwen_embed_test -v model_dir=/var/lib/postgresql/qwen_embed_models -f - <"$test" 2>&1); then
        echo "ok     $name"
        echo "$out" | sed -n 's/.*NOTICE:  qwen_embed test: /       /p'
        passed=$((passed + 1))
    else
        echo "FAILED $name"
        echo "$out" | sed 's/^/    /' | tail -n 30
        failed=$((failed + 1))
    fi
done
echo "SQL tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
