#!/usr/bin/env bash
# Build and install qwen_embed, start PostgreSQL 15, point it at the bundled test model and run the examples in
# sql/demo.sql. The bundled model has random weights: the numbers show the mechanics, not embedding quality (see the
# README for the real Qwen3-Embedding-0.6B weights).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
source scripts/cluster.sh
install_extension --release
model=$(install_model tests/fixtures/tiny-qwen3 tiny-qwen3)
configure_cluster "$model" auto
pg -c "DROP DATABASE IF EXISTS qwen_embed_demo" -c "CREATE DATABASE qwen_embed_demo"
pg -d qwen_embed_demo -e -f - <sql/demo.sql
