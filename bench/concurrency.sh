#!/usr/bin/env bash
# Many sessions at once: the model server against every backend running its own model, side by side in one run, on
# the real Qwen3-Embedding-0.6B shape with random weights (tools/make_random_model.py). pgbench runs instructed single
# queries (result cache off) with 1, 4, 8 and 16 clients against each path; for each it prints queries/s, p50 and p95
# latency, and the memory (RSS) of all the cluster's processes and their children. Then, on the server, single queries
# idle and under three kinds of bulk work by other sessions: a 20,000-row backfill, 4 sessions looping reranks of 50
# candidates (~100-token passages; the random model is the reranker too: Qwen3-Reranker-0.6B has its shape), and 2
# sessions looping embed_document of a 20,000-token document; each query p50 is also given as a ratio to the idle
# one. A benchmark, not a test: it asserts nothing.
#
#     bash bench/concurrency.sh [SECONDS_PER_RUN=20] [CLIENT_COUNTS="1 4 8 16"]
#
# Needs the extension installed (scripts/demo.sh or scripts/test.sh). The in-backend path is skipped at client counts
# whose models would not fit in the machine's memory (one model per backend). QWEN_EMBED_DEVICE (default auto) and
# QWEN_EMBED_DTYPE (default auto) set qwen_embed.device and .dtype; where nvidia-smi exists, the GPU's peak memory in
# use during each run is a column too.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
secs=${1:-20} counts=${2:-"1 4 8 16"}
model=${QWEN_EMBED_BENCH_MODEL:-$HOME/.cache/qwen_embed/qwen3-0.6b-random}
[ -f "$model/model.safetensors" ] || python3 tools/make_random_model.py --out "$model"
models=$(scratch_dir)/models
mkdir -p "$models" && cp -r "$model" "$models/qwen3-0.6b" && chmod -R a+rX "$models"
model=$models/qwen3-0.6b
dtype=${QWEN_EMBED_DTYPE:-auto} device=${QWEN_EMBED_DEVICE:-auto}

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC'); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model: 0.6B shape, random weights; device $device, dtype $dtype; ${secs}s per run; cache off"
gpu=$(command -v nvidia-smi || true)
[ -z "$gpu" ] || echo "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"

# MiB in use on GPU 0, or 0 without one.
gpu_used() {
    if [ -n "$gpu" ]; then nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0; else echo 0; fi
}

