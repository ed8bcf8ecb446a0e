#!/usr/bin/env bash
# Writes sql/qwen_embed--0.1.0--0.2.0.sql, the upgrade script of the first schema change (async embedding), from the
# sources a fresh install runs: the SQL that pgrx generates for the two new Rust functions, sql/async/*.sql,
# sql/create_embedding_triggers.sql (its function gained the mode argument: dropped and created again), the
# backfill procedure of sql/backfill.sql (it now sets its requests' priority) and its progress table's row-level
# security (with the report function, no longer SECURITY DEFINER). tests/async.sh checks that a database updated with
# it has exactly a fresh install's objects.
#
#     bash tools/upgrade-0.1.0-0.2.0.sh [pg_config]
set -euo pipefail
cd "$(dirname "$0")/.."
# An upgrade script is what was released: once 0.2.0 is out (a tag v0.2.0, or the crate's version moved past it),
# databases have run this file, and a later schema change is a new script (0.2.0 -> the next), never a rewrite.
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
if [ "$version" != 0.2.0 ] || git rev-parse -q --verify refs/tags/v0.2.0 >/dev/null; then
    echo "tools/upgrade-0.1.0-0.2.0.sh: 0.2.0 is released (version $version); its upgrade script is not written again." >&2
    echo "Write the next upgrade as sql/qwen_embed--0.2.0--$version.sql." >&2
    exit 1
fi
pg_config=${1:-/usr/lib/postgresql/15/bin/pg_config}
schema=$(mktemp)
trap 'rm -f "$schema"' EXIT
cargo pgrx schema --pg-config "$pg_config" -o "$schema" >/dev/null 2>&1
# A generated function's block: from its "-- src/…" comment line to the blank line after its AS clause.
generated() {
    awk -v fn="$1" '
        /^-- src\// { block = $0 "\n"; keep = 0; next }
        block != "" { block = block $0 "\n"; if (index($0, "-- qwen_embed::" fn) == 1) keep = 1 }
        block != "" && /^AS .*_wrapper.;$/ { if (keep) printf "%s\n", block; block = "" }
    ' "$schema"
}
{
    echo "-- qwen_embed 0.1.0 -> 0.2.0: asynchronous embedding. Made by tools/upgrade-0.1.0-0.2.0.sh; do not edit."
    echo "\\echo Use \"ALTER EXTENSION qwen_embed UPDATE TO '0.2.0'\" to load this file. \\quit"
    echo
    echo "DROP FUNCTION qwen_embed.create_embedding_triggers(regclass, name, name, text);"
    echo
    generated async_embed::_async_wake
    generated async_embed::_async_worker_pid
    cat sql/async/queue.sql sql/async/capture.sql sql/async/worker.sql sql/async/admin.sql
    echo
    cat sql/create_embedding_triggers.sql
    echo
    # The progress table's row-level security and the report function, which lost SECURITY DEFINER (it checked the
    # privilege of its owner, not of its caller).
    sed -n '/^ALTER TABLE qwen_embed.backfill_progress ENABLE/,/^GRANT SELECT, INSERT, UPDATE/p' sql/backfill.sql
    echo
    sed -n '/^CREATE FUNCTION qwen_embed.backfill_report(/,/^\$\$;$/p' sql/backfill.sql |
        sed '1s/^CREATE FUNCTION/CREATE OR REPLACE FUNCTION/'
    echo
    sed -n '/^CREATE PROCEDURE qwen_embed.backfill(/,/^\$\$;$/p' sql/backfill.sql |
        sed '1s/^CREATE PROCEDURE/CREATE OR REPLACE PROCEDURE/'
} >sql/qwen_embed--0.1.0--0.2.0.sql
echo "wrote sql/qwen_embed--0.1.0--0.2.0.sql"
