#!/usr/bin/env bash
# Where PostgreSQL lives, sourced by every script that needs it. The distribution's own PostgreSQL is the default:
# 15 on Debian 12 (bookworm), 17 on Debian 13 (trixie), in /usr/lib/postgresql/VERSION. PG_VERSION picks another
# (13–18), built from source by scripts/postgres-from-source.sh into /opt/qwen_embed/postgresql-VERSION. PG_BIN, where
# given, overrides both: a PostgreSQL installed some other way.
#
# Also set here: DEBIAN_RELEASE (12, 13), PG_DEBIAN_VERSION (the distribution's PostgreSQL), PGVECTOR_PACKAGE, the
# distribution's pgvector package for it (Debian 13's postgresql-17-pgvector; empty on Debian 12, which has none, so
# scripts/pgvector.sh builds it from the pinned source), and PG_PGVECTOR_PACKAGE, that package where PG_VERSION is
# the distribution's (what its qwen_embed package depends on), else empty.
DEBIAN_RELEASE=$(. /etc/os-release 2>/dev/null && echo "${VERSION_ID:-}")
case $DEBIAN_RELEASE in
13) PG_DEBIAN_VERSION=17 PGVECTOR_PACKAGE=postgresql-17-pgvector ;;
*) PG_DEBIAN_VERSION=15 PGVECTOR_PACKAGE= ;;
esac
PG_VERSION=${PG_VERSION:-$PG_DEBIAN_VERSION}
if [ -z "${PG_BIN:-}" ]; then
    if [ "$PG_VERSION" = "$PG_DEBIAN_VERSION" ]; then
        PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
    else
        PG_BIN=/opt/qwen_embed/postgresql-$PG_VERSION/bin
    fi
fi
PG_CONFIG=$PG_BIN/pg_config
PG_PGVECTOR_PACKAGE=
[ "$PG_VERSION" != "$PG_DEBIAN_VERSION" ] || PG_PGVECTOR_PACKAGE=$PGVECTOR_PACKAGE
