#!/usr/bin/env bash
# pgvector built from its pinned upstream tarball and installed into the PostgreSQL that PG_CONFIG names: Debian 12's
# own PostgreSQL 15 (scripts/install-deps.sh) and the versions built from source (scripts/postgres-from-source.sh)
# get the same release. Idempotent: an installation of this release is kept.
#
#     bash scripts/pgvector.sh /usr/lib/postgresql/15/bin/pg_config
#
# The tarball is the pristine upstream one that Debian's source package carries (`*.orig.tar.gz`, from Debian's pool,
# which this project's machines reach where github.com is not), pinned by URL and SHA-256. 0.8.2 builds for
# PostgreSQL 13 to 18. To move to a newer release, change the lines below.
set -euo pipefail
pg_config=${1:?usage: pgvector.sh PG_CONFIG}
version=0.8.2
url=http://deb.debian.org/debian/pool/main/p/pgvector/pgvector_$version.orig.tar.gz
sha256=69f4019389af05dc1c9548deb8628e62878e6e207c03907f2b8af2016472cdaa
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
log() { echo "pgvector: $*" >&2; }

control=$("$pg_config" --sharedir)/extension/vector.control
if grep -qx "default_version = '$version'" "$control" 2>/dev/null; then
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -sSf -o "$work/pgvector.tar.gz" "$url"
echo "$sha256  $work/pgvector.tar.gz" | sha256sum --quiet -c
mkdir "$work/src" && tar -xzf "$work/pgvector.tar.gz" -C "$work/src" --strip-components=1
log "building $version for $("$pg_config" --version)"
# Built as the caller, installed as root: the build needs no privilege.
make -s -C "$work/src" PG_CONFIG="$pg_config" >/dev/null
$SUDO make -s -C "$work/src" PG_CONFIG="$pg_config" install >/dev/null
