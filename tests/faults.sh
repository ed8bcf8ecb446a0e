#!/usr/bin/env bash
# Faults that need the server itself: a backend killed with SIGKILL in the middle of an embedding (the cluster
# recovers, every committed row is intact, nothing of the killed transaction is left), and a model too big for the
# memory the server may use (an ERROR, not an abort; the same session then works with a model that fits).
# Both hit only a throw-away cluster made here (scripts/cluster.sh); needs the extension installed (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
test_cluster faults
cluster=$PGHOST db=qwen_embed_faults
pg -q -c "CREATE DATABASE $db"
q() { pg -q -At -d $db "$@"; }
fail() { echo "FAILED: $*" >&2; cluster_log "$cluster" >&2; exit 1; }

echo "-- kill -9 of a backend mid-embed"
q <<'SQL'
CREATE EXTENSION qwen_embed CASCADE;
CREATE TABLE docs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('docs', 'body', 'embedding');
INSERT INTO docs (body) SELECT 'committed before the crash ' || g FROM generate_series(1, 200) g;
SQL
# The victim inserts rows whose embedding takes several seconds, in a transaction it never gets to commit.
(pg -q -d $db -c "SET application_name = 'qwen_embed_victim'" \
    -c "INSERT INTO docs (body) SELECT repeat('long uncommitted text ' || g || ' ', 300) FROM generate_series(1, 3000) g" \
    >/dev/null 2>&1 || true) &
