#!/usr/bin/env bash
# Helpers shared by demo.sh and test.sh: the system PostgreSQL 15 cluster and a model directory it can read.
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)

start_cluster() {
    $SUDO pg_ctlcluster 15 main status >/dev/null 2>&1 || $SUDO pg_ctlcluster 15 main start
}

# Installs the extension (extra arguments go to cargo pgrx install) with the cluster stopped: a preloaded library must
# not be overwritten under a running server.
install_extension() {
    $SUDO pg_ctlcluster 15 main stop 2>/dev/null || true
    cargo pgrx install --pg-config $PG_CONFIG ${SUDO:+--sudo} "$@"
}

# Points the cluster at a model with a dtype, preloads qwen_embed (so qwen_embed.stats sees every backend), restarts.
configure_cluster() {
    start_cluster
    pg -q -c "LOAD 'qwen_embed'" -c "ALTER SYSTEM SET qwen_embed.model_path = '$1'" \
        -c "ALTER SYSTEM SET qwen_embed.dtype = '$2'" -c "ALTER SYSTEM SET shared_preload_libraries = 'qwen_embed'"
    $SUDO pg_ctlcluster 15 main restart
}

# psql as the postgres superuser; extra arguments go to psql.
pg() {
    $SUDO runuser -u postgres -- psql -X -v ON_ERROR_STOP=1 "$@"
}

# Copies a model directory where the server's user can read it; prints the destination.
install_model() {
    local src=$1 name=$2 dst=/var/lib/postgresql/qwen_embed_models/$2
    $SUDO mkdir -p "$dst"
    $SUDO cp -r "$src"/. "$dst"/
    $SUDO chown -R postgres:postgres "$(dirname "$dst")"
    $SUDO chmod -R a+rX "$(dirname "$dst")"
    echo "$dst"
}
