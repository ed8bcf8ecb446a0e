#!/usr/bin/env bash
# PostgreSQL VERSION (13–18) and pgvector built from upstream sources into /opt/qwen_embed/postgresql-VERSION, for the
# versions Debian 12 has no package of. Idempotent: a finished build is kept. Prints the bin directory.
#
#     bash scripts/postgres-from-source.sh 18      # /opt/qwen_embed/postgresql-18/bin
#
# The sources are the pristine upstream tarballs (`*.orig.tar.*`) inside Debian's and Ubuntu's source packages, the
# only archives of PostgreSQL that this project's machines can reach: 13 from Debian 11, 14 from Ubuntu 22.04, 16 from
# Ubuntu 24.04, 17 from Debian 13, 18 from Debian unstable, fetched with a private apt configuration in a temporary
# directory (no source list is added to the system's apt). Ubuntu's archive is verified with Ubuntu's archive key
# from Debian's `ubuntu-keyring` package, unpacked there, not installed. pgvector is 0.8.2 (0.8.0, which Debian 12's
# PostgreSQL 15 gets, predates PostgreSQL 18): its upstream tarball from Debian's archive, pinned by SHA-256.
# The build has no optional libraries (no ICU, readline, zlib, OpenSSL, LLVM): the tests need the server, its headers,
# pg_regress, pgbench and dblink. Besides the prefix, only Debian's bison and flex are installed (PostgreSQL 17 and
# later need them to build); Debian's own PostgreSQL and its `psql` wrapper do not see the prefix.
set -euo pipefail
version=${1:?usage: postgres-from-source.sh VERSION}
unset PG_BIN
PG_VERSION=$version source "$(dirname "$0")/postgres.sh"
prefix=$(dirname "$PG_BIN")
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
log() { echo "postgres-from-source: $*" >&2; }

if [ -f "$prefix/.complete" ]; then
    echo "$prefix/bin"
    exit 0
fi

debian=http://deb.debian.org/debian
ubuntu="http://archive.ubuntu.com/ubuntu"
case $version in
13) suites=("$debian bullseye" "http://deb.debian.org/debian-security bullseye-security") ;;
14) suites=("$ubuntu jammy" "$ubuntu jammy-updates" "$ubuntu jammy-security") ;;
16) suites=("$ubuntu noble" "$ubuntu noble-updates" "$ubuntu noble-security") ;;
17) suites=("$debian trixie" "http://deb.debian.org/debian-security trixie-security") ;;
18) suites=("$debian sid") ;;
*) log "no source for PostgreSQL $version here (13, 14, 16, 17, 18; 15 is Debian 12's own package)"; exit 2 ;;
esac
vector_url=$debian/pool/main/p/pgvector/pgvector_0.8.2.orig.tar.gz
vector_sha256=69f4019389af05dc1c9548deb8628e62878e6e207c03907f2b8af2016472cdaa

missing=()
for p in bison flex perl make gcc dpkg-dev; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    { $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; } >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/keys"
apt_private() {
    apt-get -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent \
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o Dir::State::status=/dev/null \
        -o APT::Sandbox::User=root -q "$@"
}
# fetch PACKAGE SUITE...: the upstream tarball of the newest PACKAGE in those suites, unpacked in $work/PACKAGE.
fetch() {
    local package=$1 keyring=/usr/share/keyrings/debian-archive-keyring.gpg suite
    shift
    : >"$work/sources.list"
    for suite in "$@"; do
        case $suite in *ubuntu*) keyring=$work/keys/usr/share/keyrings/ubuntu-archive-keyring.gpg ;; esac
        echo "deb-src [signed-by=$keyring] ${suite% *} ${suite##* } main" >>"$work/sources.list"
    done
    apt_private update >/dev/null
    (cd "$work" && apt_private source --download-only "$package" >/dev/null)
    mkdir -p "$work/$package"
    tar -xf "$(ls "$work"/"$package"_*.orig.tar.*)" -C "$work/$package" --strip-components=1
}
if [ "${suites[0]#*ubuntu}" != "${suites[0]}" ]; then
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $debian trixie main" >"$work/sources.list"
    apt_private update >/dev/null
    (cd "$work" && apt_private download ubuntu-keyring >/dev/null && dpkg-deb -x ubuntu-keyring_*.deb keys)
fi

fetch "postgresql-$version" "${suites[@]}"
log "building $(sed -n 's/^PACKAGE_VERSION=.\(.*\).$/\1/p' "$work/postgresql-$version/configure") into $prefix"
(
    cd "$work/postgresql-$version"
    ./configure --prefix="$prefix" --without-icu --without-readline --without-zlib >/dev/null
    make -s -j"$(nproc)" >/dev/null
    $SUDO make -s install >/dev/null
    $SUDO make -s -C contrib/dblink install >/dev/null
)
curl -sSf -o "$work/pgvector.tar.gz" "$vector_url"
echo "$vector_sha256  $work/pgvector.tar.gz" | sha256sum --quiet -c
mkdir -p "$work/pgvector" && tar -xzf "$work/pgvector.tar.gz" -C "$work/pgvector" --strip-components=1
log "building pgvector $(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$work/pgvector/vector.control")"
(cd "$work/pgvector" && make -s PG_CONFIG="$prefix/bin/pg_config" >/dev/null &&
    $SUDO make -s PG_CONFIG="$prefix/bin/pg_config" install >/dev/null)
$SUDO touch "$prefix/.complete"
echo "$prefix/bin"
