#!/usr/bin/env bash
# Asynchronous embedding (sql/async.sql, src/async_embed/) on a throw-away preloaded cluster: what the writer queues
# (nothing on rollback, only changed texts, nothing for deleted rows), that 10,000 rows drain to vectors equal to
# embed(body), concurrent updates while the worker drains (no older result over a newer one), kill -9 of the worker
# and of the model server mid-batch (nothing lost), a poison row (fails alone, parked, retried, dropped), switching
# modes, and the upgrade of a 0.1.0 database. Needs the extension installed (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
test_cluster async "qwen_embed.async_max_attempts = 2"
cluster=$PGHOST db=qwen_embed_async
fail() { echo "FAILED: $*" >&2; cluster_log "$cluster" 60 >&2; exit 1; }
q() { pg -q -At -d $db "$@"; }
pg -q -c "CREATE DATABASE $db"
q <<'SQL' >/dev/null
CREATE EXTENSION qwen_embed CASCADE;
CREATE TABLE docs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text, tag text, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('docs', 'body', 'embedding', mode => 'async');
SQL
# Rows waiting for the worker: items, and the inserted rows of INSERT statements not yet turned into items.
pending_sql="SELECT (SELECT count(*) FROM qwen_embed.async_queue) +
                    (SELECT coalesce(sum(cardinality(keys)), 0) FROM qwen_embed.async_inserted)"
queued() { q -c "$pending_sql"; }
# Every stored vector equals a fresh embed() of its row's current text (and no row with text lacks one).
check_vectors() {
    local bad
    bad=$(q -c "SELECT count(*) FROM docs WHERE body IS NOT NULL AND (embedding IS NULL OR 1 - cosine_sim(embedding, embed(body)) > 1e-5)")
    [ "$bad" = 0 ] || fail "$1: $bad rows whose vector is missing or differs from embed(body)"
}

echo "-- the writer's transaction: rollback, unchanged texts, deletes"
[ "$(q -c "BEGIN" -c "INSERT INTO docs (body) VALUES ('rolled back')" -c "$pending_sql" -c "ROLLBACK")" = 1 ] ||
    fail "an INSERT did not queue its row inside its transaction"
[ "$(queued)" = 0 ] || fail "a rolled-back INSERT left $(queued) items"
q -c "INSERT INTO docs (body) VALUES ('first'), ('second')" -c "SELECT qwen_embed.wait_for_embeddings('docs', '30 s')" >/dev/null
check_vectors "two rows"
in_tx=$(q -c "BEGIN" -c "UPDATE docs SET tag = 'other column'" -c "$pending_sql" \
    -c "UPDATE docs SET body = body || ' changed' WHERE body = 'first'" -c "$pending_sql" \
    -c "ROLLBACK" | tr '\n' ' ')
[ "$in_tx" = "0 1 " ] || fail "queued after an UPDATE of another column / of one text: $in_tx, expected 0 1"
in_tx=$(q -c "BEGIN" -c "INSERT INTO docs (body) VALUES ('short-lived')" \
    -c "DELETE FROM docs WHERE body = 'short-lived'" -c "$pending_sql" -c "ROLLBACK")
[ "$in_tx" = 0 ] || fail "a DELETE left $in_tx items of its rows"
[ "$(q -c "SELECT count(*) FROM docs WHERE embedding IS NULL")" = 0 ] || fail "an UPDATE of another column cleared a vector"
# Rows inserted, then changed or deleted before the worker turned the INSERT's keys into items.
q -c "BEGIN" -c "INSERT INTO docs (body) VALUES ('inserted one'), ('inserted two'), ('inserted three')" \
    -c "UPDATE docs SET body = 'inserted two, changed' WHERE body = 'inserted two'" \
    -c "DELETE FROM docs WHERE body = 'inserted three'" -c "COMMIT" \
    -c "SELECT qwen_embed.wait_for_embeddings('docs', '30 s')" >/dev/null
check_vectors "rows changed and deleted in the transaction that inserted them"
[ "$(queued)" = 0 ] || fail "$(queued) items left after rows changed and deleted in their inserting transaction"
echo "ok: rollback queues nothing; an UPDATE of another column queues nothing, of the text one item; DELETE unqueues"

