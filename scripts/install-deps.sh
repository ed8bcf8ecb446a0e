#!/usr/bin/env bash
# Everything qwen_embed needs on a fresh Debian 12 (bookworm) or Debian 13 (trixie) machine, as root or a sudoer.
# Idempotent: steps already done are skipped. What it installs and changes, and nothing else:
# - Debian packages: the distribution's PostgreSQL (15 on Debian 12, 17 on Debian 13: scripts/postgres.sh) server and
#   headers, clang/libclang (bindgen), build tools, sudo, python3, curl, and oneDNN (libdnnl-dev, 2.6 on Debian 12 and
#   3.7 on Debian 13: the linear layers on CPUs with bf16 instructions).
#   Installing postgresql-N creates Debian's default cluster N/main and the `postgres` OS user; nothing here starts,
#   stops or configures that cluster.
# - pgvector for it: Debian 13's package (postgresql-17-pgvector); on Debian 12, which has none, built from its pinned
#   upstream tarball (scripts/pgvector.sh).
# - With another PG_VERSION (13–18): that PostgreSQL and pgvector built from source into
#   /opt/qwen_embed/postgresql-$PG_VERSION (scripts/postgres-from-source.sh), and bison and flex for it.
# - Rust $RUST_VERSION through rustup (in ~/.cargo and ~/.rustup) when cargo is missing, and cargo-pgrx 0.18.1.
# - $PGRX_HOME/config.toml (cargo pgrx init, pointed at each PostgreSQL set up here) and an OS user `pgrxtest` for
#   the pgrx test server (PostgreSQL refuses to run as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
source "$(dirname "$0")/postgres.sh"
RUST_VERSION=1.95.0 # also in rust-toolchain.toml
export PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}

packages=(postgresql-$PG_DEBIAN_VERSION postgresql-server-dev-$PG_DEBIAN_VERSION libclang-dev clang pkg-config
    sudo dpkg-dev make gcc g++ python3 curl ca-certificates libdnnl-dev $PGVECTOR_PACKAGE)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q "${missing[@]}"
fi

[ -n "$PGVECTOR_PACKAGE" ] || bash "$(dirname "$0")/pgvector.sh" "/usr/lib/postgresql/$PG_DEBIAN_VERSION/bin/pg_config"
[ -x "$PG_CONFIG" ] || bash "$(dirname "$0")/postgres-from-source.sh" "$PG_VERSION" >/dev/null

if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] ||
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
        sh -s -- -y --profile minimal --default-toolchain "$RUST_VERSION" -c rustfmt -c clippy
    export PATH=$HOME/.cargo/bin:$PATH
fi

if ! cargo pgrx --version 2>/dev/null | grep -qx 'cargo-pgrx 0.18.1'; then
    cargo install cargo-pgrx --version 0.18.1 --locked
fi
# Every pgrx build checks every pg_config that config.toml names: drop the versions no longer there (a source build
# removed since), then add or replace this one (`cargo pgrx init` merges it into the file).
config=$PGRX_HOME/config.toml
while read -r key _ path; do
    path=${path//\"/}
    [ -x "$path" ] || sed -i "/^$key = /d" "$config"
done < <(grep -s '^pg1[0-9] = ' "$config")
grep -qs "^pg$PG_VERSION = \"$PG_CONFIG\"" "$config" || cargo pgrx init "--pg$PG_VERSION" "$PG_CONFIG"

id pgrxtest >/dev/null 2>&1 || $SUDO useradd --create-home pgrxtest
