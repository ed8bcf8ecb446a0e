#!/usr/bin/env bash
# Asynchronous embedding (sql/async/, src/async_embed/) on a throw-away preloaded cluster: what the writer queues
# (nothing on rollback, only changed texts, nothing for deleted rows), that 10,000 rows drain to vectors equal to
# embed(body), the lag at commit, prepared transactions, concurrent updates while the worker drains (no older result over a newer one), kill -9 of the worker
# and of the model server mid-batch (nothing lost), a poison row (fails alone, parked, retried, dropped), switching
# modes, a write-back that meets another session's row lock, renamed columns in both modes, one table's failures
# beside a healthy table (a constraint, a trigger of the user's, a dropped key column), composite primary keys,
# pg_dump and pg_restore, and the upgrade of a 0.1.0 database. Needs the extension installed (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
test_cluster async "qwen_embed.async_max_attempts = 2" "max_prepared_transactions = 4"
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
# The worker's requests reach the model server at priority async (behind queries, paused for them), none as a query.
by_priority="SELECT string_agg(value, ' ' ORDER BY key) FROM qwen_embed.server_info() WHERE key LIKE '%_priority_requests'"
read -r async0 backfill0 interactive0 <<<"$(q -c "$by_priority")"
q -c "INSERT INTO docs (body) VALUES ('first'), ('second')" -c "SELECT qwen_embed.wait_for_embeddings('docs', '30 s')" >/dev/null
read -r async1 backfill1 interactive1 <<<"$(q -c "$by_priority")"
[ "$async1" -gt "$async0" ] && [ "$interactive1" = "$interactive0" ] && [ "$backfill1" = "$backfill0" ] ||
    fail "the worker's requests by priority (async backfill interactive): $async0 $backfill0 $interactive0 -> $async1 $backfill1 $interactive1"
check_vectors "two rows"
in_tx=$(q -c "BEGIN" -c "UPDATE docs SET tag = 'other column'" -c "$pending_sql" \
    -c "SELECT count(*) FROM docs WHERE embedding IS NULL" \
    -c "UPDATE docs SET body = body || ' changed' WHERE body = 'first'" -c "$pending_sql" \
    -c "SELECT count(*) FROM docs WHERE embedding IS NULL" -c "ROLLBACK" | tr '\n' ' ')
[ "$in_tx" = "0 0 1 1 " ] ||
    fail "queued and vectors cleared after an UPDATE of another column / of one text: $in_tx, expected 0 0 1 1"
in_tx=$(q -c "BEGIN" -c "INSERT INTO docs (body) VALUES ('short-lived')" \
    -c "DELETE FROM docs WHERE body = 'short-lived'" -c "$pending_sql" -c "ROLLBACK")
[ "$in_tx" = 0 ] || fail "a DELETE left $in_tx items of its rows"
# Rows inserted, then changed or deleted before the worker turned the INSERT's keys into items.
q -c "BEGIN" -c "INSERT INTO docs (body) VALUES ('inserted one'), ('inserted two'), ('inserted three')" \
    -c "UPDATE docs SET body = 'inserted two, changed' WHERE body = 'inserted two'" \
    -c "DELETE FROM docs WHERE body = 'inserted three'" -c "COMMIT" \
    -c "SELECT qwen_embed.wait_for_embeddings('docs', '30 s')" >/dev/null
check_vectors "rows changed and deleted in the transaction that inserted them"
[ "$(queued)" = 0 ] || fail "$(queued) items left after rows changed and deleted in their inserting transaction"
echo "ok: rollback queues nothing; an UPDATE of another column queues nothing, of the text one item; DELETE unqueues"

echo "-- commit wake-up: the lag at a light steady rate is the model's time, not a poll interval"
# One row committed every 0.25 s for 10 s, each by its own session, as an application writes. Each row's lag is from
# its INSERT to its write-back (a trigger of ours on the table notes the time; ENABLE ALWAYS, so that it fires
# whatever the worker's session_replication_role). Without the wake-up at commit a running worker would find the rows
# at its 10 s backstop, and an idle one not at all.
q <<'SQL' >/dev/null
CREATE TABLE ticks (id int PRIMARY KEY, body text, embedding vector(64),
                    inserted_at timestamptz NOT NULL DEFAULT clock_timestamp(), embedded_at timestamptz);
SELECT qwen_embed.create_embedding_triggers('ticks', 'body', 'embedding', mode => 'async');
CREATE FUNCTION note_embedded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.embedding IS NULL AND NEW.embedding IS NOT NULL THEN NEW.embedded_at := clock_timestamp(); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER note_embedded BEFORE UPDATE ON ticks FOR EACH ROW EXECUTE FUNCTION note_embedded();
ALTER TABLE ticks ENABLE ALWAYS TRIGGER note_embedded;
SQL
for i in $(seq 40); do
    q -c "INSERT INTO ticks (id, body) VALUES ($i, 'tick $i of a steady writer')"
    sleep 0.25
