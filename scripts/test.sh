#!/usr/bin/env bash
# Every test: the model core against transformers' reference vectors and the model server (plain cargo test; the
# CPU kernel choice and the f32 paths again under each QWEN_EMBED_CPU_KERNEL cap below this CPU's level), the
# extension's pg_tests (cargo pgrx test), the SQL tests in tests/sql (transactions, rollback, settings across
# statements, the model server, as a client sees them) and the pg_regress tests in tests/regress
# (scripts/test-postgres.sh), the README's demo (scripts/demo.sh), then the fault, model-change, async, hot-standby
# and load tests (tests/faults.sh, tests/model_change.sh, tests/async.sh, tests/standby.sh, tests/load.sh), the
# Debian package (tests/package.sh: built, installed with dpkg, smoke-tested) and the GPU paths where there is a GPU
# (tests/gpu.sh, SKIPPED elsewhere), all on the distribution's PostgreSQL (15 on Debian 12, 17 on Debian 13);
# then the pg_tests, SQL and pg_regress tests again on PostgreSQL 18, built from source.
# Every server is a throw-away cluster made in a temporary directory and removed afterwards (scripts/cluster.sh); the
# machine's own PostgreSQL clusters are never reconfigured, restarted or connected to.
set -euo pipefail
cd "$(dirname "$0")/.."

all_tests() {
    # The fault, standby, load and package tests run on the distribution's own PostgreSQL.
    unset PG_VERSION PG_BIN
    source scripts/postgres.sh
    export PG_VERSION
    bash scripts/install-deps.sh
    export PATH=$HOME/.cargo/bin:$PATH # where rustup puts cargo on a machine that had none

    echo "== model core and model server (no PostgreSQL)"
    # With oneDNN (what the extension builds with), then the model core without it (what a build without libdnnl runs).
    cargo test -p qwen_embed_model -p qwen_embed_server --features qwen_embed_model/onednn -- --nocapture # kernels, SKIPPED
    cargo test -p qwen_embed_model --test reference -- --nocapture
    # What an older CPU runs, on this one: the level detection, the kernel each level's `auto` and `f32` take, oneDNN's
    # f32 brgemm and the f32 paths against transformers, under each cap below this CPU's level (QWEN_EMBED_CPU_KERNEL).
    for cap in avx512bf16 avx512 avx2 generic; do
        echo "-- capped at $cap"
        QWEN_EMBED_CPU_KERNEL=$cap cargo test -p qwen_embed_model --features onednn --lib --test reference -- \
            --nocapture cpu::tests precision::tests onednn::tests::f32_brgemm every_reference_case
    done

    bash scripts/test-postgres.sh "$PG_VERSION" # pg_tests, SQL tests, pg_regress tests; leaves the extension installed

    echo "== the README's demo command: sql/demo.sql on a cluster of its own, stopping at the first error"
    bash scripts/demo.sh

    echo "== faults: kill -9 of a backend and of the model server, a full queue, a model over the memory limit"
    bash tests/faults.sh

    echo "== the cluster's model changed under running sessions, a model the server cannot load, server = off"
    bash tests/model_change.sh

    echo "== async embedding: the queue, its worker, failures, modes, the upgrade from 0.1.0"
    bash tests/async.sh

    echo "== hot standby: a primary and a streaming replica, and a promotion"
    bash tests/standby.sh

    echo "== load: pgbench, 16 clients, 60 s"
    bash tests/load.sh 60 16

    echo "== package: the Debian package installed with dpkg, smoke-tested on a fresh cluster"
    bash tests/package.sh

    echo "== GPU: the model core on cuda:0 and the SQL tests with device = cuda, where this machine has an NVIDIA GPU"
    bash tests/gpu.sh

    echo "== the newest PostgreSQL: pg_tests, SQL tests and pg_regress tests on 18, built from source"
    bash scripts/test-postgres.sh 18
}

# The output is also logged, for the closing summary: the result, and every test that said SKIPPED (a check this
# machine cannot make, such as bf16 kernels on a CPU without bf16 instructions, or the GPU tests).
log=$(mktemp /tmp/qwen_embed-test-log.XXXXXX)
trap 'rm -f "$log"' EXIT
set +e # for the pipeline's status; inside it, the first failing step stops the tests
(set -e && all_tests) 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
skipped=$(grep -o "SKIPPED .*" "$log" | sort | uniq -c || true)
echo "== summary"
echo "SKIPPED: $(echo -n "$skipped" | grep -c . || true) test(s) could not run on this machine"
[ -z "$skipped" ] || echo "$skipped" | sed 's/^ */    /'
[ "$rc" -eq 0 ] && echo "RESULT: all tests passed" || echo "RESULT: FAILED (exit $rc)"
exit "$rc"
