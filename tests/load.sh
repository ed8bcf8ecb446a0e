#!/usr/bin/env bash
# Concurrent load through pgbench on a throw-away cluster (Unix socket only), every kind of work at once for a fixed
# time: instructed single queries, 8-text arrays, semantic_similarity, embed_chunks of a long document, reranking,
# trigger-embedded INSERTs (single rows and 5-row statements), a backfill running throughout, and a cancel storm: a
# quarter of the clients run with statement_timeout = 50 ms (their calls catch the cancel and go on). Then: no failed
# transaction, no cluster or model-server restart, the row count equals what pgbench committed, every stored vector
# equals a fresh embed() of its text, each backend's private memory stayed flat after warm-up, and the model server's
# memory at rest grew by at most 5 %. Needs the extension installed.
#
#     bash tests/load.sh [SECONDS=60] [CLIENTS=16]
# (the test command runs 60 s and 16 clients; docs/reliability.md's figures, 600 s and 64)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
test_cluster load
secs=${1:-60} clients=${2:-16} db=qwen_embed_load
cancelers=$((clients / 4)) workers=$((clients - clients / 4))
# Private memory a backend may gain after warm-up: allocator slack, not a leak (a leak of one vector per call would be
# tens of MiB over the run).
max_growth_kib=${QWEN_EMBED_MAX_GROWTH_KIB:-4096}
fail() { echo "FAILED: $*" >&2; exit 1; }
q() { pg -q -At -d $db "$@"; }
pg -q -c "CREATE DATABASE $db"
q <<'SQL' >/dev/null
CREATE EXTENSION qwen_embed CASCADE;
CREATE TABLE load_docs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('load_docs', 'body', 'embedding');
-- Rows for the backfill that runs during the whole test (more than it can do in the time).
CREATE TABLE backlog (id bigint PRIMARY KEY, body text NOT NULL, embedding vector(64));
INSERT INTO backlog SELECT g, 'backlog row ' || g || repeat(' filler', g % 30) FROM generate_series(1, 200000) g;
-- What the pgbench scripts check of every result: an ERROR (a failed transaction, which fails the test) unless it holds.
CREATE FUNCTION must(ok boolean, what text) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN RAISE EXCEPTION 'load: wrong result: %', what; END IF;
    RETURN 1;
END $$;
-- A vector of the model's 64 dimensions, unit length (a NaN fails the comparison).
CREATE FUNCTION unit(v vector) RETURNS boolean LANGUAGE sql AS $$
    SELECT v IS NOT NULL AND vector_dims(v) = 64 AND abs(vector_norm(v) - 1) < 1e-4