echo "-- 10,000 rows"
started=$(date +%s.%N)
q -c "INSERT INTO docs (body) SELECT 'row ' || g || ' about topic ' || (g % 97) FROM generate_series(1, 10000) g"
insert_s=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
q -c "SELECT qwen_embed.wait_for_embeddings('docs', '10 min')" >/dev/null
drain_s=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
check_vectors "10,000 rows"
status=$(q -c "SELECT pending, in_progress, failed, embedded >= 10002 FROM qwen_embed.async_status WHERE relation = 'docs'::regclass")
[ "$status" = "0|0|0|t" ] || fail "async_status after the drain: $status"
echo "ok: INSERT of 10,000 rows returned in ${insert_s}s; all embedded ${drain_s}s after it began, equal to embed(body)"

echo "-- concurrent updates while the worker drains (pgbench, 4 clients, 15 s)"
scripts=$(scratch_dir)/pgbench
mkdir -p "$scripts"
cat >"$scripts/update.sql" <<'SQL'
\set id random(3, 2002)
UPDATE docs SET body = 'revision ' || :client_id || '.' || random() || ' of row ' || :id WHERE id = :id;
SQL
chmod -R a+rX "$scripts"
out=$(as_postgres "$PG_BIN/pgbench" -n -c 4 -j 2 -T 15 -f "$scripts/update.sql" $db 2>&1) || fail "pgbench: $out"
failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
[ "${failed:-0}" = 0 ] || fail "pgbench: $failed failed transactions"
q -c "SELECT qwen_embed.wait_for_embeddings('docs', '5 min')" >/dev/null
check_vectors "after concurrent updates"
echo "ok: $(echo "$out" | grep -o 'number of transactions actually processed: [0-9]*' | grep -o '[0-9]*$') updates of random rows; afterwards every vector equals embed(current body)"

echo "-- two tables share the worker's batches"
q -c "CREATE TABLE big (id int PRIMARY KEY, body text, embedding vector(64))" \
    -c "CREATE TABLE small (id int PRIMARY KEY, body text, embedding vector(64))" \
    -c "SELECT qwen_embed.create_embedding_triggers('big', 'body', 'embedding', mode => 'async')" \
    -c "SELECT qwen_embed.create_embedding_triggers('small', 'body', 'embedding', mode => 'async')" >/dev/null
