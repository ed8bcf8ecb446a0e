#!/usr/bin/env bash
# Asynchronous embedding on the real Qwen3-Embedding-0.6B shape (random weights, tools/make_random_model.py), on a
# throw-away preloaded cluster, everything measured side by side in one run:
#   1. the write path: COPY of ROWS rows into a table without triggers and into an async table, alternated 5 times
#      (ratio pair by pair), and COPY into the sync triggers (SYNC_ROWS rows, scaled to ROWS);
#   2. drain throughput: DRAIN_ROWS rows queued, time until wait_for_embeddings returns, against
#      CALL qwen_embed.backfill on the same rows;
#   3. single instructed queries (pgbench, 1 client, 15 s, result cache off): p50 idle against p50 while a backlog
#      drains;
#   4. lag (commit to vector written) at a steady insert rate of half the drain throughput, for LAG_SECONDS: p50, p95.
# A benchmark, not a test: it asserts nothing. Needs the extension installed (scripts/demo.sh or scripts/test.sh).
#
#     bash bench/async.sh [ROWS=100000] [DRAIN_ROWS=1000] [LAG_SECONDS=60] [SYNC_ROWS=200]
set -euo pipefail
cd "$(dirname "$0")/.."
# calc EXPRESSION: floating-point arithmetic with awk (bc is not on every fresh machine).
calc() { awk "BEGIN { printf \"%.3f\", $1 }"; }
source scripts/cluster.sh
rows=${1:-100000} drain_rows=${2:-1000} lag_secs=${3:-60} sync_rows=${4:-200}
model=${QWEN_EMBED_BENCH_MODEL:-$HOME/.cache/qwen_embed/qwen3-0.6b-random}
[ -f "$model/model.safetensors" ] || python3 tools/make_random_model.py --out "$model"
model=$(install_model "$model" qwen3-0.6b)
cluster_new "$(scratch_dir)/bench" "shared_preload_libraries = 'qwen_embed'" "qwen_embed.model_path = '$model'" \
    "qwen_embed.cache_size = 0" "max_wal_size = '4GB'"
db=qwen_embed_bench
pg -q -c "CREATE DATABASE $db"
q() { pg -q -At -d $db "$@"; }
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC'); load $(cut -d' ' -f1-3 /proc/loadavg)"
q <<'SQL' >/dev/null
CREATE EXTENSION qwen_embed CASCADE;
CREATE TABLE plain (id bigint PRIMARY KEY, body text, embedding vector(1024));
CREATE TABLE sync (LIKE plain INCLUDING ALL);
-- The write path's async table has plain's columns: the lag's table below has a volatile default (queued_at), which
-- alone stops COPY from inserting in batches and would be charged to the triggers.
CREATE TABLE async_copy (LIKE plain INCLUDING ALL);
CREATE TABLE async (LIKE plain INCLUDING ALL, queued_at timestamptz DEFAULT clock_timestamp(), embedded_at timestamptz);
SELECT qwen_embed.create_embedding_triggers('sync', 'body', 'embedding');
SELECT qwen_embed.create_embedding_triggers('async_copy', 'body', 'embedding', mode => 'async');
SELECT qwen_embed.create_embedding_triggers('async', 'body', 'embedding', mode => 'async');
-- When the worker writes a row's vector (for the lag).
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.embedded_at := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER stamp BEFORE UPDATE OF embedding ON async FOR EACH ROW
    WHEN (OLD.embedding IS NULL AND NEW.embedding IS NOT NULL) EXECUTE FUNCTION stamp();
SQL
q -c "SELECT vector_dims(embed('warm up'))" >/dev/null
echo "model: 0.6B shape, random weights; server: $(q -c "SELECT string_agg(key || ' ' || value, ', ') FROM qwen_embed.server_info() WHERE key IN ('device', 'dtype', 'kernel', 'threads', 'batch_tokens')")"

# ~40-token documents, as a COPY file the server reads.
data=$(scratch_dir)/docs.tsv
python3 - "$rows" >"$data" <<'PY'
import random, sys
random.seed(7)
words = "database index query vector search model server table row column text embedding latency batch".split()
for i in range(1, int(sys.argv[1]) + 1):
    print(f"{i}\tdocument {i}: " + " ".join(random.choice(words) for _ in range(30)))
PY
chmod 644 "$data"
copy_ms() { # TABLE [LIMIT]: COPY the first LIMIT (all) rows into an emptied TABLE; prints milliseconds
    q -c "TRUNCATE $1" >/dev/null
    local from="'$data'"
    [ -z "${2:-}" ] || from="PROGRAM 'head -n $2 $data'"
    q -c '\timing on' -c "COPY $1 (id, body) FROM $from" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}

