#!/usr/bin/env bash
# PostgreSQL VERSION (13–18) and pgvector built from upstream sources into /opt/qwen_embed/postgresql-VERSION, for the
# versions the distribution has no package of (all but 15 on Debian 12, all but 17 on Debian 13). Idempotent: a finished build is kept. Prints the bin directory.
#
#     bash scripts/postgres-from-source.sh 18      # /opt/qwen_embed/postgresql-18/bin
#
# The sources are the pristine upstream tarballs that Debian's and Ubuntu's source packages carry (`*.orig.tar.*`),
# the only archives of PostgreSQL that this project's machines reach, each pinned by URL and SHA-256 so that a run
# builds what the last one built: 13.23 from Debian 11's security archive, 14.24 from Ubuntu 22.04's updates, 15.19
# from Debian 12's security archive (15.20, Debian 12's current package, is not served as a tarball), 16.15
# from Ubuntu 24.04's updates, 18.6 from Debian unstable (their hashes match those in the archives' signed Sources
# indexes), 17.11 from Debian's pool (its hash from that package's .dsc; Debian 13's index names 17.12, which the
# archive does not serve). pgvector comes from scripts/pgvector.sh, as for Debian 12's own PostgreSQL 15. To move to a
# newer minor release, change its line below.
#
# The build has no optional libraries (no ICU, readline, zlib, OpenSSL, LLVM): the tests need the server, its headers,
# pg_regress, pgbench and dblink. Besides the prefix, only Debian's bison and flex are installed (PostgreSQL 17 and
# later need them to build); Debian's own PostgreSQL and its `psql` wrapper do not see the prefix.
set -euo pipefail
version=${1:?usage: postgres-from-source.sh VERSION}
unset PG_BIN
PG_VERSION=$version source "$(dirname "$0")/postgres.sh"
if [ "$version" = "$PG_DEBIAN_VERSION" ]; then
    log "PostgreSQL $version is this distribution's own package (scripts/install-deps.sh installs it)"
    exit 2
fi
prefix=$(dirname "$PG_BIN")
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
log() { echo "postgres-from-source: $*" >&2; }

if [ -f "$prefix/.complete" ]; then
    echo "$prefix/bin"
    exit 0
fi

debian=http://deb.debian.org/debian
ubuntu=http://archive.ubuntu.com/ubuntu/pool/main/p
case $version in
13) source=(http://deb.debian.org/debian-security/pool/updates/main/p/postgresql-13/postgresql-13_13.23.orig.tar.bz2
    6ec3c82726af92b7dec873fa1cdf881eca92a4219787dfad05acb6b10e041fd6) ;;
14) source=("$ubuntu/postgresql-14/postgresql-14_14.24.orig.tar.gz"
    563d0b2a985411ed508d05d5b2d883d45abbe51ba5b5e43875ecf25f1ebf26f2) ;;
15) source=(http://deb.debian.org/debian-security/pool/updates/main/p/postgresql-15/postgresql-15_15.19.orig.tar.bz2
    e1a64a87a46b825b88c082e4518161a47aab53c45694964f8ba1df28f7859f89) ;;
16) source=("$ubuntu/postgresql-16/postgresql-16_16.15.orig.tar.gz"
    4f200ca23dfb120ff9838f13ce06014aad1d3c432d16ee9f93ab2000c0eeef7b) ;;
17) source=("$debian/pool/main/p/postgresql-17/postgresql-17_17.11.orig.tar.bz2"
    dd27f2b3c59e73ed14aa3324901242bf69a032a6347805f274e6260322d42979) ;;
18) source=("$debian/pool/main/p/postgresql-18/postgresql-18_18.6.orig.tar.bz2"
    555610c24d53e4316da5b7d3fc25c279d96856d5e0e23ee308c328c5fa881d9f) ;;
*) log "no source for PostgreSQL $version here (13–18)"; exit 2 ;;
esac

missing=()
for p in bison flex perl make gcc curl; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    { $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; } >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# unpack NAME URL SHA256: the tarball, checked, unpacked in $work/NAME.
unpack() {
    curl -sSf -o "$work/$1.tar" "$2"
    echo "$3  $work/$1.tar" | sha256sum --quiet -c
    mkdir -p "$work/$1" && tar -xf "$work/$1.tar" -C "$work/$1" --strip-components=1
}

unpack postgresql "${source[@]}"
log "building PostgreSQL $(sed -n "s/^PACKAGE_VERSION='\(.*\)'$/\1/p" "$work/postgresql/configure") into $prefix"
(
    cd "$work/postgresql"
    ./configure --prefix="$prefix" --without-icu --without-readline --without-zlib >/dev/null
    make -s -j"$(nproc)" >/dev/null
    $SUDO make -s install >/dev/null
    $SUDO make -s -C contrib/dblink install >/dev/null
)
bash "$(dirname "$0")/pgvector.sh" "$prefix/bin/pg_config"
$SUDO touch "$prefix/.complete"
echo "$prefix/bin"
