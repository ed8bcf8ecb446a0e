#!/usr/bin/env bash
# Everything qwen_embed needs on a fresh Debian 12 (bookworm) machine: PostgreSQL 15 and its headers, pgvector 0.8.0
# (built from Debian trixie's source package: bookworm has no binary one), cargo-pgrx 0.18.1 and an unprivileged user
# for the pgrx test server (PostgreSQL refuses to run as root). Idempotent: steps already done are skipped.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
export PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}

packages=(postgresql-15 postgresql-server-dev-15 libclang-dev clang pkg-config sudo dpkg-dev make gcc g++)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q "${missing[@]}"
fi

if [ ! -f /usr/share/postgresql/15/extension/vector.control ]; then
    echo 'deb-src http://deb.debian.org/debian trixie main' | $SUDO tee /etc/apt/sources.list.d/trixie-src.list >/dev/null
    $SUDO apt-get update -q
    build=$(mktemp -d)
    (cd "$build" && apt-get source -q pgvector && cd pgvector-0.8.0 &&
        make -s PG_CONFIG=$PG_CONFIG && $SUDO make -s PG_CONFIG=$PG_CONFIG install)
    rm -rf "$build"
fi

if ! cargo pgrx --version 2>/dev/null | grep -qx 'cargo-pgrx 0.18.1'; then
    cargo install cargo-pgrx --version 0.18.1 --locked
fi
grep -qs "pg15" "$PGRX_HOME/config.toml" || cargo pgrx init --pg15 $PG_CONFIG

id pgrxtest >/dev/null 2>&1 || $SUDO useradd --create-home pgrxtest