victim=""
for _ in $(seq 100); do
    victim=$(q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'qwen_embed_victim' AND state = 'active'")
    [ -n "$victim" ] && break
    sleep 0.1
done
[ -n "$victim" ] || fail "the victim never started"
sleep 1 # well inside the forward passes
[ "$(q -c "SELECT state FROM pg_stat_activity WHERE pid = $victim")" = active ] || fail "the victim finished too early"
before_crash=$(cluster_incarnation)
$SUDO kill -9 "$victim"
wait
for _ in $(seq 120); do q -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.5; done
q -c "SELECT 1" >/dev/null || fail "the server did not come back"
# A backend killed by a signal makes PostgreSQL restart every server process (what cluster_incarnation tells).
[ "$(cluster_incarnation)" != "$before_crash" ] || fail "kill -9 of a backend did not restart the server processes"
rows=$(q -c "SELECT count(*) FROM docs")
[ "$rows" = 200 ] || fail "$rows rows after the crash, expected the 200 committed"
worst=$(q -c "SELECT max(1 - cosine_sim(embedding, embed(body))) < 1e-5 FROM docs")
[ "$worst" = t ] || fail "a committed vector differs from embed(body) after recovery"
echo "ok: killed backend $victim mid-embed; server recovered; 200 committed rows intact, vectors equal embed(body)"

echo "-- kill -9 of the model server in the middle of a batch"
# The server runs in a child of its supervisor, not of the postmaster: its death must not restart the cluster. The
# sessions waiting on it send their requests again, once, to the new server: they get their vectors, not an ERROR.
started=$(cluster_incarnation)
server_pid() { q -c "SELECT value FROM qwen_embed.server_info() WHERE key = 'pid'"; }
queued() { [ "$(q -c "SELECT value::int > 0 FROM qwen_embed.server_info() WHERE key = 'queued_texts'")" = t ]; }
q -c "SELECT vector_dims(embed('the server is up'))" >/dev/null
server=$(server_pid)
[ -n "$server" ] || fail "no model server"
# What docs/model-server.md promises of it: the kernel's OOM killer picks it before a backend (its death is harmless,
# a backend's restarts the cluster), and only the PostgreSQL OS user reaches its socket (in the 0700 data directory).
[ "$(cat /proc/$server/oom_score_adj)" = 500 ] || fail "the model server's oom_score_adj is not 500"
datadir=$(q -c "SHOW data_directory")
[ "$($SUDO stat -c %a "$datadir")" = 700 ] || fail "the data directory is not mode 0700"
[ "$($SUDO stat -c %F:%U "$datadir/qwen_embed.sock")" = "socket:$($SUDO stat -c %U "$datadir")" ] ||
    fail "no socket of the cluster's owner at $datadir/qwen_embed.sock"
echo "ok: the model server (pid $server) has oom_score_adj 500; its socket is in the 0700 data directory"
waiters=""
for w in 1 2 3; do
    (q -v ON_ERROR_STOP=0 -c "SET application_name = 'qwen_embed_waiter'" \
        -c "SELECT count(*) FILTER (WHERE vector_dims(v) = 64) FROM unnest(embed(ARRAY(SELECT repeat('long text $w ' || g || ' ', 300) FROM generate_series(1, 1000) g))) v" \
        -c '\echo sqlstate=:LAST_ERROR_SQLSTATE' >"$(scratch_dir)/waiter$w.out" 2>&1 || true) &
    waiters="$waiters $!"
done
for _ in $(seq 100); do queued && break; sleep 0.1; done
sleep 0.5
[ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'qwen_embed_waiter' AND state = 'active'")" = 3 ] ||
    fail "the three sessions were not all waiting when the server was killed"
$SUDO kill -9 "$server"
[ "$(q -c "SELECT 40 + 2")" = 42 ] || fail "a plain query failed while the model server was down"
wait $waiters
for w in 1 2 3; do
    out=$(scratch_dir)/waiter$w.out
    grep -qx "1000" "$out" || fail "waiting session $w did not get its 1000 vectors: $(cat "$out")"
    grep -qx "sqlstate=00000" "$out" || fail "waiting session $w got an ERROR: $(cat "$out")"
done
[ "$(cluster_incarnation)" = "$started" ] || fail "the cluster restarted"
[ "$(server_pid)" != "$server" ] || fail "the server pid did not change"
[ "$(q -c "SELECT value FROM qwen_embed.server_info() WHERE key = 'restarts'")" -ge 1 ] || fail "restart not counted"
echo "ok: killed the model server (pid $server) mid-batch; three waiting sessions sent their requests again and got all"
echo "    their vectors, a plain query ran meanwhile, the cluster did not restart, a new server (pid $(server_pid)) answers"
last_exit=$(q -c "SELECT value FROM qwen_embed.server_info() WHERE key = 'last_exit'")
echo "$last_exit" | grep -q "signal 9" || fail "server_info's last_exit does not say how the server died: $last_exit"
echo "    server_info last_exit: $last_exit"

echo "-- a request whose server dies twice: ERROR 58000, sent again once only"
# One request (400 texts: one piece, TEXTS_PER_REQUEST is 512) is queued, the server killed, the request sent again
# to the new server and queued there, and that server killed too: a request that stops every server it meets would
# otherwise stop them for ever.
twice=$(scratch_dir)/twice.out
(q -v ON_ERROR_STOP=0 -c "SELECT count(*) FROM unnest(embed(ARRAY(SELECT repeat('stopped twice ' || g || ' ', 300) FROM generate_series(1, 400) g)))" \
    -c '\echo sqlstate=:LAST_ERROR_SQLSTATE' >"$twice" 2>&1 || true) &
twice_pid=$!
for kill in first second; do
    server=$(server_pid)
    for _ in $(seq 200); do queued && break; sleep 0.05; done
    queued || fail "the request was not queued on server $server before the $kill kill"
    $SUDO kill -9 "$server"
    for _ in $(seq 200); do [ "$(server_pid)" != "$server" ] && [ -n "$(server_pid)" ] && break; sleep 0.05; done
done
wait $twice_pid
grep -qx "sqlstate=58000" "$twice" || fail "a request whose server died twice did not get ERROR 58000: $(cat "$twice")"
grep -q "the model server stopped twice while computing this request" "$twice" || fail "wrong message: $(cat "$twice")"
[ "$(q -c "SELECT vector_dims(embed('the third server answers'))")" = 64 ] || fail "no server after the second kill"
echo "ok: killed the server under one request twice: ERROR 58000 \"the model server stopped twice\"; the next call works"

echo "-- calls while no model server runs: they wait up to qwen_embed.server_wait, then ERROR 57P03"
# The supervisor is stopped (SIGSTOP) so that the killed server stays down for as long as the test needs.
server=$(server_pid)
supervisor=$(ps -o ppid= -p "$server" | tr -d ' ') # the server is the supervisor's child
[ -n "$supervisor" ] || fail "no supervisor"
# Two processes, two titles: a DBA may kill the server (harmless), not the supervisor (a postmaster child).
ps -o args= -p "$server" | grep -q "^postgres: qwen_embed model server" ||
    fail "the server's title: $(ps -o args= -p "$server")"
ps -o args= -p "$supervisor" | grep -q "^postgres: qwen_embed supervisor" ||
    fail "the supervisor's title: $(ps -o args= -p "$supervisor")"
$SUDO kill -STOP "$supervisor"
$SUDO kill -9 "$server"
patient=$(scratch_dir)/patient.out
(q -v ON_ERROR_STOP=0 -c "SELECT vector_dims(embed('sent while no server runs'))" \
    -c '\echo sqlstate=:LAST_ERROR_SQLSTATE' >"$patient" 2>&1 || true) &
patient_pid=$!
t0=$(date +%s%N)
out=$(q -v ON_ERROR_STOP=0 -c "SET qwen_embed.server_wait = 300" -c "SELECT embed('no patience')" \
    -c '\echo sqlstate=:LAST_ERROR_SQLSTATE' 2>&1 || true)
waited_ms=$((($(date +%s%N) - t0) / 1000000))
echo "$out" | grep -qx "sqlstate=57P03" || { $SUDO kill -CONT "$supervisor"; fail "server_wait ran out without 57P03: $out"; }
echo "$out" | grep -q "the model server is not running" || { $SUDO kill -CONT "$supervisor"; fail "wrong message: $out"; }
[ "$waited_ms" -ge 300 ] || { $SUDO kill -CONT "$supervisor"; fail "gave up after $waited_ms ms, before server_wait"; }
sleep 1
kill -0 $patient_pid 2>/dev/null || { $SUDO kill -CONT "$supervisor"; fail "the patient session did not wait: $(cat "$patient")"; }
$SUDO kill -CONT "$supervisor"
wait $patient_pid
grep -qx "64" "$patient" || fail "the session that called while no server ran got no vector: $(cat "$patient")"
echo "ok: with the server down, server_wait = 300 ms gave ERROR 57P03 after $waited_ms ms; a session with the default"
echo "    wait got its vector once the server was back"

echo "-- cancel and terminate while waiting on the model server"
# A session waits on the server (its 500 long texts queued with another session's bulk request); another session
# cancels it, then terminates a second one, and measures how long until the backend stops waiting.
waiting_session() {
    (q -v ON_ERROR_STOP=0 -c "SET application_name = '$1'" \
        -c "SELECT count(*) FROM unnest(embed(ARRAY(SELECT 'waiting ' || g || repeat(' word', 600) FROM generate_series(1, 500) g)))" \
        >"$(scratch_dir)/$1.out" 2>&1 || true) &
}
(q -c "SELECT count(*) FROM unnest(embed(ARRAY(SELECT repeat('bulk text ' || g || ' ', 200) FROM generate_series(1, 2000) g)))" \
    >/dev/null 2>&1 || true) &
bulk=$!
sleep 1
stop_latency() { # stop_latency FUNCTION APPLICATION_NAME: ms from the call until the backend stops waiting
    q <<SQL
DO \$\$
DECLARE p int; t0 timestamptz;
BEGIN
    FOR i IN 1..200 LOOP
        PERFORM pg_stat_clear_snapshot();
        SELECT pid INTO p FROM pg_stat_activity WHERE application_name = '$2' AND state = 'active';
        EXIT WHEN p IS NOT NULL;
        PERFORM pg_sleep(0.01);
    END LOOP;
    IF p IS NULL THEN RAISE EXCEPTION 'the waiting session never started'; END IF;
    PERFORM pg_sleep(0.3); -- well inside its wait
    t0 := clock_timestamp();
    PERFORM $1(p);
    LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = p AND state = 'active');
        EXIT WHEN clock_timestamp() - t0 > interval '5 seconds';
        PERFORM pg_sleep(0.002);
    END LOOP;
    RAISE NOTICE 'ms=%', round(extract(epoch FROM clock_timestamp() - t0) * 1000);
END \$\$;
SQL
}
waiting_session qwen_embed_cancel_me
canceled=$(stop_latency pg_cancel_backend qwen_embed_cancel_me 2>&1 | sed -n 's/.*ms=//p')
waiting_session qwen_embed_terminate_me
terminated=$(stop_latency pg_terminate_backend qwen_embed_terminate_me 2>&1 | sed -n 's/.*ms=//p')
kill $bulk 2>/dev/null || true
q -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query ~ 'bulk text' AND pid <> pg_backend_pid()" >/dev/null
wait
# Each was stopped while it waited, not after it had finished.
grep -q "canceling statement due to user request" "$(scratch_dir)/qwen_embed_cancel_me.out" ||
    fail "the session was not canceled: $(cat "$(scratch_dir)/qwen_embed_cancel_me.out")"