done
q -c "SELECT qwen_embed.wait_for_embeddings('ticks', '1 min')" >/dev/null
lag=$(q -c "SELECT count(embedded_at), round(1000 * extract(epoch FROM percentile_disc(0.95) WITHIN GROUP (ORDER BY embedded_at - inserted_at)))::int,
                   round(1000 * extract(epoch FROM max(embedded_at - inserted_at)))::int FROM ticks")
IFS='|' read -r embedded p95_ms max_ms <<<"$lag"
[ "$embedded" = 40 ] || fail "$embedded of 40 ticks have their write-back time"
[ "$p95_ms" -lt 1000 ] || fail "the lag's p95 is $p95_ms ms (max $max_ms ms) at 4 rows/s, expected under a second"
q -c "DROP TABLE ticks" -c "DROP FUNCTION note_embedded()" >/dev/null
echo "ok: 40 rows committed at 4 rows/s, one session each: lag p95 $p95_ms ms, max $max_ms ms (backstop: 10 s)"

echo "-- a prepared transaction's rows: embedded after COMMIT PREPARED, which wakes no worker itself"
# PREPARE starts a worker, which stays while the database has a prepared transaction (past its 10 s idle exit) and
# finds the rows at its backstop look at the queue; no wait_for_embeddings here, which would wake one.
q -c "CREATE TABLE twophase (id int PRIMARY KEY, body text, embedding vector(64))" \
    -c "SELECT qwen_embed.create_embedding_triggers('twophase', 'body', 'embedding', mode => 'async')" >/dev/null
q -c "BEGIN" -c "INSERT INTO twophase VALUES (1, 'prepared one'), (2, 'prepared two')" -c "PREPARE TRANSACTION 'queued'"
sleep 12
q -c "COMMIT PREPARED 'queued'"
prepared_sql="SELECT count(*) FROM twophase WHERE 1 - cosine_sim(embedding, embed(body)) < 1e-5"
for _ in $(seq 200); do [ "$(q -c "$prepared_sql")" = 2 ] && break; sleep 0.1; done
[ "$(q -c "$prepared_sql")" = 2 ] || fail "the rows of a committed prepared transaction were not embedded in 20 s"
q -c "DROP TABLE twophase" >/dev/null
echo "ok: the rows of a transaction prepared for 12 s were embedded within 20 s of COMMIT PREPARED"

echo "-- 10,000 rows"
started=$(date +%s.%N)
q -c "INSERT INTO docs (body) SELECT 'row ' || g || ' about topic ' || (g % 97) FROM generate_series(1, 10000) g"
insert_s=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
q -c "SELECT qwen_embed.wait_for_embeddings('docs', '10 min')" >/dev/null
drain_s=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
check_vectors "10,000 rows"
# embedded: 2 + 2 rows above and these 10,000, each written once.
status=$(q -c "SELECT pending, in_progress, failed, embedded FROM qwen_embed.async_status WHERE relation = 'docs'::regclass")
[ "$status" = "0|0|0|10004" ] || fail "async_status after the drain: $status, expected 0|0|0|10004"
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
q -c "SELECT qwen_embed.wait_for_embeddings('small', '5 min')" -c "SELECT qwen_embed.wait_for_embeddings('big', '5 min')" >/dev/null
# The order of the write-backs, read from the rows' xmin (each write-back is a transaction of the one worker, and
# transaction ids are handed out in the order they first write): a claim takes every table's oldest rows in turn, so
# the small table's rows go in the first claim after they were queued, and at most two claims' worth of the backlog
# (async_batch_size = 128 each: one claimed before the small rows were queued, the rest of theirs) is written before
# the last of them, however fast or slow the machine. First come, first served would write all 5,000 first.
before=$(q -c "SELECT count(*) FROM big WHERE xmin::text::bigint < (SELECT max(xmin::text::bigint) FROM small)")
[ "$before" -le 256 ] || fail "the small table waited for the big one's backlog: $before of its rows were written first"
q -c "DROP TABLE big, small" >/dev/null
echo "ok: 10 rows queued behind a 5,000-row backlog of another table were written after $before of it (at most 256)"

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
started=$(cluster_incarnation)
$SUDO kill -9 "$worker"
for _ in $(seq 120); do q -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.5; done
# A background worker killed by a signal is a crashed postmaster child: the cluster goes through crash recovery.
[ "$(cluster_incarnation)" != "$started" ] || fail "the cluster did not restart after kill -9 of the worker"
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
echo "ok: killed model server $server mid-batch; the worker's request went to the next server and the queue drained"

echo "-- no model server for longer than server_wait: the batch goes back uncharged"
# One wrong charge would park an item (async_max_attempts = 1); the worker waits 300 ms for a server, then backs off.
# The supervisor is stopped (SIGSTOP) so that the killed server stays down (as tests/faults.sh does).
pg -q -c "ALTER SYSTEM SET qwen_embed.async_max_attempts = 1" -c "ALTER SYSTEM SET qwen_embed.server_wait = 300" \
    -c "SELECT pg_reload_conf()" >/dev/null
server=$(q -c "SELECT value FROM qwen_embed.server_info() WHERE key = 'pid'")
supervisor=$(ps -o ppid= -p "$server" | tr -d ' ')
[ -n "$supervisor" ] || fail "no supervisor"
resume() { $SUDO kill -CONT "$supervisor" 2>/dev/null || true; }
$SUDO kill -STOP "$supervisor"
$SUDO kill -9 "$server"
q -c "INSERT INTO docs (body) SELECT 'written while no server runs ' || g FROM generate_series(1, 20) g"
error=""
for _ in $(seq 200); do
    error=$(q -c "SELECT last_error FROM qwen_embed.async_status WHERE relation = 'docs'::regclass AND last_error_at > now() - interval '20 s'")
    [[ "$error" == *"model server"* ]] && break
    sleep 0.1
done
down=$(q -c "SELECT coalesce(max(attempts), 0) || '|' || count(*) FILTER (WHERE failed) FROM qwen_embed.async_queue")
resume
[[ "$error" == *"model server"* ]] || fail "async_status.last_error does not say the model server is down: '$error'"
[ "$down" = "0|0" ] || fail "items were charged for the server's absence (max attempts, parked): $down"
pg -q -c "ALTER SYSTEM RESET qwen_embed.async_max_attempts" -c "ALTER SYSTEM RESET qwen_embed.server_wait" \
    -c "SELECT pg_reload_conf()" >/dev/null
q -c "SELECT qwen_embed.wait_for_embeddings('docs', '2 min')" >/dev/null || fail "the queue did not drain once the server was back"
check_vectors "after the server was away"
echo "ok: with no model server past server_wait the batch went back uncharged (async_max_attempts = 1, nothing"
echo "    parked), last_error said so, and the queue drained once the server was back"

echo "-- a poison row fails alone"
q -c "INSERT INTO docs (body) SELECT 'good neighbour ' || g FROM generate_series(1, 20) g
      UNION ALL SELECT repeat('poison ', 5000)"
# The poison row fails: wait_for_embeddings says so at once, with its error, instead of waiting out its timeout.
out=$(q -c "SELECT qwen_embed.wait_for_embeddings('docs', '2 min')" 2>&1) &&
    fail "wait_for_embeddings succeeded while a row failed"
echo "$out" | grep -q "1 rows of public.docs failed to embed and wait for a retry: .*tokens long" ||
    fail "wait_for_embeddings did not fail with the poison row's error: $out"
# Waits for the row's retry (10 s after its failure) to fail too and park it (async_max_attempts = 2).
wait_parked() {
    for _ in $(seq 400); do
        [ "$(q -c "SELECT count(*) FROM qwen_embed.async_failed")" = 1 ] && return
        sleep 0.1
    done
    fail "the poison row was not parked"
}
wait_parked
[ "$(q -c "SELECT count(*) FROM docs WHERE body LIKE 'good neighbour%' AND embedding IS NOT NULL")" = 20 ] ||
    fail "the poison row's neighbours were not written"
parked=$(q -c "SELECT attempts || '|' || (last_error LIKE '%token%') FROM qwen_embed.async_failed")
[ "$parked" = "2|true" ] || fail "the poison row is not parked after 2 attempts with its error: $parked"
[ "$(q -c "SELECT failed FROM qwen_embed.async_status")" = 1 ] || fail "async_status does not count the failed item"
retried=$(q -c "BEGIN" -c "SELECT qwen_embed.retry_failed_embeddings('docs')" \
    -c "SELECT count(*) FROM qwen_embed.async_queue WHERE NOT failed AND attempts = 0" -c "COMMIT" | tr '\n' ' ')
[ "$retried" = "1 1 " ] || fail "retry_failed_embeddings: $retried (retried, then pending), expected 1 1"
wait_parked
out=$(q -c "SELECT qwen_embed.wait_for_embeddings('docs', '2 min')" 2>&1) &&
    echo "$out" | grep -q "WARNING:  qwen_embed: 1 rows of public.docs failed to embed and are parked" ||
    fail "wait_for_embeddings with only a parked row left did not return with its WARNING"
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
in_tx=$(q -c "BEGIN" -c "INSERT INTO docs (body) VALUES ('written in async mode again')" \
    -c "SELECT embedding IS NULL FROM docs WHERE body = 'written in async mode again'" -c "$pending_sql" -c "COMMIT" |
    tr '\n' ' ')
[ "$in_tx" = "t 1 " ] || fail "after the switch back to async, an INSERT did not queue its row (vector NULL, queued): $in_tx"
q -c "SELECT qwen_embed.wait_for_embeddings('docs')" >/dev/null
check_vectors "after switching modes"
# Rows queued in async mode, then the switch to sync in the same transaction: the worker still embeds them.
q -c "BEGIN" -c "INSERT INTO docs (body) SELECT 'queued, then switched ' || g FROM generate_series(1, 5) g" \
    -c "SELECT qwen_embed.set_embedding_mode('docs', 'embedding', 'sync')" -c "COMMIT" >/dev/null
q -c "SELECT qwen_embed.wait_for_embeddings('docs', '30 s')" >/dev/null
check_vectors "rows queued before a switch to sync"
# The worker wrote them: it alone records the fingerprint of the text it embedded.
[ "$(q -c "SELECT count(*) FROM qwen_embed.async_embedded e JOIN docs d ON e.key = d.id::text
             WHERE d.body LIKE 'queued, then switched%'")" = 5 ] || fail "the rows queued before the switch were not the worker's"
q -c "SELECT qwen_embed.set_embedding_mode('docs', 'embedding', 'async')" >/dev/null
echo "ok: async -> sync embeds in the statement, sync -> async queues again, rows queued before a switch to sync"
echo "    are embedded by the worker"

echo "-- errors with their SQLSTATEs; a vector the statement sets itself"
sqlstate() { q -v ON_ERROR_STOP=0 -c "$1" -c '\echo sqlstate=:LAST_ERROR_SQLSTATE' 2>/dev/null | sed -n 's/^sqlstate=//p'; }
q -c "CREATE TABLE plain (id int PRIMARY KEY, body text, embedding vector(64))" -c "CREATE TABLE unkeyed (body text, embedding vector(64))" \
    -c "CREATE ROLE stranger" -c "GRANT USAGE ON SCHEMA qwen_embed TO stranger" >/dev/null
for case in "22023|SELECT qwen_embed.create_embedding_triggers('plain', 'body', 'embedding', mode => 'later')" \
    "42P16|SELECT qwen_embed.create_embedding_triggers('unkeyed', 'body', 'embedding', mode => 'async')" \
    "42703|SELECT qwen_embed.create_embedding_triggers('plain', 'text', 'embedding', mode => 'async')" \
    "42804|SELECT qwen_embed.create_embedding_triggers('plain', 'body', 'body', mode => 'async')" \
    "42501|SET ROLE stranger; SELECT qwen_embed.create_embedding_triggers('plain', 'body', 'embedding', mode => 'async')" \
    "42704|SELECT qwen_embed.wait_for_embeddings('plain')" \
    "42704|SELECT qwen_embed.set_embedding_mode('plain', 'embedding', 'sync')" \
    "25001|BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT qwen_embed.wait_for_embeddings('docs')"; do
    got=$(sqlstate "${case#*|}")
    [ "$got" = "${case%%|*}" ] || fail "${case#*|}: SQLSTATE $got, expected ${case%%|*}"
done
q -c "DROP TABLE plain, unkeyed" -c "REVOKE USAGE ON SCHEMA qwen_embed FROM stranger" -c "DROP ROLE stranger" >/dev/null
given=$(q -c "SELECT embedding FROM docs WHERE embedding IS NOT NULL ORDER BY id LIMIT 1")
q -c "INSERT INTO docs (body, embedding) VALUES ('with its own vector', '$given')" \
    -c "SELECT qwen_embed.wait_for_embeddings('docs', '30 s')" >/dev/null
[ "$(q -c "SELECT qwen_embed.repair_embeddings('docs')")" = 0 ] || fail "repair queued a row whose vector was given"
q -c "SELECT qwen_embed.wait_for_embeddings('docs', '30 s')" >/dev/null
[ "$(q -c "SELECT embedding = '$given' FROM docs WHERE body = 'with its own vector'")" = t ] ||
    fail "the worker replaced a vector the INSERT gave"
q -c "DELETE FROM docs WHERE body = 'with its own vector'" >/dev/null
echo "ok: bad mode 22023, no primary key 42P16, no such column 42703, not a vector 42804, no TRIGGER privilege 42501,"
echo "    not an async table 42704 (wait, set_embedding_mode), REPEATABLE READ 25001; a given vector is kept, repair too"

# hold_rows TABLE SECONDS: another session locks every row of TABLE (FOR UPDATE) for SECONDS, in the background
# (its pid in $holder); returns once the lock is held.
hold_rows() {
    q -c "BEGIN" -c "SELECT id FROM $1 FOR UPDATE" -c "SELECT pg_sleep($2)" -c "COMMIT" >/dev/null 2>&1 &
    holder=$!
    for _ in $(seq 100); do
        [ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep($2)' AND state = 'active'")" = 1 ] &&
            return
        sleep 0.05
    done
    fail "the session holding $1's rows did not start"
}
# queue_held TABLE ROWS SECONDS: a new async table of ROWS rows written behind its triggers, every row held by another
# session for SECONDS (hold_rows), then queued by repair_embeddings. The worker claims them (reading the texts takes
# no row lock), embeds them, and meets the lock at its write-back, until the hold ends.
queue_held() {
    q -c "CREATE TABLE $1 (id int PRIMARY KEY, body text, embedding vector(64))" \
        -c "SELECT qwen_embed.create_embedding_triggers('$1', 'body', 'embedding', mode => 'async')" \
        -c "SET session_replication_role = replica" \
        -c "INSERT INTO $1 SELECT g, '$1 row ' || g FROM generate_series(1, $2) g" >/dev/null
    hold_rows "$1" "$3"
    [ "$(q -c "SELECT qwen_embed.repair_embeddings('$1')")" = "$2" ] || fail "repair did not queue the $2 rows of $1"
}
echo "-- a write-back that meets a row a writer holds gives its rows back"
queue_held held 40 4
# While the rows are held, waiting times out (57014) after its timeout, with the count and a hint.
t0=$(date +%s%N)
out=$(q -v ON_ERROR_STOP=0 -c "SELECT qwen_embed.wait_for_embeddings('held', '1 s')" -c '\echo sqlstate=:LAST_ERROR_SQLSTATE' 2>&1)
waited_ms=$((($(date +%s%N) - t0) / 1000000))
echo "$out" | grep -qx "sqlstate=57014" && echo "$out" | grep -q "40 rows of public.held still wait for their embeddings after 00:00:01" &&
    echo "$out" | grep -q "HINT:  See qwen_embed.async_status" || fail "wait_for_embeddings' timeout: $out"
[ "$waited_ms" -ge 1000 ] && [ "$waited_ms" -lt 2500 ] || fail "wait_for_embeddings('1 s') returned after $waited_ms ms"
sleep 1
written=$(q -c "SELECT count(*) FROM held WHERE embedding IS NOT NULL")
wait $holder
[ "$written" = 0 ] || fail "$written vectors were written through another session's row locks"
q -c "SELECT qwen_embed.wait_for_embeddings('held', '30 s')" >/dev/null ||
    fail "the rows whose write-back met a lock were not given back (wait_for_embeddings timed out)"
[ "$(q -c "SELECT count(*) FROM held WHERE 1 - cosine_sim(embedding, embed(body)) < 1e-5")" = 40 ] ||
    fail "the held rows' vectors differ from embed(body)"
[ "$(q -c "SELECT count(*) FROM qwen_embed.async_queue q JOIN qwen_embed.async_tables a ON a.id = q.table_id
             WHERE a.relation = 'held'::regclass")" = 0 ] || fail "items of the held rows are left"
q -c "DROP TABLE held" >/dev/null
echo "ok: 40 rows held FOR UPDATE by another session during the write-back went back uncharged and were written after"

echo "-- qwen_embed.async_batch_size bounds every claim"
pg -q -c "ALTER SYSTEM SET qwen_embed.async_batch_size = 7" -c "SELECT pg_reload_conf()" >/dev/null
# Held rows keep each claimed batch in progress through its 200 ms lock wait, where it can be counted.
queue_held sized 30 3
most=0
for _ in $(seq 40); do
    n=$(q -c "SELECT in_progress FROM qwen_embed.async_status WHERE relation = 'sized'::regclass")
    [ "$n" -gt "$most" ] && most=$n
    sleep 0.05
done
wait $holder
pg -q -c "ALTER SYSTEM RESET qwen_embed.async_batch_size" -c "SELECT pg_reload_conf()" >/dev/null
[ "$most" -ge 1 ] && [ "$most" -le 7 ] || fail "with async_batch_size = 7 up to $most rows were in progress at once"
q -c "SELECT qwen_embed.wait_for_embeddings('sized', '30 s')" -c "DROP TABLE sized" >/dev/null
echo "ok: with async_batch_size = 7, at most $most of 30 queued rows were claimed at once"

echo "-- the write-back applies a vector only where the row still has the text it was computed from"
# The version check itself, called as the worker calls it: a row whose text changed after the claim gets no vector.
# apply_from TEXT: the write-back of a vector computed from TEXT, for the item of the row now called 'version two'.
apply_from() {
    echo "SELECT written FROM qwen_embed._async_apply(
        (SELECT id FROM qwen_embed.async_tables WHERE relation = 'docs'::regclass),
        ARRAY[(SELECT id::text FROM docs WHERE body = 'version two')],
        ARRAY[qwen_embed.fingerprint('version two')], ARRAY[qwen_embed.fingerprint('$1')],
        ARRAY[(SELECT embedding::text FROM docs WHERE embedding IS NOT NULL ORDER BY id LIMIT 1)], '200ms', 1)"
}
q -c "INSERT INTO docs (body) VALUES ('version one')" -c "SELECT qwen_embed.wait_for_embeddings('docs', '30 s')" >/dev/null
versions=$(q -c "BEGIN" -c "UPDATE docs SET body = 'version two' WHERE body = 'version one'" \
    -c "$(apply_from 'version one')" -c "SELECT embedding IS NULL FROM docs WHERE body = 'version two'" \
    -c "$(apply_from 'version two')" -c "SELECT embedding IS NULL FROM docs WHERE body = 'version two'" \
    -c "ROLLBACK" | tr '\n' ' ')
[ "$versions" = "0 t 1 f " ] ||
    fail "write-back of a vector computed from an older text / from the current one: $versions, expected 0 t 1 f"
q -c "DELETE FROM docs WHERE body = 'version one'" >/dev/null
echo "ok: a vector computed from the text before an UPDATE is not written; one computed from the current text is"

echo "-- after a restart the launcher drains what was queued, with no call to wake a worker"
# The rows are held, so the worker cannot finish them before the cluster stops (it gives them back uncharged).
queue_held restarted 50 60
sleep 1
cluster_stop "$cluster"
wait $holder || true
cluster_start "$cluster"
left=""
for _ in $(seq 600); do # plain reads: nothing here wakes a worker
    left=$(q -c "SELECT count(*) FROM qwen_embed.async_queue q JOIN qwen_embed.async_tables a ON a.id = q.table_id
                  WHERE a.relation = 'restarted'::regclass")
    [ "$left" = 0 ] && break
    sleep 0.1
done
[ "$left" = 0 ] || fail "$left items queued before the restart were not drained by the launcher's worker"
[ "$(q -c "SELECT count(*) FROM restarted WHERE 1 - cosine_sim(embedding, embed(body)) < 1e-5")" = 50 ] ||
    fail "the rows drained after the restart differ from embed(body)"
q -c "DROP TABLE restarted" >/dev/null
echo "ok: 50 rows queued when the cluster stopped were embedded after its start by the worker the launcher started"

echo "-- renamed columns and tables: the registrations follow them, in both modes"
q <<'SQL' >/dev/null
CREATE TABLE ren (id int PRIMARY KEY, body text, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('ren', 'body', 'embedding', mode => 'async');
CREATE TABLE ren_sync (id int PRIMARY KEY, body text, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('ren_sync', 'body', 'embedding');
CREATE TABLE bystander (id int PRIMARY KEY, body text, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('bystander', 'body', 'embedding', mode => 'async');
ALTER TABLE ren RENAME COLUMN body TO content;
ALTER TABLE ren RENAME COLUMN embedding TO "Emb Vector";
ALTER TABLE ren_sync RENAME COLUMN body TO content;
ALTER TABLE ren_sync RENAME COLUMN embedding TO emb;
INSERT INTO ren VALUES (1, 'written after the renames'), (2, 'also after them');
INSERT INTO bystander SELECT g, 'bystander ' || g FROM generate_series(1, 100) g;
INSERT INTO ren_sync VALUES (1, 'sync, after the renames');
SQL
q -c "SELECT qwen_embed.wait_for_embeddings('ren', '30 s')" -c "SELECT qwen_embed.wait_for_embeddings('bystander', '30 s')" \
    >/dev/null || fail "async embedding stopped after its table's columns were renamed"
q -c "UPDATE ren SET content = 'changed after the renames' WHERE id = 1" \
    -c "UPDATE ren_sync SET content = 'sync, changed after the renames'" \
    -c "ALTER TABLE ren RENAME TO ren_renamed" -c "INSERT INTO ren_renamed VALUES (3, 'after the table''s rename too')" \
    -c "SELECT qwen_embed.wait_for_embeddings('ren_renamed', '30 s')" >/dev/null ||
    fail "an UPDATE after the renames failed or was not embedded"
bad=$(q -c "SELECT (SELECT count(*) FROM ren_renamed WHERE \"Emb Vector\" IS NULL OR 1 - cosine_sim(\"Emb Vector\", embed(content)) > 1e-5)
            + (SELECT count(*) FROM ren_sync WHERE emb IS NULL OR 1 - cosine_sim(emb, embed(content)) > 1e-5)
            + (SELECT count(*) FROM bystander WHERE embedding IS NULL)")
[ "$bad" = 0 ] || fail "$bad rows of the renamed tables (or the bystander) have no vector or a stale one"
status=$(q -c "SELECT relation || ' ' || text_column || ' ' || vector_column FROM qwen_embed.async_status
               WHERE relation = 'ren_renamed'::regclass")
[ "$status" = 'ren_renamed content Emb Vector' ] || fail "async_status names the old columns: $status"
[ "$(q -c "SELECT qwen_embed.set_embedding_mode('ren_renamed', 'Emb Vector', 'sync')")" = async ] ||
    fail "set_embedding_mode did not find the triggers of a renamed vector column"
q -c "INSERT INTO ren_renamed VALUES (4, 'sync after the switch')" >/dev/null
[ "$(q -c "SELECT 1 - cosine_sim(\"Emb Vector\", embed(content)) < 1e-5 FROM ren_renamed WHERE id = 4")" = t ] ||
    fail "sync mode after the switch on renamed columns"
q -c "DROP TABLE ren_renamed, ren_sync, bystander" >/dev/null
echo "ok: text and vector columns and the table renamed: async and sync INSERT and UPDATE embed, async_status shows"
echo "    the new names, set_embedding_mode finds the triggers"

echo "-- one table's failure stays that table's"
q <<'SQL' >/dev/null
CREATE TABLE healthy (id int PRIMARY KEY, body text, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('healthy', 'body', 'embedding', mode => 'async');
-- A constraint that refuses one row's vector, and a trigger of the user's that refuses another's.
CREATE TABLE picky (id int PRIMARY KEY, body text, embedding vector(64),
                    CHECK (embedding IS NULL OR body <> 'refused by a constraint'));
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.body = 'refused by a trigger' THEN RAISE EXCEPTION 'the table''s own trigger refuses this row'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse BEFORE UPDATE ON picky FOR EACH ROW EXECUTE FUNCTION refuse();
SELECT qwen_embed.create_embedding_triggers('picky', 'body', 'embedding', mode => 'async');
-- A table whose key column is dropped after rows were queued: none of its rows can be read by key.
CREATE TABLE keyless (id int PRIMARY KEY, body text, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('keyless', 'body', 'embedding', mode => 'async');
INSERT INTO keyless VALUES (1, 'embedded before');
SELECT qwen_embed.wait_for_embeddings('keyless', '30 s');
BEGIN;
INSERT INTO picky SELECT g, 'fine ' || g FROM generate_series(1, 30) g;
INSERT INTO picky VALUES (31, 'refused by a constraint'), (32, 'refused by a trigger');
INSERT INTO keyless VALUES (2, 'inserted'), (3, 'inserted too');
UPDATE keyless SET body = 'changed' WHERE id = 1;
ALTER TABLE keyless DROP COLUMN id;
INSERT INTO healthy SELECT g, 'healthy ' || g FROM generate_series(1, 100) g;
COMMIT;
SQL
q -c "SELECT qwen_embed.wait_for_embeddings('healthy', '30 s')" >/dev/null ||
    fail "a healthy table did not drain beside tables that fail"
started=$(date +%s)
for t in picky keyless; do
    out=$(q -c "SELECT qwen_embed.wait_for_embeddings('$t', '60 s')" 2>&1) && fail "wait_for_embeddings('$t') succeeded"
    echo "$out" | grep -q "failed to embed and wait for a retry" || fail "wait_for_embeddings('$t') did not fail fast: $out"
done
[ $(($(date +%s) - started)) -lt 30 ] || fail "wait_for_embeddings on the failing tables waited out its timeout"
status=$(q -c "SELECT relation || ': ' || retrying || ' retrying, ' || pending || ' pending, ' || coalesce(last_error, '-')
               FROM qwen_embed.async_status WHERE relation IN ('picky'::regclass, 'keyless'::regclass) ORDER BY 1")
echo "$status" | grep -q "^picky: 2 retrying, 2 pending, " || fail "async_status of picky: $status"
echo "$status" | grep -q "^keyless: 3 retrying, 3 pending, .*dropped" || fail "async_status of keyless: $status"
[ "$(q -c "SELECT count(*) FROM picky WHERE embedding IS NOT NULL")" = 30 ] ||
    fail "the 30 rows of picky that the table accepts were not written beside the 2 it refuses"
errors=$(q -c "SELECT string_agg(q.last_error, ' / ' ORDER BY q.key) FROM qwen_embed.async_queue q
               JOIN qwen_embed.async_tables a ON a.id = q.table_id WHERE a.relation = 'picky'::regclass")
echo "$errors" | grep -q 'check constraint' && echo "$errors" | grep -q "own trigger refuses" ||
    fail "the refused rows do not carry their own errors: $errors"
out=$(q -c "INSERT INTO keyless VALUES ('after the drop')" 2>&1) && fail "an INSERT into keyless queued rows that cannot be written back"
echo "$out" | grep -q "was dropped" || fail "the INSERT into keyless failed for another reason: $out"
# Fixed: the refusing trigger dropped, the constraint's row changed; retry makes everything due at once.
q -c "DROP TRIGGER refuse ON picky" -c "UPDATE picky SET body = 'no longer refused' WHERE id = 31" >/dev/null
[ "$(q -c "SELECT qwen_embed.retry_failed_embeddings('picky')")" -ge 1 ] || fail "retry_failed_embeddings('picky')"
q -c "SELECT qwen_embed.wait_for_embeddings('picky', '30 s')" >/dev/null || fail "picky did not drain once fixed"
[ "$(q -c "SELECT count(*) FROM picky WHERE 1 - cosine_sim(embedding, embed(body)) < 1e-5")" = 32 ] ||
    fail "picky's vectors after the fix"
q -c "DROP TABLE healthy, picky, keyless" -c "DROP FUNCTION refuse()" >/dev/null
echo "ok: a constraint, a trigger of the user's and a dropped key column failed their own rows alone (30 rows of the"
echo "    same table and 100 of another written meanwhile); wait_for_embeddings failed in $(($(date +%s) - started)) s with"
echo "    the reason; async_status showed it; retry after the fix drained the table"

echo "-- composite primary keys: a partitioned table (async) and a (tenant_id, id) table (sync)"
q <<'SQL' >/dev/null
CREATE TABLE pdocs (id int, region text, body text, embedding vector(64), PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE pdocs_eu PARTITION OF pdocs FOR VALUES IN ('eu');
CREATE TABLE pdocs_us PARTITION OF pdocs FOR VALUES IN ('us, "west"');
SELECT qwen_embed.create_embedding_triggers('pdocs', 'body', 'embedding', mode => 'async');
INSERT INTO pdocs SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us, "west"' END, 'partitioned ' || g
  FROM generate_series(1, 200) g;
SELECT qwen_embed.wait_for_embeddings('pdocs', '60 s');
UPDATE pdocs SET body = 'partitioned, changed ' || id WHERE id <= 20;
DELETE FROM pdocs WHERE id BETWEEN 21 AND 30;
SELECT qwen_embed.wait_for_embeddings('pdocs', '60 s');
CREATE TABLE tenants (tenant_id int, id int, body text, embedding vector(64), PRIMARY KEY (tenant_id, id));
SELECT qwen_embed.create_embedding_triggers('tenants', 'body', 'embedding');
INSERT INTO tenants SELECT t, g, 'tenant ' || t || ' row ' || g FROM generate_series(1, 3) t, generate_series(1, 5) g;
UPDATE tenants SET body = body || ', changed' WHERE id = 1;
SQL
bad=$(q -c "SELECT (SELECT count(*) FROM pdocs WHERE embedding IS NULL OR 1 - cosine_sim(embedding, embed(body)) > 1e-5)
            + (SELECT count(*) FROM tenants WHERE embedding IS NULL OR 1 - cosine_sim(embedding, embed(body)) > 1e-5)")
[ "$bad" = 0 ] || fail "$bad rows with a composite key have no vector or a stale one"
[ "$(q -c "SELECT count(*) FROM pdocs")" = 190 ] || fail "pdocs lost or kept rows"
q -c "SET session_replication_role = replica" -c "UPDATE pdocs SET body = 'behind the triggers' WHERE id = 40" >/dev/null
[ "$(q -c "SELECT qwen_embed.repair_embeddings('pdocs')")" = 1 ] || fail "repair_embeddings on the partitioned table"
q -c "SELECT qwen_embed.wait_for_embeddings('pdocs', '30 s')" >/dev/null
[ "$(q -c "SELECT 1 - cosine_sim(embedding, embed(body)) < 1e-5 FROM pdocs WHERE id = 40")" = t ] || fail "repair on pdocs"
status=$(q -c "SELECT pending || '|' || in_progress || '|' || failed || '|' || embedded FROM qwen_embed.async_status
               WHERE relation = 'pdocs'::regclass")
[ "$status" = "0|0|0|221" ] || fail "async_status of pdocs: $status (expected 200 + 20 + 1 embedded)"
[ "$(q -c "SET session_replication_role = replica" -c "UPDATE tenants SET embedding = NULL WHERE tenant_id = 2" \
    -c "CALL qwen_embed.backfill('tenants', 'body', 'embedding')" -c "SELECT count(*) FROM tenants WHERE embedding IS NULL" 2>/dev/null)" = 0 ] ||
    fail "backfill left rows of a table with a composite key without a vector"
[ "$(q -c "SELECT count(*) FROM tenants WHERE 1 - cosine_sim(embedding, embed(body)) < 1e-5")" = 15 ] ||
    fail "backfill of a table with a composite key"
q -c "DROP TABLE pdocs, tenants" >/dev/null
echo "ok: (id, region) partitioned async: insert, update, delete, repair, status; (tenant_id, id) sync: insert,"
echo "    update, backfill; every vector equals embed(body)"

echo "-- pg_dump and pg_restore: a restore numbers the columns anew, the registrations follow"
q <<'SQL' >/dev/null
CREATE TABLE dumped (gone int, id int PRIMARY KEY, body text, embedding vector(64));
ALTER TABLE dumped DROP COLUMN gone;  -- a restore leaves no gap for it: body and embedding get other numbers
SELECT qwen_embed.create_embedding_triggers('dumped', 'body', 'embedding', mode => 'async');
ALTER TABLE dumped RENAME COLUMN body TO content;
INSERT INTO dumped VALUES (1, 'embedded before the dump');
SELECT qwen_embed.wait_for_embeddings('dumped', '30 s');
SQL
dump=$(scratch_dir)/async.dump
as_postgres "$PG_BIN/pg_dump" -Fc $db >"$dump"
pg -q -c "CREATE DATABASE qwen_embed_restored"
as_postgres "$PG_BIN/pg_restore" -d qwen_embed_restored <"$dump" || fail "pg_restore of a database with async tables"
r() { pg -q -At -d qwen_embed_restored "$@"; }
r -c "INSERT INTO dumped VALUES (2, 'written after the restore')" -c "UPDATE dumped SET content = 'changed after the restore' WHERE id = 1" \
    -c "SELECT qwen_embed.wait_for_embeddings('dumped', '30 s')" >/dev/null || fail "async embedding after a restore"
[ "$(r -c "SELECT count(*) FROM dumped WHERE 1 - cosine_sim(embedding, embed(content)) < 1e-5")" = 2 ] ||
    fail "vectors after the restore differ from embed(content)"
r -c "SELECT qwen_embed.create_embedding_triggers('dumped', 'content', 'embedding', mode => 'async')" >/dev/null 2>&1 &&
    fail "a second registration of the restored column was accepted"
r -c "CREATE TABLE fresh (id int PRIMARY KEY, body text, embedding vector(64))" \
    -c "SELECT qwen_embed.create_embedding_triggers('fresh', 'body', 'embedding', mode => 'async')" >/dev/null ||
    fail "a new registration after the restore (its id taken by a restored one?)"
pg -q -c "DROP DATABASE qwen_embed_restored WITH (FORCE)"
q -c "DROP TABLE dumped" >/dev/null
echo "ok: a database dumped with pg_dump and restored with pg_restore (columns renumbered): its async table embeds"
echo "    inserts and updates, and new registrations get new ids"

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
# And what those definitions leave out: constraints, defaults, privileges, row-level security, comments, triggers on
# the extension's tables, event triggers and the tables pg_dump saves (pg_extension_config_dump).
details="WITH member AS (
    SELECT d.classid, d.objid FROM pg_depend d
     WHERE d.deptype = 'e' AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'qwen_embed')
), rel AS (SELECT objid AS oid FROM member WHERE classid = 'pg_class'::regclass)
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE conrelid IN (SELECT oid FROM rel)
UNION ALL SELECT 'default ' || adrelid::regclass || '.' || attname || ' ' || pg_get_expr(adbin, adrelid)
  FROM pg_attrdef JOIN pg_attribute ON attrelid = adrelid AND attnum = adnum WHERE adrelid IN (SELECT oid FROM rel)
UNION ALL SELECT 'relation ' || oid::regclass || ' acl ' || coalesce(relacl::text, '-') || ' rls ' || relrowsecurity
                 || ' ' || relforcerowsecurity || ' options ' || coalesce(reloptions::text, '-')
  FROM pg_class WHERE oid IN (SELECT oid FROM rel)
UNION ALL SELECT 'column ' || attrelid::regclass || '.' || attname || ' acl ' || attacl::text || ' storage ' || attstorage::text
  FROM pg_attribute WHERE attrelid IN (SELECT oid FROM rel) AND attnum > 0 AND NOT attisdropped
UNION ALL SELECT 'function ' || oid::regprocedure || ' acl ' || coalesce(proacl::text, '-') || ' owner ' || proowner::regrole
  FROM pg_proc WHERE oid IN (SELECT objid FROM member WHERE classid = 'pg_proc'::regclass)
UNION ALL SELECT 'policy ' || polrelid::regclass || ' ' || polname || ' ' || polcmd::text || ' ' || polroles::regrole[]::text
                 || ' ' || coalesce(pg_get_expr(polqual, polrelid), '-') || ' ' || coalesce(pg_get_expr(polwithcheck, polrelid), '-')
  FROM pg_policy WHERE polrelid IN (SELECT oid FROM rel)
UNION ALL SELECT 'comment ' || pg_describe_object(classoid, objoid, objsubid) || ' ' || md5(description)
  FROM pg_description WHERE (classoid, objoid) IN (SELECT classid, objid FROM member)
UNION ALL SELECT 'trigger ' || pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid IN (SELECT oid FROM rel)
UNION ALL SELECT 'event trigger ' || evtname || ' ' || evtevent || ' ' || evtfoid::regproc || ' ' || coalesce(evttags::text, '-')
  FROM pg_event_trigger
UNION ALL SELECT 'dumped ' || c::regclass || ' ' || coalesce(w, '-')
  FROM pg_extension, unnest(extconfig, extcondition) u(c, w) WHERE extname = 'qwen_embed'
ORDER BY 1"
diff <(u -c "$details") <(pg -q -At -d qwen_embed_fresh -c "$details") >&2 ||
    fail "the upgraded extension's constraints, defaults, privileges, policies, comments or dump registrations differ from a fresh install's (above: < upgraded, > fresh)"
[ "$(u -c "$details" | grep -c "^dumped ")" -ge 2 ] && [ "$(u -c "$details" | grep -c "^constraint ")" -ge 5 ] ||
    fail "the detailed comparison saw no dump registrations or constraints: $(u -c "$details" | cut -c1-60 | head)"
echo "ok: a 0.1.0 database with sync triggers updated to this version: its triggers work, async mode works, and its"
echo "    objects equal a fresh install's ($(u -c "SELECT count(*) FROM pg_depend WHERE deptype = 'e' AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'qwen_embed')") objects)"
