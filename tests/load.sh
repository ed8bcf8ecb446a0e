#!/usr/bin/env bash
# Concurrent load through pgbench on a throw-away cluster (Unix socket only): 8 clients mixing instructed queries,
# semantic_similarity and trigger-embedded INSERTs (single rows and 5-row statements) for a fixed time. Then: no failed
# transaction, no server restart, the row count equals what pgbench committed, every stored vector equals a fresh
# embed() of its text, and each backend's private memory stayed flat after warm-up. Needs the extension installed.
#
#     bash tests/load.sh [SECONDS=60] [CLIENTS=8]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
test_cluster load
secs=${1:-60} clients=${2:-8} db=qwen_embed_load
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
SQL
scripts=$(scratch_dir)/pgbench
mkdir -p "$scripts"
cat >"$scripts/query.sql" <<'SQL'
\set n random(1, 1000000)
SELECT vector_dims(embed('question number ' || :n || ' about databases', 'Given a question, retrieve passages that answer it'));
SQL
cat >"$scripts/similarity.sql" <<'SQL'
\set n random(1, 1000000)
SELECT semantic_similarity('sentence ' || :n, 'another sentence ' || (:n + 1) || repeat(' word', :n % 50));
SQL
cat >"$scripts/insert_one.sql" <<'SQL'
\set n random(1, 1000000)
INSERT INTO load_docs (body) VALUES ('document ' || :n || repeat(' with words', :n % 64));
SQL
cat >"$scripts/insert_five.sql" <<'SQL'
\set n random(1, 1000000)
INSERT INTO load_docs (body) SELECT 'batch ' || :n || ' document ' || g || repeat(' text', g * 7) FROM generate_series(1, 5) g;
SQL
chmod 644 "$scripts"/*.sql
started=$(q -c "SELECT pg_postmaster_start_time()")

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
out=$(PGDATABASE=$db as_postgres pgbench -n -c "$clients" -j 2 -T "$secs" \
    -f "$scripts/query.sql@4" -f "$scripts/similarity.sql@2" -f "$scripts/insert_one.sql@2" \
    -f "$scripts/insert_five.sql@1" 2>&1) || fail "pgbench: $out"
kill $sampler
echo "$out" | grep -E "number of (transactions actually processed|failed)|latency average|^tps|^SQL script|transactions \("

failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
[ -n "$failed" ] || fail "pgbench printed no count of failed transactions: $out"
[ "$failed" = 0 ] || fail "$failed failed transactions"
[ "$(q -c "SELECT pg_postmaster_start_time()")" = "$started" ] || fail "the server restarted during the run"
# Transactions per script, in the order given: query, similarity, insert_one, insert_five.
mapfile -t per_script < <(echo "$out" | sed -n 's/^ - \([0-9]*\) transactions (.*/\1/p')
[ "${#per_script[@]}" = 4 ] || fail "pgbench printed ${#per_script[@]} per-script counts, expected 4: $out"
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

# Memory: the first sample after a quarter of the run (warm-up: model loaded, pool started) against the last.
[ "$(cut -d' ' -f2 "$rss_log" | sort -u | wc -l)" -ge "$clients" ] || fail "memory was sampled for fewer than $clients backends"
growth=$(awk -v warm=$(( $(head -1 "$rss_log" | cut -d' ' -f1) + secs / 4 )) '
    $1 >= warm { if (!($2 in first)) first[$2] = $3; last[$2] = $3 }
    END { worst = 0; for (p in first) { g = last[p] - first[p]; if (g > worst) worst = g;
          printf "backend %s: RssAnon %d MiB after warm-up, %d MiB at the end\n", p, first[p] / 1024, last[p] / 1024 > "/dev/stderr" }
          print worst }' "$rss_log")
[ "$growth" -le "$max_growth_kib" ] || fail "a backend's private memory grew by $((growth / 1024)) MiB after warm-up"
echo "largest RssAnon growth after warm-up: $growth KiB (limit $max_growth_kib KiB); 0 failed transactions; no server restart"
