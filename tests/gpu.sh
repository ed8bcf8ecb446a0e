#!/usr/bin/env bash
# The GPU paths, where this machine has an NVIDIA GPU and the CUDA compiler: the model core on cuda:0 (the encoder
# against transformers' reference, the fused attention against the CPU kernel, CUDA's failure paths:
# crates/qwen_embed_model/tests) and the SQL tests with the extension built with CUDA and every test cluster's
# `qwen_embed.device = 'cuda'`. Elsewhere (the CPU CI) it says SKIPPED and why, so the test command's summary shows
# that the GPU paths were not run. Needs what scripts/test.sh installs; leaves the CPU build installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$HOME/.cargo/bin:$PATH

if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIPPED GPU tests (tests/gpu.sh): no NVIDIA GPU here (nvidia-smi -L fails)"
    exit 0
fi
if ! command -v nvcc >/dev/null; then
    echo "SKIPPED GPU tests (tests/gpu.sh): a GPU but no CUDA compiler (nvcc) to build the CUDA kernels with"
    exit 0
fi
nvidia-smi -L

echo "-- the model core on cuda:0"
QWEN_EMBED_TEST_DEVICE=cuda:0 cargo test -p qwen_embed_model --features cuda,onednn --release -- --nocapture

echo "-- the SQL tests with qwen_embed.device = 'cuda'"
source scripts/postgres.sh
source scripts/cluster.sh
install_extension --release --features cuda
trap 'install_extension --release >/dev/null' EXIT
QWEN_EMBED_TEST_SETTING="qwen_embed.device = 'cuda'" bash tests/run_sql_tests.sh
