#!/usr/bin/env bash
# Builds a Debian package of qwen_embed for one PostgreSQL version (the argument, else $PG_VERSION, else the
# distribution's: 15 on Debian 12, 17 on Debian 13) from `cargo pgrx package` (a release build):
# target/deb/postgresql-<v>-qwen-embed_<version>_<arch>.deb, which installs the library and the SQL files (the upgrade
# scripts too) into PostgreSQL's directories on a machine without Rust. It depends on `postgresql-<v>`, the shared
# libraries the library links as dpkg-shlibdeps names their packages (the distribution's oneDNN runtime: libdnnl2 on
# Debian 12, libdnnl3.6 on Debian 13), and the distribution's pgvector package where it has one (Debian 13's
# postgresql-17-pgvector; Debian 12 has none: scripts/install-deps.sh builds pgvector from Debian's source package).
# For a version the distribution does not package the build is against the source build of
# scripts/postgres-from-source.sh; its files go to the same paths as the distribution's (PGDG's layout), and
# `postgresql-<v>` is PGDG's package name.
#
#     bash scripts/package.sh            # prints the .deb's path
#     bash scripts/package.sh 16         # for PostgreSQL 16 (installs it from source first if needed)
#     dpkg -i target/deb/postgresql-15-qwen-embed_0.2.0_amd64.deb
set -euo pipefail
cd "$(dirname "$0")/.."
[ -z "${1:-}" ] || export PG_VERSION=$1
source scripts/postgres.sh
[ -x "$PG_CONFIG" ] || PG_VERSION=$PG_VERSION bash scripts/install-deps.sh >&2
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
name=postgresql-$PG_VERSION-qwen-embed

cargo pgrx package --pg-config "$PG_CONFIG" >&2
staged=target/release/qwen_embed-pg$PG_VERSION
[ -f "$staged$("$PG_CONFIG" --pkglibdir)/qwen_embed.so" ] || { echo "cargo pgrx package left no library" >&2; exit 1; }

root=target/deb/$name
rm -rf "$root"
mkdir -p "$root/DEBIAN"
# The files go where Debian's and PGDG's postgresql-N put an extension's (/usr/lib/postgresql/N/lib,
# /usr/share/postgresql/N/extension), also when this build's PostgreSQL is a source build under /opt/qwen_embed.
pkglibdir=$("$PG_CONFIG" --pkglibdir) extdir=$("$PG_CONFIG" --sharedir)/extension
install -D -m 755 "$staged$pkglibdir/qwen_embed.so" "$root/usr/lib/postgresql/$PG_VERSION/lib/qwen_embed.so"
mkdir -p "$root/usr/share/postgresql/$PG_VERSION/extension"
cp "$staged$extdir"/qwen_embed* "$root/usr/share/postgresql/$PG_VERSION/extension/"
# The shared libraries the extension links (Rust links its own code statically), and their packages.
library=$root/usr/lib/postgresql/$PG_VERSION/lib/qwen_embed.so
libs=$(ldd "$library" | awk '/=>/ {print $1}' | sort -u | tr '\n' ' ')
shlibs=$(
    work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT && mkdir "$work/debian" && touch "$work/debian/control"
    cd "$work" && dpkg-shlibdeps -O -e "$OLDPWD/$library" 2>/dev/null | sed -n 's/^shlibs:Depends=//p'
)
[ -n "$shlibs" ] || { echo "dpkg-shlibdeps named no dependencies of $library" >&2; exit 1; }
depends="postgresql-$PG_VERSION, $shlibs${PG_PGVECTOR_PACKAGE:+, $PG_PGVECTOR_PACKAGE}"
cat >"$root/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: qwen_embed developers <qwen_embed@localhost>
Depends: $depends
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