$$;
-- The cancel storm's calls, one of four kinds.
CREATE FUNCTION storm(kind int, n int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    CASE kind
        WHEN 0 THEN PERFORM embed('storm query ' || n, 'Given a question, retrieve passages that answer it');
        WHEN 1 THEN PERFORM embed(ARRAY(SELECT 'storm array ' || n || ' text ' || g FROM generate_series(1, 16) g));
        WHEN 2 THEN PERFORM count(*) FROM embed_chunks(repeat('storm chunk ' || n || ' words ', 400), 128, 16);
        ELSE PERFORM count(*) FROM rerank('storm ' || n, ARRAY['first passage', 'second passage ' || n]);
    END CASE;
END $$;
SQL
scripts=$(scratch_dir)/pgbench
mkdir -p "$scripts"
cat >"$scripts/query.sql" <<'SQL'
\set n random(1, 1000000)
SELECT must(unit(embed('question number ' || :n || ' about databases', 'Given a question, retrieve passages that answer it')), 'query');
SQL
cat >"$scripts/similarity.sql" <<'SQL'
\set n random(1, 1000000)
SELECT must(s BETWEEN -1 AND 1, 'similarity ' || s)
FROM (SELECT semantic_similarity('sentence ' || :n, 'another sentence ' || (:n + 1) || repeat(' word', :n % 50)) AS s) r;
SQL
cat >"$scripts/insert_one.sql" <<'SQL'
\set n random(1, 1000000)
INSERT INTO load_docs (body) VALUES ('document ' || :n || repeat(' with words', :n % 64));
SQL
cat >"$scripts/insert_five.sql" <<'SQL'
\set n random(1, 1000000)
INSERT INTO load_docs (body) SELECT 'batch ' || :n || ' document ' || g || repeat(' text', g * 7) FROM generate_series(1, 5) g;
SQL
cat >"$scripts/array.sql" <<'SQL'
\set n random(1, 1000000)
-- Every element a unit vector, in order: the first equal to the same text embedded alone.
SELECT must(cardinality(v) = 8 AND (SELECT bool_and(unit(e)) FROM unnest(v) e)
            AND 1 - cosine_sim(v[1], embed('array ' || :n || ' text 1' || repeat(' word', 3))) < 1e-5, 'array')
FROM (SELECT embed(ARRAY(SELECT 'array ' || :n || ' text ' || g || repeat(' word', g * 3) FROM generate_series(1, 8) g)) AS v) r;
SQL
cat >"$scripts/chunks.sql" <<'SQL'
\set n random(1, 1000000)
SELECT must(count(*) > 1 AND bool_and(unit(embedding)) AND min(chunk_no) = 1 AND max(chunk_no) = count(*), 'chunks')
FROM embed_chunks(repeat('chunked document ' || :n || ' with a sentence. ', 120), 128, 16);
SQL
cat >"$scripts/rerank.sql" <<'SQL'
\set n random(1, 1000000)
SELECT must(count(*) = 3 AND bool_and(score BETWEEN 0 AND 1) AND count(DISTINCT idx) = 3, 'rerank')
FROM rerank('question ' || :n, ARRAY['a passage ' || :n, 'another passage', 'a third one about ' || :n]);
SQL
chmod 644 "$scripts"/*.sql
started=$(cluster_incarnation)
q -c "SELECT vector_dims(embed('the server is up'))" >/dev/null
server_value() { q -c "SELECT value FROM qwen_embed.server_info() WHERE key = '$1'"; }
server=$(server_value pid)
# The model server's memory at rest: its heap's bytes in use and its RssAnon (KiB), after one call of every kind (so
# that both models and whatever a kind makes on first use are there at each reading, whatever the warm-up happened to
# run), once the server has fallen idle and given its free memory back (server_info()'s idle_trims counts that). A leak
# grows the bytes in use; the allocator's high-water mark during the run (which batches happened to meet) does not, and
# the trim takes most of it out of the resident figure.
server_at_rest() {
    local trims i
    q >/dev/null <<'SQL'
SELECT vector_dims(embed('at rest', 'Given a question, retrieve passages that answer it'));
SELECT cardinality(embed(ARRAY['at rest', 'an array']));
SELECT count(*) FROM embed_chunks(repeat('at rest with a sentence. ', 120), 128, 16);
SELECT vector_dims(embed_document(repeat('at rest with a sentence. ', 120), 128, 16));
SELECT count(*) FROM rerank('at rest', ARRAY['a passage', 'another passage']);
SELECT token_count('at rest');
SQL
    [[ "$(server_value reranker_state)" == ready* ]] ||
        fail "the reranker is not loaded in the model server: $(server_value reranker_state)"
    trims=$(server_value idle_trims)
    for i in $(seq 100); do
        if [ "$(server_value idle_trims)" -gt "$trims" ]; then
            echo "$(server_value heap_bytes_in_use) $(awk '/^RssAnon:/ { print $2 }' "/proc/$server/status")"
            return
        fi
        sleep 0.1
    done
    fail "the model server did not give its free memory back within 10 s of falling idle"
}
# Warm-up: every kind of work over and over (the reranker loaded, each lazily made buffer and kernel made) until the
# memory at rest settles: the model server keeps what it makes on first use (the reranker, buffers grown to the
# largest batch, oneDNN's attention primitives per query and key-block step), a set bounded by the model's shapes
# that stops growing once the workload has met them. The run is then compared against that plateau: what still
# grows is a leak.
warm_rounds=0 server_warm=""
while :; do
    PGDATABASE=$db as_postgres pgbench -n -c "$workers" -j 2 -T "$((secs / 6 + 1))" \
        -f "$scripts/query.sql" -f "$scripts/similarity.sql" -f "$scripts/insert_one.sql" \
        -f "$scripts/insert_five.sql" -f "$scripts/array.sql" -f "$scripts/chunks.sql" -f "$scripts/rerank.sql" \
        >/dev/null 2>&1 || fail "the warm-up failed"
    warm_rounds=$((warm_rounds + 1))
    previous=${server_warm%% *}
    server_warm=$(server_at_rest)
    echo "warm-up round $warm_rounds: model server heap in use at rest $((${server_warm%% *} >> 10)) KiB"
    # Settled: within 1 % of the round before.
    [ -n "$previous" ] && awk -v a="$previous" -v b="${server_warm%% *}" 'BEGIN { exit !(b <= a * 1.01) }' && break
    [ "$warm_rounds" -lt 6 ] || fail "the model server's memory at rest did not settle in 6 warm-up rounds"
done
q -c "TRUNCATE load_docs" # the run's rows are counted against what pgbench reports
canceled_before=$(server_value canceled)

# The backfill, for the whole run (canceled at the end: its committed batches stay).
backfill_out=$(scratch_dir)/backfill.out
(q -v ON_ERROR_STOP=0 -c "SET application_name = 'qwen_embed_load_backfill'" \
    -c "CALL qwen_embed.backfill('backlog', 'body', 'embedding', batch => 32)" \
    -c '\echo sqlstate=:LAST_ERROR_SQLSTATE' >"$backfill_out" 2>&1 || true) &
backfill=$!

# Private memory (RssAnon: the heap, not the shared buffers a backend touches) of every pgbench backend every 2 s.
rss_log=$(scratch_dir)/rss.log
(
    while sleep 2; do
        for pid in $(q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench'" || true); do
            kib=$(awk '/^RssAnon:/ { print $2 }' /proc/$pid/status 2>/dev/null || true)
            [ -z "$kib" ] || echo "$(date +%s) $pid $kib"
        done
    done >"$rss_log"
) &
sampler=$!
# The cancel storm: a quarter of the clients, each a psql running calls of every kind under statement_timeout = 50 ms
# until the time is up. Their only ERRORs may be the timeouts (pgbench would stop a client at its first ERROR).
storm_dir=$(scratch_dir)/storm
mkdir -p "$storm_dir"
storm_client() {
    local end=$(($(date +%s) + secs)) k
    while [ "$(date +%s)" -lt "$end" ]; do
        # ON_ERROR_STOP=0: psql exits 0 after a statement's ERROR; non-zero only when it could not connect or lost
        # the connection, which the storm must never cause.
        for k in $(seq 20); do echo "SELECT storm($((RANDOM % 4)), $RANDOM);"; done |
            q -v ON_ERROR_STOP=0 -c "SET statement_timeout = 50" -f - >/dev/null 2>>"$storm_dir/$1.err" ||
            echo "psql exited with status $?" >>"$storm_dir/$1.err"
        echo 20 >>"$storm_dir/$1.count"
    done
}
storms=""
for i in $(seq "$cancelers"); do
    storm_client "$i" &
    storms="$storms $!"
done
out=$(PGDATABASE=$db as_postgres pgbench -n -c "$workers" -j 2 -T "$secs" \
    -f "$scripts/query.sql@4" -f "$scripts/similarity.sql@2" -f "$scripts/insert_one.sql@2" \
    -f "$scripts/insert_five.sql@1" -f "$scripts/array.sql@2" -f "$scripts/chunks.sql@1" -f "$scripts/rerank.sql@1" \
    2>&1) || fail "pgbench: $out"
wait $storms
# What the server dropped for the storm, read before the backfill's own cancel below adds one of its requests.
canceled=$(( $(server_value canceled) - canceled_before ))
kill $sampler
q -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'qwen_embed_load_backfill'" >/dev/null
wait $backfill
echo "$out" | grep -E "number of (transactions actually processed|failed)|latency average|^tps|^SQL script|transactions \("
storm_calls=$(cat "$storm_dir"/*.count | awk '{ n += $1 } END { print n + 0 }')
storm_errors=$(cat "$storm_dir"/*.err | grep -c "ERROR:" || true)
others=$(cat "$storm_dir"/*.err | grep -E "ERROR:|FATAL:|PANIC:|server closed|connection to server|psql exited" |
    grep -v "ERROR:  canceling statement due to statement timeout" || true)
[ -z "$others" ] || fail "the cancel storm got failures other than its timeouts: $(echo "$others" | sort | uniq -c | head)"
echo "cancel storm: $cancelers clients, $storm_calls calls under statement_timeout = 50 ms, $storm_errors canceled, no other ERROR"
# A call canceled while its request waited or ran is dropped by the server; one canceled after its reply arrived
# is not: at least half the timeouts must have reached the server as drops.
[ "$storm_errors" -gt 0 ] && [ $((canceled * 2)) -ge "$storm_errors" ] ||
    fail "the server dropped $canceled requests for $storm_errors canceled storm calls"
grep -qx "sqlstate=57014" "$backfill_out" || fail "the backfill ended otherwise than by our cancel: $(cat "$backfill_out")"
backfilled=$(q -c "SELECT count(*) FROM backlog WHERE embedding IS NOT NULL")
[ "$backfilled" -gt 0 ] || fail "the backfill wrote nothing"
bad=$(q <<'SQL'
WITH fresh AS (
    SELECT unnest(array_agg(id ORDER BY id)) AS id, unnest(embed(array_agg(body ORDER BY id))) AS embedding
    FROM backlog WHERE embedding IS NOT NULL
)
SELECT count(*) FILTER (WHERE 1 - cosine_sim(b.embedding, f.embedding) > 1e-5) FROM backlog b JOIN fresh f USING (id);
SQL
)
[ "$bad" = 0 ] || fail "$bad backfilled vectors differ from embed(body)"
echo "model server: $canceled requests canceled by the storm; the backfill wrote $backfilled rows, all equal to embed(body)"

failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
[ -n "$failed" ] || fail "pgbench printed no count of failed transactions: $out"
[ "$failed" = 0 ] || fail "$failed failed transactions"
[ "$(cluster_incarnation)" = "$started" ] || fail "the cluster restarted during the run"
[ "$(server_value pid)" = "$server" ] ||
    fail "the model server restarted during the run"
# Transactions per script, in the order given: query, similarity, insert_one, insert_five, array, chunks, rerank.
mapfile -t per_script < <(echo "$out" | sed -n 's/^ - \([0-9]*\) transactions (.*/\1/p')
[ "${#per_script[@]}" = 7 ] || fail "pgbench printed ${#per_script[@]} per-script counts, expected 7: $out"
expected=$((per_script[2] + 5 * per_script[3]))
rows=$(q -c "SELECT count(*) FROM load_docs")
# pgbench does not count a transaction still running when the time is up, though it may commit: at most one per
# client, of at most 5 rows. Fewer rows than counted would be lost rows.
[ "$rows" -ge "$expected" ] && [ "$rows" -le $((expected + 5 * clients)) ] ||
    fail "$rows rows, pgbench counted $expected committed (plus at most one unfinished transaction per client)"
bad=$(q <<'SQL'
WITH fresh AS (
    SELECT unnest(array_agg(id ORDER BY id)) AS id, unnest(embed(array_agg(body ORDER BY id))) AS embedding FROM load_docs
)
SELECT count(*) FILTER (WHERE d.embedding IS NULL OR 1 - cosine_sim(d.embedding, f.embedding) > 1e-5)
FROM load_docs d JOIN fresh f USING (id);
SQL
)
[ "$bad" = 0 ] || fail "$bad stored vectors differ from a fresh embed()"
echo "rows: $rows for ${per_script[2]} single + 5 × ${per_script[3]} five-row inserts counted; all $rows vectors equal embed(body)"

# Memory. The model server's at rest, after the run against after the warm-up: its heap's bytes in use at most 5 % more.
read -r heap_warm rss_warm <<<"$server_warm"
server_end=$(server_at_rest) # on a line of its own: a failure inside stops the test (in a here-string it was lost)
read -r heap_end rss_end <<<"$server_end"
[ -n "$heap_warm" ] && [ -n "$heap_end" ] || fail "no heap figure at rest: '$server_warm', '$server_end'"
server_growth=$(awk -v a="$heap_warm" -v b="$heap_end" 'BEGIN { printf "%.1f", 100 * (b - a) / a }')
echo "model server at rest: heap in use $((heap_warm >> 20)) MiB after the warm-up, $((heap_end >> 20)) MiB after the run;" \
    "RssAnon $((rss_warm >> 10)) MiB, $((rss_end >> 10)) MiB"
awk -v g="$server_growth" 'BEGIN { exit !(g + 0 <= 5) }' ||
    fail "the model server's heap in use grew by $server_growth %; server_info(): $(q -c "SELECT string_agg(key || '=' || value, ', ') FROM qwen_embed.server_info()")"
# Each backend's: the first sample after a quarter of the run (warm-up: model loaded, pool started) against the last.
[ "$(cut -d' ' -f2 "$rss_log" | sort -u | wc -l)" -ge "$workers" ] || fail "memory was sampled for fewer than $workers backends"
growth=$(awk -v warm=$(( $(head -1 "$rss_log" | cut -d' ' -f1) + secs / 4 )) '
    $1 >= warm { if (!($2 in first)) first[$2] = $3; last[$2] = $3 }
    END { worst = 0; for (p in first) { g = last[p] - first[p]; if (g > worst) worst = g;
          printf "backend %s: RssAnon %d MiB after warm-up, %d MiB at the end\n", p, first[p] / 1024, last[p] / 1024 > "/dev/stderr" }
          print worst }' "$rss_log")
[ "$growth" -le "$max_growth_kib" ] || fail "a backend's private memory grew by $((growth / 1024)) MiB after warm-up"
echo "largest backend RssAnon growth after warm-up: $growth KiB (limit $max_growth_kib KiB); model server's heap $server_growth %"
echo "(limit 5 %); 0 failed transactions; no cluster or model-server restart"
