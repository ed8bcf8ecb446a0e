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

# Async tables: the queue is a table like any other, replicated; nothing runs on the standby, and after a promotion
# the promoted server's worker drains it. The primary's worker cannot embed meanwhile (its model path is broken after
# the base backup was taken), so its rows stay queued, uncharged.
PGDATABASE=qwen_embed_standby pg -q -c "ALTER SYSTEM SET qwen_embed.model_path = '/nonexistent'" \
    -c "SELECT pg_reload_conf()" >/dev/null
sleep 1
PGDATABASE=qwen_embed_standby pg -q <<'SQL' >/dev/null
CREATE TABLE notes (id int PRIMARY KEY, body text, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('notes', 'body', 'embedding', mode => 'async');
INSERT INTO notes SELECT g, 'queued on the primary ' || g FROM generate_series(1, 200) g;
SQL
for _ in $(seq 100); do
    [ "$(on_replica -c "SELECT (SELECT count(*) FROM qwen_embed.async_queue) + (SELECT coalesce(sum(cardinality(keys)), 0) FROM qwen_embed.async_inserted)" 2>/dev/null)" = 200 ] && break
    sleep 0.1
done
[ "$(on_replica -c "SELECT (SELECT count(*) FROM qwen_embed.async_queue) + (SELECT coalesce(sum(cardinality(keys)), 0) FROM qwen_embed.async_inserted)")" = 200 ] || fail "the queue did not reach the replica"
waited=$(on_replica -v ON_ERROR_STOP=0 -c "SELECT qwen_embed.wait_for_embeddings('notes', '1 s')" \
    -c '\echo :LAST_ERROR_SQLSTATE' 2>&1)
echo "$waited" | grep -qx 57014 || fail "wait_for_embeddings on the standby did not time out with 57014: $waited"
workers=$(on_replica -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'qwen_embed async%'")
[ "$workers" = 0 ] || fail "$workers async launcher or workers run on the hot standby"
# The primary's worker failed a batch for a reason of the whole batch (its model is missing): the table's last_error
# says so, replicated like the rest, and no item was charged an attempt for it (the batch-level failure path).
status_sql="SELECT last_error LIKE '%/nonexistent%', pending, retrying, failed FROM qwen_embed.async_status WHERE relation = 'notes'::regclass"
for _ in $(seq 300); do
    [ "$(on_replica -c "$status_sql" | cut -d'|' -f1)" = t ] && break
    sleep 0.1
done
status=$(on_replica -c "$status_sql")
[ "$status" = "t|200|0|0" ] ||
    fail "async_status of notes on the replica (last error names the model, pending, retrying, failed): $status"
cluster_stop "$primary"
as_postgres "$PG_BIN/pg_ctl" -D "$replica/data" -w promote >/dev/null
on_replica -c "SELECT qwen_embed.wait_for_embeddings('notes', '2 min')" >/dev/null || fail "the queue did not drain after the promotion"
drained=$(on_replica -c "SELECT count(*) FROM notes WHERE 1 - cosine_sim(embedding, embed(body)) < 1e-5")
[ "$drained" = 200 ] || fail "$drained of 200 rows embedded after the promotion"
echo "ok: async rows queued on the primary reached the standby, which ran no async worker (wait_for_embeddings timed"
echo "    out there with 57014); the primary's failed batches left last_error and charged no item; promoted, it embedded"
echo "    all 200"
