#!/usr/bin/env bash
# Where PostgreSQL lives, sourced by every script that needs it. PG_VERSION (default 15) picks the version: 15 is
# Debian 12's own package (/usr/lib/postgresql/15), the others (13, 14, 16, 17, 18) are the source builds of
# scripts/postgres-from-source.sh (/opt/qwen_embed/postgresql-VERSION). PG_BIN, where given, overrides both: a
# PostgreSQL installed some other way.
PG_VERSION=${PG_VERSION:-15}
PG_DEBIAN_VERSION=15 # the one Debian 12 packages
if [ -z "${PG_BIN:-}" ]; then
    if [ "$PG_VERSION" = "$PG_DEBIAN_VERSION" ]; then
        PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
    else
        PG_BIN=/opt/qwen_embed/postgresql-$PG_VERSION/bin
    fi
fi
PG_CONFIG=$PG_BIN/pg_config