grep -q "terminating connection due to administrator command" "$(scratch_dir)/qwen_embed_terminate_me.out" ||
    fail "the session was not terminated: $(cat "$(scratch_dir)/qwen_embed_terminate_me.out")"
# Why 100 ms is a bound and not a hope on a loaded 2-core machine: the waiting backend wakes at least every 10 ms
# (its poll of the socket times out, or the signal ends the poll at once) and checks for interrupts; the bulk request
# keeps both cores busy with the model server's two pool threads, but the kernel's fair scheduler runs a woken task
# after a few slices (milliseconds) of its runnable peers, not after they finish, and so it does the watching
# session's 2 ms samples. One poll interval plus two wake-ups is tens of milliseconds at worst; measured 7-8 ms.
[ -n "$canceled" ] && [ "$canceled" -le 100 ] || fail "pg_cancel_backend ended the wait after ${canceled:-?} ms"
[ -n "$terminated" ] && [ "$terminated" -le 100 ] || fail "pg_terminate_backend ended the wait after ${terminated:-?} ms"
echo "ok: a session waiting on the model server stopped ${canceled} ms after pg_cancel_backend and ${terminated} ms"
echo "    after pg_terminate_backend (limit 100 ms)"

echo "-- a full queue"
q -c "ALTER SYSTEM SET qwen_embed.server_queue_limit = 600" -c "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 100); do
    [ "$(q -c "SELECT value FROM qwen_embed.server_info() WHERE key = 'queue_limit'" 2>/dev/null)" = 600 ] && break
    sleep 0.1