echo
echo "1. write path: COPY of $rows rows"
# The worker must not compute meanwhile (it would share the CPU with the COPYs): its model path is broken for this
# part, so its batches fail at once (uncharged, backing off); the cluster restarts with the model afterwards.
q -c "ALTER SYSTEM SET qwen_embed.model_path = '/nonexistent'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 1
ratios=()
for run in 1 2 3 4 5; do
    plain=$(copy_ms plain) async=$(copy_ms async_copy)
    ratio=$(calc "$async / $plain")
    ratios+=("$ratio")
    echo "   run $run: no triggers ${plain} ms, async ${async} ms: ${ratio}x"
done
echo "   async / no triggers, pair by pair: ${ratios[*]} (median $(printf '%s\n' "${ratios[@]}" | sort -n | sed -n 3p)x)"
q -c "TRUNCATE async_copy, plain" -c "ALTER SYSTEM RESET qwen_embed.model_path" >/dev/null
cluster_stop "$PGHOST" && cluster_start "$PGHOST"
q -c "SELECT vector_dims(embed('warm up'))" >/dev/null
sync=$(copy_ms sync "$sync_rows")
echo "   sync triggers: $sync_rows rows in ${sync} ms, i.e. $(calc "$sync * $rows / $sync_rows / 1000") s for $rows rows (scaled)"

echo
echo "2. drain: $drain_rows rows"
q -c "COPY async (id, body) FROM PROGRAM 'head -n $drain_rows $data'" >/dev/null
started=$(date +%s.%N)
q -c "SELECT qwen_embed.wait_for_embeddings('async', '1 hour')" >/dev/null
drain_s=$(calc "$(date +%s.%N) - $started")
q -c "COPY plain (id, body) FROM PROGRAM 'head -n $drain_rows $data'" >/dev/null
started=$(date +%s.%N)
q -c "CALL qwen_embed.backfill('plain', 'body', 'embedding')" >/dev/null 2>&1
backfill_s=$(calc "$(date +%s.%N) - $started")
drain_rate=$(calc "$drain_rows / $drain_s")
backfill_rate=$(calc "$drain_rows / $backfill_s")
echo "   async drain ${drain_rate} rows/s, backfill ${backfill_rate} rows/s: $(calc "$drain_rate / $backfill_rate")x"
q -c "TRUNCATE async, plain" >/dev/null

echo
echo "3. single instructed queries, 1 client, 15 s"
query=$(scratch_dir)/query.sql
cat >"$query" <<'SQL'
\set n random(1, 1000000)
SELECT vector_dims(embed('what is the best way to store question number ' || :n || ' in a database?', 'Given a web search query, retrieve relevant passages that answer the query'));
SQL
chmod 644 "$query"
p50() { # prints the p50 latency in ms of 15 s of single queries
    local log=$(scratch_dir)/pgbench_log
    rm -rf "$log" && mkdir -p "$log" && chmod 777 "$log"
    (cd "$log" && as_postgres "$PG_BIN/pgbench" -n -c 1 -T 15 -l -f "$query" $db >/dev/null)
    cat "$log"/pgbench_log.* | awk '{ print $3 / 1000 }' | sort -n | awk '{ a[NR] = $1 } END { printf "%.1f", a[int((NR + 1) / 2)] }'
}
idle=$(p50)
q -c "COPY async (id, body) FROM PROGRAM 'head -n $((drain_rows * 3)) $data'" >/dev/null
sleep 2 # the worker is computing
busy=$(p50)
left=$(q -c "SELECT pending + in_progress FROM qwen_embed.async_status WHERE relation = 'async'::regclass")
echo "   p50 idle ${idle} ms, while the backlog drains ${busy} ms ($left rows still queued at the end): $(calc "$busy / $idle")x"
q -c "TRUNCATE async" >/dev/null

echo
rate=$(calc "$drain_rate / 2")
echo "4. lag at a steady $rate inserts/s (half the drain throughput), ${lag_secs} s"
insert=$(scratch_dir)/insert.sql
cat >"$insert" <<'SQL'
\set id random(1, 1000000000)
INSERT INTO async (id, body) VALUES (:id, 'steady insert ' || :id || ' about vector search latency and batch size');
SQL
chmod 644 "$insert"
as_postgres "$PG_BIN/pgbench" -n -c 1 -T "$lag_secs" -R "$rate" -f "$insert" $db >/dev/null 2>&1 || true
q -c "SELECT qwen_embed.wait_for_embeddings('async', '10 min')" >/dev/null
q -F ' ' -c "SELECT count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric), round(percentile_cont(0.95) WITHIN GROUP (ORDER BY ms)::numeric)
             FROM (SELECT extract(epoch FROM embedded_at - queued_at) * 1000 AS ms FROM async) l" |
    while read -r n p50 p95; do echo "   $n rows: lag p50 ${p50} ms, p95 ${p95} ms"; done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
