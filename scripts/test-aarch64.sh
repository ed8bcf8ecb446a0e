#!/usr/bin/env bash
# The model core on aarch64 (Graviton-class servers): cross-built for aarch64-unknown-linux-gnu and its tests run under
# qemu-user, on this x86-64 machine. Installs Debian's gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user and
# the Rust target (rustup target add). On aarch64 the linear layers run on candle's f32 matmul (`precision.rs`:
# kernel "candle"), which the reference test holds to transformers like every other kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
packages=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q "${missing[@]}"
fi
rustup target add aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
cargo test -p qwen_embed_model --target aarch64-unknown-linux-gnu -- --nocapture
