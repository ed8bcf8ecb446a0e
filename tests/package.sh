#!/usr/bin/env bash
# The Debian package (scripts/package.sh) installs and works on its own: the extension files an earlier
# `cargo pgrx install` left are removed, the package is installed with dpkg, and a throw-away cluster (qwen_embed
# preloaded, the bundled test model and reranker) creates the extension, embeds and reranks.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
deb=$(bash scripts/package.sh)
echo "built $deb ($(du -h "$deb" | cut -f1))"
name=$(dpkg-deb -f "$deb" Package)
$SUDO rm -f "$("$PG_CONFIG" --pkglibdir)/qwen_embed.so" "$("$PG_CONFIG" --sharedir)"/extension/qwen_embed*
$SUDO dpkg -i "$deb" >/dev/null
dpkg -L "$name" | grep -q '/qwen_embed.so$' || { echo "the package has no library" >&2; exit 1; }
test_cluster package
got=$(pg -q -At -c "CREATE EXTENSION qwen_embed CASCADE" \
    -c "SELECT vector_dims(embed('from the package')), rerank_score('q', 'd') BETWEEN 0 AND 1,
               (SELECT value FROM qwen_embed.info() WHERE key = 'route')")
[ "$got" = "64|t|server" ] || { echo "package smoke test: got '$got'" >&2; exit 1; }
echo "ok: $name installed with dpkg; CREATE EXTENSION, embed (through the model server) and rerank_score work"