q -c "INSERT INTO big SELECT g, repeat('a long backlog row ' || g || ' ', 20) FROM generate_series(1, 5000) g"
q -c "INSERT INTO small SELECT g, 'queued behind the backlog ' || g FROM generate_series(1, 10) g"
left=""
for _ in $(seq 600); do
    left=$(q -c "SELECT (SELECT pending + in_progress FROM qwen_embed.async_status WHERE relation = 'small'::regclass) || ' ' ||
                        (SELECT pending + in_progress FROM qwen_embed.async_status WHERE relation = 'big'::regclass)")
    [ "${left% *}" = 0 ] && break
    sleep 0.05
done
[ "${left% *}" = 0 ] && [ "${left#* }" -gt 2500 ] ||
    fail "the small table waited for the big one's backlog (small, big left: $left)"
q -c "SELECT qwen_embed.wait_for_embeddings('big', '5 min')" -c "DROP TABLE big, small" >/dev/null
echo "ok: 10 rows queued behind a 5,000-row backlog of another table were embedded while ${left#* } of it still waited"

echo "-- TRUNCATE and DELETE while the worker drains"
q -c "CREATE TABLE scratch (id int PRIMARY KEY, body text, embedding vector(64))" \
    -c "SELECT qwen_embed.create_embedding_triggers('scratch', 'body', 'embedding', mode => 'async')" >/dev/null
for round in $(seq 8); do
    q -c "INSERT INTO scratch SELECT g, 'scratch row ' || g FROM generate_series(1, 3000) g" >/dev/null
    sleep 0.3 # the worker claims and computes
    if [ $((round % 2)) = 0 ]; then q -c "TRUNCATE scratch" >/dev/null; else q -c "DELETE FROM scratch" >/dev/null; fi ||
        fail "a TRUNCATE or DELETE failed while the worker drained (round $round)"
done
left=$(q -c "SELECT (SELECT count(*) FROM qwen_embed.async_queue q WHERE q.table_id = a.id) +
                    (SELECT coalesce(sum(cardinality(i.keys)), 0) FROM qwen_embed.async_inserted i WHERE i.table_id = a.id)
             FROM qwen_embed.async_tables a WHERE a.relation = 'scratch'::regclass")
[ "$left" = 0 ] || fail "$left items or inserted keys of deleted rows are left"
q -c "DROP TABLE scratch" >/dev/null
echo "ok: 8 rounds of 3,000 rows inserted, then deleted or truncated while the worker drained: no writer failed, no item left"

# Waits until the worker holds a batch (in progress), for the kill tests.
wait_in_progress() {
    for _ in $(seq 200); do
        [ "$(q -c "SELECT in_progress > 0 FROM qwen_embed.async_status WHERE relation = 'docs'::regclass")" = t ] && return
        sleep 0.05
    done
    fail "the worker never took a batch"
}
long_rows="INSERT INTO docs (body) SELECT repeat('long text ' || g || ' ', 200) FROM generate_series(1, 600) g"

echo "-- kill -9 of the worker mid-batch"
q -c "$long_rows"
wait_in_progress
worker=$(q -c "SELECT qwen_embed._async_worker_pid()")
[ -n "$worker" ] || fail "no worker pid"
$SUDO kill -9 "$worker"
for _ in $(seq 120); do q -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.5; done
q -c "SELECT qwen_embed.wait_for_embeddings('docs', '5 min')" >/dev/null || fail "the queue did not drain after the crash"
check_vectors "after kill -9 of the worker"
echo "ok: killed worker $worker (the cluster restarted); the queue drained afterwards, every vector equals embed(body)"

echo "-- kill -9 of the model server mid-batch"
q -c "SELECT vector_dims(embed('the server is up'))" >/dev/null
q -c "$long_rows"
wait_in_progress
server=$(q -c "SELECT value FROM qwen_embed.server_info() WHERE key = 'pid'")
$SUDO kill -9 "$server"
q -c "SELECT qwen_embed.wait_for_embeddings('docs', '5 min')" >/dev/null || fail "the queue did not drain after the server died"
check_vectors "after kill -9 of the model server"
charged=$(q -c "SELECT count(*) FROM qwen_embed.async_queue WHERE attempts > 0")
[ "$charged" = 0 ] || fail "$charged items were charged for the server's death"
echo "ok: killed model server $server; the batch went back uncharged and the queue drained"

echo "-- a poison row fails alone"
q -c "INSERT INTO docs (body) SELECT 'good neighbour ' || g FROM generate_series(1, 20) g
      UNION ALL SELECT repeat('poison ', 5000)"
q -c "SELECT qwen_embed.wait_for_embeddings('docs', '2 min')" >/dev/null 2>&1 # waits out the retry; WARNING: 1 failed
[ "$(q -c "SELECT count(*) FROM docs WHERE body LIKE 'good neighbour%' AND embedding IS NOT NULL")" = 20 ] ||
    fail "the poison row's neighbours were not written"
parked=$(q -c "SELECT attempts || '|' || (last_error LIKE '%token%') FROM qwen_embed.async_failed")
[ "$parked" = "2|true" ] || fail "the poison row is not parked after 2 attempts with its error: $parked"
[ "$(q -c "SELECT failed FROM qwen_embed.async_status")" = 1 ] || fail "async_status does not count the failed item"
retried=$(q -c "BEGIN" -c "SELECT qwen_embed.retry_failed_embeddings('docs')" \
    -c "SELECT count(*) FROM qwen_embed.async_queue WHERE NOT failed AND attempts = 0" -c "COMMIT" | tr '\n' ' ')
[ "$retried" = "1 1 " ] || fail "retry_failed_embeddings: $retried (retried, then pending), expected 1 1"
q -c "SELECT qwen_embed.wait_for_embeddings('docs', '2 min')" >/dev/null 2>&1
[ "$(q -c "SELECT qwen_embed.drop_failed_embeddings('docs')")" = 1 ] || fail "drop_failed_embeddings"
[ "$(queued)" = 0 ] || fail "items left after dropping the failed one"
q -c "DELETE FROM docs WHERE body LIKE 'poison%'"
echo "ok: the 20 neighbours were written; the poison row was parked after 2 attempts with its error, retried, dropped"

echo "-- rows gone behind the triggers' back, repair"
q -c "SET session_replication_role = replica" \
    -c "UPDATE docs SET body = 'changed without triggers ' || id WHERE id IN (SELECT id FROM docs ORDER BY id LIMIT 50)" \
    -c "INSERT INTO docs (body) VALUES ('inserted without triggers')" >/dev/null
[ "$(q -c "SELECT qwen_embed.repair_embeddings('docs')")" = 51 ] || fail "repair_embeddings did not queue the 51 rows"
q -c "SET session_replication_role = replica" \
    -c "DELETE FROM docs WHERE id IN (SELECT id FROM docs WHERE body LIKE 'changed without%' ORDER BY id LIMIT 11)" >/dev/null
q -c "SELECT qwen_embed.wait_for_embeddings('docs', '2 min')" >/dev/null
check_vectors "after repair"
[ "$(q -c "SELECT failed FROM qwen_embed.async_status")" = 0 ] || fail "a queued row deleted behind the triggers failed"
echo "ok: repair queued the 51 rows written with the triggers bypassed; 11 of them deleted meanwhile were no error"

echo "-- switching modes"
q -c "SELECT qwen_embed.set_embedding_mode('docs', 'embedding', 'sync')" | grep -qx async || fail "set_embedding_mode to sync"
q -c "INSERT INTO docs (body) VALUES ('written in sync mode')"
[ "$(q -c "SELECT embedding IS NOT NULL FROM docs WHERE body = 'written in sync mode'")" = t ] || fail "sync mode did not embed in the statement"
q -c "SELECT qwen_embed.set_embedding_mode('docs', 'embedding', 'async')" | grep -qx sync || fail "set_embedding_mode to async"
q -c "INSERT INTO docs (body) VALUES ('written in async mode again')" -c "SELECT qwen_embed.wait_for_embeddings('docs')" >/dev/null
check_vectors "after switching modes"
echo "ok: async -> sync embeds in the statement, sync -> async queues again"

echo "-- upgrade from 0.1.0"
extdir=$("$PG_CONFIG" --sharedir)/extension
$SUDO install -m 644 tests/fixtures/upgrade/qwen_embed--0.1.0.sql "$extdir/"
pg -q -c "CREATE DATABASE qwen_embed_upgrade" -c "CREATE DATABASE qwen_embed_fresh"
u() { pg -q -At -d qwen_embed_upgrade "$@"; }
u <<'SQL' >/dev/null
CREATE EXTENSION qwen_embed VERSION '0.1.0' CASCADE;
CREATE TABLE notes (id int PRIMARY KEY, body text, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('notes', 'body', 'embedding');
INSERT INTO notes VALUES (1, 'written by 0.1.0');
ALTER EXTENSION qwen_embed UPDATE;
INSERT INTO notes VALUES (2, 'written by the sync triggers after the update');
SELECT qwen_embed.set_embedding_mode('notes', 'embedding', 'async');
INSERT INTO notes VALUES (3, 'written in async mode after the update');
SELECT qwen_embed.wait_for_embeddings('notes');
SQL
[ "$(u -c "SELECT extversion FROM pg_extension WHERE extname = 'qwen_embed'")" = "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] ||
    fail "ALTER EXTENSION UPDATE did not reach this version"
[ "$(u -c "SELECT count(*) FROM notes WHERE 1 - cosine_sim(embedding, embed(body)) < 1e-5")" = 3 ] || fail "vectors after the upgrade"
pg -q -d qwen_embed_fresh -c "CREATE EXTENSION qwen_embed CASCADE" >/dev/null
# The upgraded schema equals a fresh install's: every member object with its definition.
objects="SELECT pg_describe_object(d.classid, d.objid, 0)
        || CASE WHEN p.prokind <> 'a' THEN ' ' || md5(pg_get_functiondef(p.oid)) ELSE '' END
        || CASE WHEN c.relkind = 'v' THEN ' ' || md5(pg_get_viewdef(c.oid)) ELSE '' END
        || coalesce(' ' || (SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
                              FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped), '')
   FROM pg_depend d
   LEFT JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid
   LEFT JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
  WHERE d.deptype = 'e' AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'qwen_embed')
  ORDER BY 1"
diff <(u -c "$objects") <(pg -q -At -d qwen_embed_fresh -c "$objects") >&2 ||
    fail "the upgraded extension differs from a fresh install (above: < upgraded, > fresh)"
echo "ok: a 0.1.0 database with sync triggers updated to this version: its triggers work, async mode works, and its"
echo "    objects equal a fresh install's ($(u -c "SELECT count(*) FROM pg_depend WHERE deptype = 'e' AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'qwen_embed')") objects)"
