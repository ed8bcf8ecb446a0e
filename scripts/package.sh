#!/usr/bin/env bash
# Builds a Debian package of qwen_embed for PostgreSQL $PG_VERSION (default 15) from `cargo pgrx package` (a release
# build): target/deb/postgresql-<v>-qwen-embed_<version>_<arch>.deb, which installs the library and the SQL files into
# PostgreSQL's directories on a machine without Rust. pgvector must be installed too (Debian 12 has no package of it;
# scripts/install-deps.sh builds it from Debian's source package).
#
#     bash scripts/package.sh            # prints the .deb's path
#     dpkg -i target/deb/postgresql-15-qwen-embed_0.2.0_amd64.deb
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
name=postgresql-$PG_VERSION-qwen-embed

cargo pgrx package --pg-config "$PG_CONFIG" >&2
staged=target/release/qwen_embed-pg$PG_VERSION
[ -f "$staged$("$PG_CONFIG" --pkglibdir)/qwen_embed.so" ] || { echo "cargo pgrx package left no library" >&2; exit 1; }

root=target/deb/$name
rm -rf "$root"
mkdir -p "$root/DEBIAN"
cp -r "$staged"/. "$root"/
# The shared libraries the extension links (Rust links its own code statically).
libs=$(ldd "$root$("$PG_CONFIG" --pkglibdir)/qwen_embed.so" | awk '/=>/ {print $1}' | sort -u | tr '\n' ' ')
cat >"$root/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: qwen_embed developers <qwen_embed@localhost>
Depends: postgresql-$PG_VERSION, libc6, libgcc-s1, libdnnl2, libgomp1
Section: database
Priority: optional
Description: Qwen3-Embedding text embeddings and Qwen3-Reranker scores inside PostgreSQL $PG_VERSION
 qwen_embed runs Qwen3-Embedding (and Qwen3-Reranker) models from a local directory in PostgreSQL and returns
 pgvector vectors. Needs the pgvector extension (CREATE EXTENSION qwen_embed CASCADE installs it in the database).
 Links: $libs
EOF
mkdir -p target/deb
deb=target/deb/${name}_${version}_$arch.deb
dpkg-deb --root-owner-group --build "$root" "$deb" >&2
echo "$deb"
