#!/usr/bin/env bash
# Build and install qwen_embed, start PostgreSQL 15, point it at the bundled test model and run the examples in
# sql/demo.sql. The bundled model has random weights: the numbers show the mechanics, not embedding quality (see the
# README for the real Qwen3-Embedding-0.6B weights).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
source scripts/cluster.sh
cargo pgrx install --release --pg-config $PG_CONFIG ${SUDO:+--sudo}
start_cluster
model=$(install_model tests/fixtures/tiny-qwen3 tiny-qwen3)
pg -c "LOAD 'qwen_embed'" -c "ALTER SYSTEM SET qwen_embed.model_path = '$model'" \
    -c "ALTER SYSTEM RESET qwen_embed.dtype" -c "SELECT pg_reload_conf()"
pg -c "DROP DATABASE IF EXISTS qwen_embed_demo" -c "CREATE DATABASE qwen_embed_demo"
pg -d qwen_embed_demo -e -f - <sql/demo.sql
