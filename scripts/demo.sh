#!/usr/bin/env bash
# Installs what qwen_embed needs (scripts/install-deps.sh), builds and installs the extension into the distribution's
# PostgreSQL (15 on Debian 12, 17 on Debian 13), starts a throw-away cluster of its own in a temporary directory (Unix
# socket only, the bundled random-weight test model preloaded) and runs the examples in sql/demo.sql. The cluster is removed at the end; with
# --keep it stays running in /var/tmp/qwen_embed-demo and the command to connect to it is printed. The machine's own
# PostgreSQL clusters are not touched. The bundled model has random weights: the numbers show the mechanics, not
# embedding quality (see the README for the real Qwen3-Embedding-0.6B weights).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH=$HOME/.cargo/bin:$PATH # where rustup puts cargo on a machine that had none
source scripts/cluster.sh
install_extension --release
if [ "${1:-}" = --keep ]; then
    dir=/var/tmp/qwen_embed-demo
    [ ! -e "$dir/data/postmaster.pid" ] || as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m fast stop >/dev/null || true
    $SUDO rm -rf "$dir"
    mkdir -p "$dir"
    cp -r tests/fixtures/tiny-qwen3 "$dir/model"
    cp -rL tests/fixtures/tiny-qwen3-reranker "$dir/reranker"
    chmod -R a+rX "$dir"
    model=$dir/model reranker=$dir/reranker
else
    model=$(install_model tests/fixtures/tiny-qwen3 tiny-qwen3)
    reranker=$(install_model tests/fixtures/tiny-qwen3-reranker tiny-qwen3-reranker)
    dir=$(scratch_dir)
fi
cluster_new "$dir/cluster" "shared_preload_libraries = 'qwen_embed'" "qwen_embed.model_path = '$model'" \
    "qwen_embed.reranker_path = '$reranker'"
pg -q -c "CREATE DATABASE qwen_embed_demo"
PGDATABASE=qwen_embed_demo pg -e -f - <sql/demo.sql
if [ "${1:-}" = --keep ]; then
    QWEN_EMBED_CLUSTERS=() # leave it running
    echo
    echo "The demo cluster is running. Connect:  $SUDO runuser -u postgres -- psql -h $dir/cluster -d qwen_embed_demo"
    echo "Stop and remove it:  $SUDO runuser -u postgres -- $PG_BIN/pg_ctl -D $dir/cluster/data stop && $SUDO rm -rf $dir"
fi
