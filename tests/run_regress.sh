#!/usr/bin/env bash
# The pg_regress tests: tests/regress/sql/*.sql run by PostgreSQL's pg_regress on a throw-away cluster (qwen_embed
# preloaded, the bundled test model), their output compared with tests/regress/expected/*.out, so that any change of
# behaviour a user would see is a diff. Needs the extension installed (scripts/test.sh does that).
#
#     bash tests/run_regress.sh            # all of them
#     QWEN_EMBED_REGRESS_ACCEPT=1 bash tests/run_regress.sh   # after a deliberate change: copy the new output over
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
test_cluster regress
pg_regress=$(dirname "$("$PG_CONFIG" --pgxs)")/../test/regress/pg_regress
work=$(scratch_dir)/regress
mkdir -p "$work"
cp -r tests/regress/sql tests/regress/expected "$work"/
chmod -R a+rwX "$work" # pg_regress runs as the server's user, which reads and writes here
pg -q -c "CREATE DATABASE qwen_embed_regress" # --use-existing: pg_regress does not create it
tests=$(cd tests/regress/sql && ls ./*.sql | sed 's|^\./||; s|\.sql$||')
# shellcheck disable=SC2086
if as_postgres "$pg_regress" --use-existing --host="$PGHOST" --port="$PGPORT" --user=postgres \
    --dbname=qwen_embed_regress --inputdir="$work" --outputdir="$work" $tests; then
    exit 0
fi
if [ -n "${QWEN_EMBED_REGRESS_ACCEPT:-}" ]; then
    for t in $tests; do cp "$work/results/$t.out" "tests/regress/expected/$t.out"; done
    echo "accepted the new output into tests/regress/expected"
    exit 0
fi
cat "$work/regression.diffs" >&2
exit 1
