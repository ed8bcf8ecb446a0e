#!/usr/bin/env bash
# The Debian package (scripts/package.sh) installs and works on its own: the extension files an earlier
# `cargo pgrx install` left are removed, the package is installed with dpkg, and a throw-away cluster (qwen_embed
# preloaded, the bundled test model and reranker) creates the extension, embeds and reranks, and updates a database
# made by 0.1.0 with the upgrade script the package ships.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
deb=$(bash scripts/package.sh)
echo "built $deb ($(du -h "$deb" | cut -f1))"
# Its dependencies: this PostgreSQL, the distribution's oneDNN runtime (2.x on Debian 12, 3.x on Debian 13) and, where
# the distribution packages pgvector, that package (dpkg -i below fails if any is not installed).
depends=$(dpkg-deb -f "$deb" Depends)
echo "Depends: $depends"
for want in "postgresql-$PG_VERSION" libdnnl libgomp1 $PG_PGVECTOR_PACKAGE; do
    [[ ", $depends" == *", $want"* ]] || { echo "the package does not depend on $want" >&2; exit 1; }
done
name=$(dpkg-deb -f "$deb" Package)
$SUDO rm -f "$("$PG_CONFIG" --pkglibdir)/qwen_embed.so" "$("$PG_CONFIG" --sharedir)"/extension/qwen_embed*
$SUDO dpkg -i "$deb" >/dev/null
dpkg -L "$name" | grep -q '/qwen_embed.so$' || { echo "the package has no library" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
for f in qwen_embed.control "qwen_embed--$version.sql" "qwen_embed--0.1.0--$version.sql"; do
    dpkg -L "$name" | grep -q "/extension/$f\$" || { echo "the package does not ship $f" >&2; exit 1; }
done
test_cluster package
got=$(pg -q -At -c "CREATE EXTENSION qwen_embed CASCADE" \
    -c "SELECT vector_dims(embed('from the package')), rerank_score('q', 'd') BETWEEN 0 AND 1,
               (SELECT value FROM qwen_embed.info() WHERE key = 'route')")
[ "$got" = "64|t|server" ] || { echo "package smoke test: got '$got'" >&2; exit 1; }
# A database made by 0.1.0 (its install script from tests/fixtures/upgrade) updated by the package's upgrade script.
$SUDO install -m 644 tests/fixtures/upgrade/qwen_embed--0.1.0.sql "$("$PG_CONFIG" --sharedir)/extension/"
pg -q -c "CREATE DATABASE qwen_embed_package_upgrade"
got=$(pg -q -At -d qwen_embed_package_upgrade -c "CREATE EXTENSION qwen_embed VERSION '0.1.0' CASCADE" \
    -c "ALTER EXTENSION qwen_embed UPDATE" -c "SELECT extversion FROM pg_extension WHERE extname = 'qwen_embed'" \
    -c "SELECT vector_dims(embed('after the update'))")
$SUDO rm -f "$("$PG_CONFIG" --sharedir)/extension/qwen_embed--0.1.0.sql"
[ "$got" = "$(printf '%s\n64' "$version")" ] || { echo "ALTER EXTENSION UPDATE from 0.1.0 with the package: got '$got'" >&2; exit 1; }
echo "ok: $name installed with dpkg; CREATE EXTENSION, embed (through the model server) and rerank_score work;"
echo "    it ships the upgrade script, and ALTER EXTENSION UPDATE takes a 0.1.0 database to $version"
