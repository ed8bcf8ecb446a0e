#!/usr/bin/env bash
# SQL-level costs on the running cluster (after scripts/demo.sh or scripts/test.sh installed the extension):
# SELECT embed(...) through the server against the raw encoder on the same text, the first call in a new backend
# (model load), and the backend's RSS after load, for the real 0.6B shape with random weights.
#
#     python3 tools/make_random_model.py && bash bench/sql_bench.sh [MODEL_DIR] [dtype]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
src=${1:-$HOME/.cache/qwen_embed/qwen3-0.6b-random}
dtype=${2:-auto}
model=$(install_model "$src" "$(basename "$src")")
cluster_new "$(scratch_dir)/bench"
pg -q -c "DROP DATABASE IF EXISTS qwen_embed_bench" -c "CREATE DATABASE qwen_embed_bench"
pg -q -d qwen_embed_bench -c "CREATE EXTENSION qwen_embed CASCADE" 2>/dev/null
query="What is the capital of China? Answer in one short sentence please."
instruct="Given a web search query, retrieve relevant passages that answer the query"
settings="SET qwen_embed.model_path = '$model'; SET qwen_embed.dtype = '$dtype'; SET qwen_embed.threads = 2;"

# First call in a fresh backend: connection + model load + one embedding.
TIMEFORMAT=%R
first=$( { time pg -q -d qwen_embed_bench -c "$settings" -c "SELECT embed('warm up') IS NOT NULL" >/dev/null 2>&1; } 2>&1)
echo "first call in a new backend (connect + load + embed): ${first}s"

# Steady state in one backend; cache off so every call runs the encoder.
out=$(pg -q -At -d qwen_embed_bench <<SQL
$settings
SET qwen_embed.cache_size = 0;
SELECT embed('warm up') IS NOT NULL;
SELECT pg_backend_pid();
SELECT value FROM qwen_embed.info() WHERE key = 'load_ms';
\timing on
SELECT embed('$query', '$instruct') IS NOT NULL;
SELECT embed('$query', '$instruct') IS NOT NULL;
SELECT embed('$query', '$instruct') IS NOT NULL;
SELECT embed('$query', '$instruct') IS NOT NULL;
SELECT embed('$query', '$instruct') IS NOT NULL;
SELECT embed('$query', '$instruct') IS NOT NULL;
SELECT embed('$query', '$instruct') IS NOT NULL;
\timing off
SQL
)
echo "$out" | grep -q . || exit 1
load_ms=$(echo "$out" | sed -n 3p)
echo "model load inside the backend: ${load_ms} ms (qwen_embed.dtype = $dtype)"
echo "$out" | grep '^Time:' | awk '{print $2}' | sort -n | awk '{a[NR]=$1} END {print "SELECT embed(query_1) median over " NR ": " a[int((NR+1)/2)] " ms"}'

# RSS of a backend after load (and weights' size on disk for comparison).
rss=$(pg -q -At -d qwen_embed_bench <<SQL
$settings
SELECT embed('load') IS NOT NULL;
SELECT pg_backend_pid();
SELECT (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'), 'VmRSS:\s+(\d+)'))[1];
SQL
)
echo "backend RSS after load: $(( $(echo "$rss" | tail -n 1) / 1024 )) MiB; weights on disk: $(( $(stat -c %s "$model/model.safetensors") / 1048576 )) MiB"

# The raw encoder on the same text, same dtype, 2 threads: what SELECT embed(...) costs on top.
cases=$(mktemp)
printf '[{"name": "sql_query", "texts": ["%s"], "instruct": "%s"}]' "$query" "$instruct" >"$cases"
cargo build -q --release -p qwen_embed_model --example bench
raw_dtype=$(pg -q -At -d qwen_embed_bench -c "$settings" -c "SELECT embed('x') IS NOT NULL" \
    -c "SELECT value FROM qwen_embed.info() WHERE key = 'dtype'" 2>/dev/null | tail -n 1)
raw=$(RAYON_NUM_THREADS=2 target/release/examples/bench --model "$src" --cases "$cases" --reps 7 --dtype "$raw_dtype" |
    sed -n 's/.*"median_ms":\([0-9.]*\).*/\1/p')
rm -f "$cases"
echo "raw encoder, same query ($raw_dtype, 2 threads) median over 7: $raw ms"

# What a backend did, as qwen_embed.stats shows it (every live backend when qwen_embed is preloaded).
pg -q -d qwen_embed_bench -c "$settings" -c "SELECT embed(ARRAY['$query', 'a second text', 'a third']) IS NOT NULL" \
    -c "SELECT embed('$query', '$instruct') IS NOT NULL" -c "SELECT pid, device, dtype, calls, texts, tokens,
    forward_passes, cache_hits, errors, total_ms, max_ms, avg_ms FROM qwen_embed.stats" 2>/dev/null | sed -n '/ pid /,$p'