# The RSS of a process and all its descendants, in MiB.
tree_rss() {
    local pids=("$1") all=() p
    while [ ${#pids[@]} -gt 0 ]; do
        p=${pids[0]}
        pids=("${pids[@]:1}")
        all+=("$p")
        for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do pids+=("$c"); done
    done
    local kib=0
    for p in "${all[@]}"; do
        r=$(awk '/^VmRSS:/ { print $2 }' /proc/"$p"/status 2>/dev/null || true)
        kib=$((kib + ${r:-0}))
    done
    echo $((kib / 1024))
}

query=$(scratch_dir)/query.sql
cat >"$query" <<'SQL'
\set n random(1, 1000000)
SELECT vector_dims(embed('what is the best way to store question number ' || :n || ' in a database?', 'Given a web search query, retrieve relevant passages that answer the query'));
SQL
chmod 644 "$query"

# run_pgbench CLIENTS SECONDS: prints "qps p50_ms p95_ms peak_rss_mib peak_gpu_mib". Each client's first query is left out (on the
# in-backend path it includes loading that connection's model): queries/s counts the others over the time from the
# last client's first answer to the end.
run_pgbench() {
    local clients=$1 seconds=$2 logdir peak=0 rss gpu_peak=0 used
    logdir=$(scratch_dir)/log.$RANDOM
    $SUDO install -d -o postgres -m 755 "$logdir"
    (cd "$logdir" && PGOPTIONS="-c qwen_embed.cache_size=0" as_postgres pgbench -n -c "$clients" -j "$clients" \
        -T "$seconds" -l -f "$query" qwen_embed_bench >"$logdir/out" 2>&1) &
    local bench=$!
    while kill -0 $bench 2>/dev/null; do
        rss=$(tree_rss "$(as_postgres head -1 "$PGHOST/data/postmaster.pid")")
        [ "$rss" -gt "$peak" ] && peak=$rss
        used=$(gpu_used)
        [ "$used" -gt "$gpu_peak" ] && gpu_peak=$used
        sleep 1
    done
    wait $bench || { cat "$logdir/out" >&2; return 1; }
    # pgbench's log: client, transaction number, latency µs, script, end epoch s, end µs.
    local window
    window=$(cat "$logdir"/pgbench_log.* | awk '{ t = $5 + $6 / 1e6; if (t > end) end = t
        if (!($1 in first) || t < first[$1]) first[$1] = t } END { for (c in first) if (first[c] > start) start = first[c]
        print end - start }')
    cat "$logdir"/pgbench_log.* | sort -k1,1n -k5,5n -k6,6n | awk 'BEGIN { last = -1 } $1 == last { print $3 / 1000 } { last = $1 }' |
        sort -n | awk -v window="$window" -v peak="$peak" -v gpu="$gpu_peak" '{ v[NR] = $1 } END {
            printf "%.2f %.0f %.0f %d %d\n", (window > 0 ? NR / window : 0), v[int(NR * 0.5) + 1], v[int(NR * 0.95) + 1],
                peak, gpu }'
}

# Bulk work of other sessions, looped by pgbench: a rerank of 50 candidates, and a document of 20,000 tokens.
rerank_load=$(scratch_dir)/rerank.sql document_load=$(scratch_dir)/document.sql
cat >"$rerank_load" <<'SQL'
\set n random(1, 1000000)
SELECT count(*) FROM rerank('which passage answers question ' || :n || ' about vector search?',
    ARRAY(SELECT format('Passage %s of %s: ', g, :n) || repeat('indexes, vectors and the pages of a database ', 12)
          FROM generate_series(1, 50) g));
SQL
cat >"$document_load" <<'SQL'
\set n random(1, 1000000)
SELECT vector_dims(embed_document(:n || repeat(' The storage engine writes its pages to the heap.', 2000)));
SQL
chmod 644 "$rerank_load" "$document_load"

# under_load SCRIPT CLIENTS: single queries (run_pgbench 1) idle, then while CLIENTS other sessions loop SCRIPT; prints
# the loaded run's line, the sequences the server computed meanwhile (server_info's `texts`: the queries' texts, the
# load's pairs or chunks), and the idle p50 just before (a noisy machine's idle latency drifts: each ratio is to the
# idle run next to it). The load is canceled after the queries (its calls would otherwise run to their end).
under_load() {
    local script=$1 clients=$2 line before idle50
    read -r _ idle50 _ <<<"$(run_pgbench 1 "$secs")"
    (as_postgres pgbench -n -c "$clients" -j "$clients" -T 3600 -f "$script" "$PGDATABASE" >/dev/null 2>&1) &
    local load=$!
    sleep 5
    before=$(server_value texts)
    line=$(run_pgbench 1 "$secs")
    echo "$line $(($(server_value texts) - before)) $idle50"
    pg -q -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgbench'" >/dev/null
    wait $load || true
}

server_value() {
    pg -At -c "SELECT value FROM qwen_embed.server_info() WHERE key = '$1'"
}

declare -A result
for path in backend server; do
    if [ $path = server ]; then
        cluster_new "$(scratch_dir)/$path" "shared_preload_libraries = 'qwen_embed'" "qwen_embed.model_path = '$model'" \
            "qwen_embed.reranker_path = '$model'" "qwen_embed.dtype = '$dtype'" "qwen_embed.device = '$device'" \
            "max_connections = 40"
    else
        cluster_new "$(scratch_dir)/$path" "qwen_embed.model_path = '$model'" "qwen_embed.dtype = '$dtype'" \
            "qwen_embed.device = '$device'" "max_connections = 40"
    fi
    pg -q -c "CREATE DATABASE qwen_embed_bench" >/dev/null
    PGDATABASE=qwen_embed_bench pg -q -c "CREATE EXTENSION qwen_embed CASCADE" -c "SELECT vector_dims(embed('warm up'))" \
        >/dev/null
    per_backend=0 # MiB a backend with its own model takes, measured with one client
    for clients in $counts; do
        available=$(($(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo) / 1024))
        if [ $path = backend ] && [ $((clients * per_backend)) -gt $((available * 7 / 10)) ]; then
            result[$path,$clients]="(not run: $clients models of about $per_backend MiB exceed 70 % of the ${available} MiB available)"
            continue
        fi
        PGDATABASE=qwen_embed_bench run_pgbench "$clients" 3 >/dev/null # warm every connection's path
        result[$path,$clients]=$(PGDATABASE=qwen_embed_bench run_pgbench "$clients" "$secs")
        echo "$path $clients clients: ${result[$path,$clients]}" >&2
        read -r _ _ _ peak _ <<<"${result[$path,$clients]}"
        [ "$per_backend" -gt 0 ] || per_backend=$((peak / clients))
    done
    if [ $path = server ]; then
        idle=$(PGDATABASE=qwen_embed_bench run_pgbench 1 "$secs")
        PGDATABASE=qwen_embed_bench pg -q -c "CREATE TABLE docs (id int PRIMARY KEY, body text, embedding vector)" \
            -c "INSERT INTO docs SELECT g, 'row ' || g || ' of the backfill, with a few words of text' FROM generate_series(1, 20000) g" >/dev/null
        (PGDATABASE=qwen_embed_bench pg -q -c "CALL qwen_embed.backfill('docs', 'body', 'embedding', batch => 256)" \
            >/dev/null 2>&1 || true) &
        backfill=$!
        sleep 5
        busy=$(PGDATABASE=qwen_embed_bench run_pgbench 1 "$secs")
        filled=$(PGDATABASE=qwen_embed_bench pg -q -At -c "SELECT count(embedding) FROM docs")
        kill $backfill 2>/dev/null || true
        wait || true
        PGDATABASE=qwen_embed_bench pg -q -c "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
            WHERE query ~ 'qwen_embed.backfill' AND pid <> pg_backend_pid()" >/dev/null
        PGDATABASE=qwen_embed_bench pg -q -c "SELECT count(*) FROM rerank('warm up', ARRAY['the reranker loads'])" \
            >/dev/null
        kernel=$(PGDATABASE=qwen_embed_bench pg -At -c "SELECT string_agg(key || ' ' || value, ', ' ORDER BY key) FROM qwen_embed.server_info()
            WHERE key IN ('dtype', 'kernel', 'threads', 'batch_tokens')")
        reranking=$(PGDATABASE=qwen_embed_bench under_load "$rerank_load" 4)
        documents=$(PGDATABASE=qwen_embed_bench under_load "$document_load" 2)
    fi
    cluster_stop "$PGHOST"
done

echo
echo "model server: $kernel"
gpu_head="" gpu_rule=""
[ -z "$gpu" ] || gpu_head=" GPU MiB |" gpu_rule=" ---: |"
echo "| clients | in-backend q/s | p50 ms | p95 ms | RSS MiB |$gpu_head server q/s | p50 ms | p95 ms | RSS MiB |$gpu_head"
echo "| ---: | ---: | ---: | ---: | ---: |$gpu_rule ---: | ---: | ---: | ---: |$gpu_rule"
for clients in $counts; do
    read -r bq bp50 bp95 brss bgpu <<<"${result[backend,$clients]}"
    read -r sq sp50 sp95 srss sgpu <<<"${result[server,$clients]}"
    if [[ ${result[backend,$clients]} == \(* ]]; then bq=${result[backend,$clients]} bp50="" bp95="" brss="" bgpu=""; fi
    bgpu=${gpu:+ $bgpu |} sgpu=${gpu:+ $sgpu |}
    echo "| $clients | $bq | $bp50 | $bp95 | $brss |$bgpu $sq | $sp50 | $sp95 | $srss |$sgpu"
done
read -r _ idle50 idle95 _ _ <<<"$idle"
read -r _ busy50 busy95 _ _ <<<"$busy"
echo
echo "server, single client: idle p50 $idle50 ms (p95 $idle95); during a 20,000-row backfill p50 $busy50 ms (p95 $busy95),"
echo "$(awk -v a="$busy50" -v b="$idle50" 'BEGIN { printf "%.2f", a / b }')× idle; the backfill had filled $filled rows by the end"
read -r _ rerank50 rerank95 _ _ reranks rerank_idle <<<"$reranking"
read -r _ doc50 doc95 _ _ docs doc_idle <<<"$documents"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "while 4 sessions loop reranks of 50 candidates: p50 $rerank50 ms (p95 $rerank95), $(ratio "$rerank50" "$rerank_idle")×" \
    "the idle p50 just before ($rerank_idle ms); the server computed $reranks texts meanwhile (queries' and pairs)"
echo "while 2 sessions loop embed_document of 20,000 tokens: p50 $doc50 ms (p95 $doc95), $(ratio "$doc50" "$doc_idle")×" \
    "the idle p50 just before ($doc_idle ms); the server computed $docs texts meanwhile (queries' and chunks)"