done
q -c "SELECT vector_dims(embed('warm'))" >/dev/null
# Another session's document of ~1,000,000 tokens in chunks of 2,048: one request of 488 chunks, under the limit, that
# waits in the queue for many seconds (tens at the tiny model's speed here) once it is tokenised. A call larger than
# the limit itself (~1,500 chunks estimated for 200 kB in chunks of 32) is then refused however many of the
# document's chunks are computed, as long as one still waits, and a single query fits beside them. (A call of more
# than 512 texts would not do as the waiting work: it is sent in pieces of 512, and the queue is empty between them.)
(q -c "SELECT vector_dims(embed_document(repeat('bulk text ', 500000), 2048, 0))" >/dev/null 2>&1 || true) &
bulk=$!
for _ in $(seq 600); do
    [ "$(q -c "SELECT value::int >= 400 FROM qwen_embed.server_info() WHERE key = 'queued_texts'")" = t ] && break
    sleep 0.05
done
full=$(q -v ON_ERROR_STOP=0 2>&1 <<'SQL'
SELECT count(*) FROM embed_chunks(repeat('another text ', 15000), 32, 0);
\echo sqlstate=:LAST_ERROR_SQLSTATE
SELECT vector_dims(embed('a single query still gets in'));
SELECT value::int > 0 AS still_queued FROM qwen_embed.server_info() WHERE key = 'queued_texts';
SQL
)
q -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query ~ 'embed_document' AND pid <> pg_backend_pid()" \
    >/dev/null
wait
echo "$full" | grep -qx "sqlstate=53400" || fail "no ERROR 53400 when the queue was full: $full"
echo "$full" | grep -q "HINT:  .*qwen_embed.server_queue_limit" || fail "the hint does not name the setting: $full"
echo "$full" | grep -qx "64" || fail "a single query was refused: $full"
echo "$full" | grep -qx "t" || fail "the document left the queue before the checks ended (they prove nothing): $full"
echo "ok: $(echo "$full" | grep -m1 'ERROR')"
echo "    while another session's document waited in chunks; a single query went through"
q -c "ALTER SYSTEM RESET qwen_embed.server_queue_limit" -c "SELECT pg_reload_conf()" >/dev/null

# The 0.6B model's shape with all-zero weights in a sparse file (no disk, loads in seconds): for the frame limit's
# reply side (its 1,024 dimensions) and for the memory limit (its 2.2 GB in f32).
tmp=$(mktemp -d)
python3 tools/make_sparse_model.py "$tmp/sparse-0.6b" >/dev/null
sparse=$(install_model "$tmp/sparse-0.6b" sparse-0.6b) # cp keeps the file sparse
rm -rf "$tmp"

