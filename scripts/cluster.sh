#!/usr/bin/env bash
# Throw-away PostgreSQL clusters for the tests and the demo, sourced by the scripts that need one.
#
# A cluster is a directory made here (initdb as the `postgres` OS user: PostgreSQL refuses to run as root) whose server
# listens only on a Unix socket inside that directory (listen_addresses = ''), so it can clash with no other server and
# no other OS user can reach it. It is stopped and removed when the script that made it exits. The machine's own
# PostgreSQL clusters are never touched: nothing here calls pg_ctlcluster, ALTER SYSTEM or a service manager.
#
#     source scripts/cluster.sh
#     cluster_new "$(scratch_dir)/main" "shared_preload_libraries = 'qwen_embed'"   # starts it; exports PGHOST ...
#     pg -c 'SELECT 1'                                                            # psql as the cluster's superuser
source "$(dirname "${BASH_SOURCE[0]}")/postgres.sh"
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
QWEN_EMBED_CLUSTERS=()

# Runs a command as the postgres OS user, with the cluster's connection variables (psql's \! children inherit them).
as_postgres() {
    local vars=(PGUSER=postgres "PGDATABASE=${PGDATABASE:-postgres}")
    [ -z "${PGHOST:-}" ] || vars+=("PGHOST=$PGHOST" "PGPORT=$PGPORT")
    $SUDO runuser -u postgres -- env "${vars[@]}" "$@"
}

# psql as the cluster's superuser; extra arguments go to psql.
pg() {
    as_postgres psql -X -v ON_ERROR_STOP=1 "$@"
}

# Which run of the cluster's server processes answers: the checkpointer's pid. A crash restart (a postmaster child
# killed by a signal) starts every server process again, so it changes; pg_postmaster_start_time() does not.
cluster_incarnation() {
    pg -At -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
}

# This script's scratch directory: under /tmp, enterable by the postgres user, removed (with the clusters made here
# stopped) when the script that sourced this file exits.
scratch_dir() {
    echo "$QWEN_EMBED_SCRATCH"
}

# cluster_new DIR [postgresql.conf line ...]: initdb, configure and start a cluster in DIR; exports PGHOST and PGPORT.
# The port only names the socket file (no TCP), so the default one never clashes.
cluster_new() {
    local dir=$1
    shift
    $SUDO install -d -o postgres -g postgres -m 700 "$dir"
    as_postgres "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    printf '%s\n' "listen_addresses = ''" "unix_socket_directories = '$dir'" "port = 5432" "fsync = off" "$@" |
        as_postgres tee -a "$dir/data/postgresql.conf" >/dev/null
    export PGHOST=$dir PGPORT=5432
    QWEN_EMBED_CLUSTERS+=("$dir")
    cluster_start "$dir"
}

# cluster_start DIR / cluster_stop DIR [MODE]: the server of a cluster made by cluster_new.
# The server runs without RUST_BACKTRACE, as a production server would: with it, every ERROR raised from Rust code
# symbolises a backtrace first (hundreds of milliseconds in a debug build).
cluster_start() {
    as_postgres env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" -D "$1/data" -l "$1/server.log" -w -t 120 start >/dev/null ||
        { tail -n 20 "$1/server.log" >&2; return 1; }
}
cluster_stop() {
    as_postgres "$PG_BIN/pg_ctl" -D "$1/data" -m "${2:-fast}" -w stop >/dev/null
}

# The server's log, for a failing test to show.
cluster_log() {
    $SUDO tail -n "${2:-40}" "$1/server.log"
}

cluster_cleanup() {
    local dir
    for dir in "${QWEN_EMBED_CLUSTERS[@]}"; do
        as_postgres "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    done
    $SUDO rm -rf "$QWEN_EMBED_SCRATCH"
}

# install_model SRC NAME: copies a model directory into the scratch directory, readable by the server; prints where.
install_model() {
    local dst
    dst=$(scratch_dir)/models/$2
    mkdir -p "$dst"
    cp -rL "$1"/. "$dst"/ # -L: the reranker fixture's tokenizer.json is a link to the embedder's
    chmod -R a+rX "$(dirname "$dst")"
    echo "$dst"
}

# install_extension [cargo pgrx install args]: builds qwen_embed and copies it into this PostgreSQL's library and
# extension directories (the only place PostgreSQL loads extensions from).
install_extension() {
    cargo pgrx install --pg-config "$PG_CONFIG" ${SUDO:+--sudo} "$@"
}

# test_cluster [NAME [postgresql.conf line ...]]: a cluster with the extension preloaded and pointed at the bundled test model and reranker (and
# copies of them beside, for tests that switch models), plus QWEN_EMBED_TEST_SETTING's line where set (tests/gpu.sh
# runs the SQL tests with "qwen_embed.device = 'cuda'").
# f32: results compare with transformers' fp32 reference to 1e-4 on any CPU.
test_cluster() {
    local model reranker
    model=$(install_model tests/fixtures/tiny-qwen3 tiny-qwen3)
    install_model tests/fixtures/tiny-qwen3 tiny-qwen3-copy >/dev/null
    reranker=$(install_model tests/fixtures/tiny-qwen3-reranker tiny-qwen3-reranker)
    install_model tests/fixtures/tiny-qwen3-reranker tiny-qwen3-reranker-copy >/dev/null
    cluster_new "$(scratch_dir)/${1:-main}" "shared_preload_libraries = 'qwen_embed'" \
        "qwen_embed.model_path = '$model'" "qwen_embed.reranker_path = '$reranker'" "qwen_embed.dtype = 'f32'" "${@:2}" \
        ${QWEN_EMBED_TEST_SETTING:+"$QWEN_EMBED_TEST_SETTING"}
    export QWEN_EMBED_MODEL=$model
}

QWEN_EMBED_SCRATCH=$(mktemp -d /tmp/qwen_embed.XXXXXX)
chmod 755 "$QWEN_EMBED_SCRATCH"
trap cluster_cleanup EXIT
