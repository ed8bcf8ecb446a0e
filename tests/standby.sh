#!/usr/bin/env bash
# Hot standby: a primary and a streaming replica, both throw-away clusters on this machine. The model server runs on
# the replica too: embed() and the HNSW top-k query work there, and the embedding triggers and backfill meet
# PostgreSQL's normal read-only errors. Needs the extension installed (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
test_cluster primary
primary=$PGHOST
fail() { echo "FAILED: $*" >&2; cluster_log "$primary" >&2; [ -z "${replica:-}" ] || cluster_log "$replica" >&2; exit 1; }
pg -q -c "CREATE DATABASE qwen_embed_standby" >/dev/null
PGDATABASE=qwen_embed_standby pg -q <<'SQL' >/dev/null
CREATE EXTENSION qwen_embed CASCADE;
CREATE TABLE docs (id int PRIMARY KEY, body text, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('docs', 'body', 'embedding');
INSERT INTO docs (id, body) SELECT g, 'document ' || g || ' about topic ' || (g % 7) FROM generate_series(1, 300) g;
CREATE INDEX ON docs USING hnsw (embedding vector_cosine_ops);
SQL

# A base backup of the primary, started as a streaming standby on a socket of its own.
replica=$(scratch_dir)/replica
$SUDO install -d -o postgres -g postgres -m 700 "$replica"
as_postgres pg_basebackup -D "$replica/data" -R -X stream -c fast
echo "unix_socket_directories = '$replica'" | as_postgres tee -a "$replica/data/postgresql.conf" >/dev/null
QWEN_EMBED_CLUSTERS+=("$replica")
cluster_start "$replica"
on_replica() { PGHOST=$replica PGDATABASE=qwen_embed_standby pg -q -At "$@"; }
[ "$(on_replica -c "SELECT pg_is_in_recovery()")" = t ] || fail "the replica is not in recovery"
for _ in $(seq 100); do
    [ "$(on_replica -c "SELECT count(*) FROM docs" 2>/dev/null)" = 300 ] && break
    sleep 0.1
done

served=$(on_replica -c "SELECT vector_dims(embed('asked on the replica'))" \
    -c "SELECT value FROM qwen_embed.info() WHERE key = 'route'" | tr '\n' ' ')
[ "$served" = "64 server " ] || fail "embed() on the replica: $served"
route=server
top=$(on_replica -c "SET enable_seqscan = off" \
    -c "SELECT string_agg(id::text, ',') FROM (SELECT id FROM docs ORDER BY embedding <=> embed('document 42 about topic 0') LIMIT 3) t")
primary_top=$(PGDATABASE=qwen_embed_standby pg -q -At -c "SET enable_seqscan = off" \
    -c "SELECT string_agg(id::text, ',') FROM (SELECT id FROM docs ORDER BY embedding <=> embed('document 42 about topic 0') LIMIT 3) t")
[ -n "$top" ] && [ "$top" = "$primary_top" ] || fail "top-3 on the replica ($top) differs from the primary's ($primary_top)"
write=$(on_replica -v ON_ERROR_STOP=0 -c "INSERT INTO docs (id, body) VALUES (1000, 'x')" -c '\echo :LAST_ERROR_SQLSTATE' 2>&1)
echo "$write" | grep -qx 25006 || fail "an INSERT on the replica did not give 25006: $write"
backfill=$(on_replica -v ON_ERROR_STOP=0 -c "CALL qwen_embed.backfill('docs', 'body', 'embedding')" \
    -c '\echo :LAST_ERROR_SQLSTATE' 2>&1)
echo "$backfill" | grep -qx 25006 || fail "backfill on the replica did not give 25006: $backfill"
echo "ok: on a streaming replica embed() works through its model server (route $route), the HNSW top-3 equals the"
echo "    primary's ($top), INSERT through the triggers and backfill give ERROR 25006 (read-only transaction)"