echo "-- the frame limit: a request or a reply over 1 GiB is ERROR 54000, and the server goes on"
# A message between a backend and the model server is at most 1 GiB. A text of PostgreSQL's largest size is a request
# over it, refused before it is sent. A document whose chunks' vectors would make a reply over it (4.2 million tokens
# in chunks of 16: 280,000 vectors of 1,024 dimensions, 4 kB each) is refused once its chunks are planned, before their
# passes: the tiny model's 64 dimensions would need 57 million tokens. The queue must take the document's chunks.
q -c "ALTER SYSTEM SET qwen_embed.model_path = '$sparse'" -c "ALTER SYSTEM SET qwen_embed.server_queue_limit = 1000000" \
    -c "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 600); do
    [ "$(q -c "SELECT value FROM qwen_embed.server_info() WHERE key = 'model_path'" 2>/dev/null)" = "$sparse" ] &&
        [ "$(q -c "SELECT value FROM qwen_embed.server_info() WHERE key = 'state'" 2>/dev/null)" = ready ] && break
    sleep 0.1
done
frame=$(q -v ON_ERROR_STOP=0 2>&1 <<'SQL'
SELECT vector_dims(embed(repeat('x', 1073741819)));
\echo sqlstate=:LAST_ERROR_SQLSTATE
SELECT count(*) FROM embed_chunks(repeat('a ', 4200000), 16, 0);
\echo sqlstate=:LAST_ERROR_SQLSTATE
SELECT vector_dims(embed('the next call works'));
SELECT value FROM qwen_embed.server_info() WHERE key = 'model_path';
SQL
)
q -c "ALTER SYSTEM RESET qwen_embed.model_path" -c "ALTER SYSTEM RESET qwen_embed.server_queue_limit" \
    -c "SELECT pg_reload_conf()" >/dev/null
[ "$(echo "$frame" | grep -c "sqlstate=54000")" = 2 ] || fail "not two ERRORs 54000 at the frame limit: $frame"
echo "$frame" | grep -q "the request is too large for the model server" || fail "no request-side ERROR: $frame"
echo "$frame" | grep -q "HINT:  Send fewer or shorter texts in one call" || fail "no request-side hint: $frame"
echo "$frame" | grep -Eq "the vectors of 2[0-9]{5} chunks of 1024 dimensions, [0-9]+ bytes: too large a reply" ||
    fail "no reply-side ERROR: $frame"
echo "$frame" | grep -q "qwen_embed: qwen_embed:" && fail "a message says qwen_embed twice: $frame"
echo "$frame" | grep -q "HINT:  Use longer chunks (chunk_tokens)" || fail "no reply-side hint: $frame"
echo "$frame" | grep -qx "1024" || fail "the next call failed: $frame"
echo "$frame" | grep -qx "$sparse" || fail "the model server was not the one that refused the reply: $frame"
echo "ok: $(echo "$frame" | grep -m1 'ERROR')"
echo "ok: $(echo "$frame" | grep 'ERROR' | sed -n 2p)"

echo "-- a model too big for the memory limit"
# 2 GB of address space per server process: the tiny model fits, the 0.6B shape in f32 (2.2 GB) does not.
cluster_stop "$cluster"
(ulimit -v 2000000 && cluster_start "$cluster")
out=$(q -v ON_ERROR_STOP=0 2>&1 <<SQL
SET qwen_embed.model_path = '$sparse';
SET qwen_embed.dtype = 'f32';
SELECT embed('too big');
\echo sqlstate=:LAST_ERROR_SQLSTATE
RESET qwen_embed.model_path;
RESET qwen_embed.dtype;
SELECT vector_dims(embed('the model that fits'));
SQL
)
cluster_stop "$cluster"
echo "$out" | grep -q "not enough memory to load the model" || fail "no out-of-memory ERROR: $out"
echo "$out" | grep -qx "sqlstate=53200" || fail "wrong SQLSTATE: $out"
echo "$out" | grep -qx "64" || fail "the session did not recover: $out"
echo "ok: $(echo "$out" | grep -m1 'not enough memory')"
echo "ok: same session embeds with the configured model afterwards"
