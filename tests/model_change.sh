#!/usr/bin/env bash
# The cluster's model changed while sessions run, and a model the server cannot load.
#
# 1. ALTER SYSTEM SET qwen_embed.model_path + pg_reload_conf() replaces the server's model. A session that reads the
#    new setting before the supervisor has restarted the server waits for the new server: it never loads a private
#    copy of the model in its backend. The race is made certain by stopping the supervisor (SIGSTOP) across the reload.
# 2. A server that cannot load its model says `failed: <reason>` in server_info(), and every session gets that reason
#    as its ERROR, with its SQLSTATE and a hint, computed by nobody's backend.
# 3. qwen_embed.server = off stops the server and sessions compute in their backends; on starts it again.
# Runs on a throw-away cluster made here (scripts/cluster.sh); needs the extension installed (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
test_cluster model_change
db=qwen_embed_model_change
pg -q -c "CREATE DATABASE $db"
q() { pg -q -At -d $db "$@"; }
supervisor=""
fail() {
    [ -z "$supervisor" ] || $SUDO kill -CONT "$supervisor" 2>/dev/null || true
    echo "FAILED: $*" >&2
    cluster_log "$PGHOST" >&2
    exit 1
}
server_value() { q -c "SELECT value FROM qwen_embed.server_info() WHERE key = '$1'"; }
# wait_for_server KEY PATTERN: until server_info()'s KEY matches the extended regular expression PATTERN (30 s).
wait_for_server() {
    for _ in $(seq 300); do
        server_value "$1" | grep -Eq "$2" && return 0
        sleep 0.1
    done
    fail "server_info $1 is '$(server_value "$1")', expected /$2/"
}
# What a session sees after one embed(): its vector's dimensions, its route, a model loaded in its backend, the
# model the server runs; or its ERROR's SQLSTATE, message and hint.
session=(-c "SELECT vector_dims(embed('after the model change'))"
    -c "SELECT key || '=' || value FROM qwen_embed.info() WHERE key IN ('route', 'backend_model_path', 'model_path')")

q -c "CREATE EXTENSION qwen_embed CASCADE"
q -c "SELECT vector_dims(embed('the first model'))" >/dev/null
wait_for_server model_path 'tiny-qwen3$'
copy=$(scratch_dir)/models/tiny-qwen3-copy

echo "-- ALTER SYSTEM SET qwen_embed.model_path while the supervisor cannot act yet"
supervisor=$(ps -o ppid= -p "$(server_value pid)" | tr -d ' ') # the server is the supervisor's child
[ -n "$supervisor" ] || fail "no supervisor"
old_server=$(server_value pid)
$SUDO kill -STOP "$supervisor"
q -c "ALTER SYSTEM SET qwen_embed.model_path = '$copy'" -c "SELECT pg_reload_conf()" >/dev/null
out=$(scratch_dir)/after_change.out
(q -v ON_ERROR_STOP=0 -c "SELECT pg_sleep(0.2)" "${session[@]}" -c '\echo sqlstate=:LAST_ERROR_SQLSTATE' \
    >"$out" 2>&1 || true) &
waiter=$!
sleep 2
[ "$(q -c "SHOW qwen_embed.model_path")" = "$copy" ] || fail "a new session does not see the new model_path"
kill -0 $waiter 2>/dev/null || { wait $waiter; fail "the session did not wait for the new server: $(cat "$out")"; }
$SUDO kill -CONT "$supervisor"
supervisor=""
wait $waiter
grep -qx "sqlstate=00000" "$out" || fail "the session got an ERROR: $(cat "$out")"
grep -qx "64" "$out" || fail "no vector: $(cat "$out")"
grep -qx "route=server" "$out" || fail "the session computed in its backend: $(cat "$out")"
grep -qx "backend_model_path=(none)" "$out" || fail "the session loaded a private copy: $(cat "$out")"
grep -qx "model_path=$copy" "$out" || fail "the session was served by the old model: $(cat "$out")"
wait_for_server model_path "tiny-qwen3-copy$"
[ "$(server_value pid)" != "$old_server" ] || fail "the server was not replaced"
echo "ok: a session that read the new model_path before the server restarted waited for the new server (route server,"
echo "    no private copy); server_info model_path is now $(server_value model_path)"

echo "-- ALTER SYSTEM SET qwen_embed.dtype, device and server_threads restart the server with them"
# The server is replaced (a new pid) with the new setting in force, and sessions are served by it; RESET brings the
# defaults back the same way.
before=$(q -c "SELECT embed('a dtype change')::text")
for change in "dtype = 'f16'" "device = 'cpu'" "server_threads = 1" RESET; do
    old_server=$(server_value pid)
    case $change in
        RESET) q -c "ALTER SYSTEM RESET qwen_embed.dtype" -c "ALTER SYSTEM RESET qwen_embed.device" \
            -c "ALTER SYSTEM RESET qwen_embed.server_threads" ;;
        *) q -c "ALTER SYSTEM SET qwen_embed.$change" ;;
    esac
    q -c "SELECT pg_reload_conf()" >/dev/null
    wait_for_server pid "^[0-9]+$"
    for _ in $(seq 300); do [ "$(server_value pid)" != "$old_server" ] && break; sleep 0.1; done
    [ "$(server_value pid)" != "$old_server" ] || fail "$change did not restart the model server"
    route=$(q -c "SELECT 1 - cosine_sim(embed('a dtype change'), '$before') < 1e-4" \
        -c "SELECT value FROM qwen_embed.info() WHERE key = 'route'")
    [ "$route" = "$(printf 't\nserver')" ] || fail "after $change: $route"
    case $change in
        dtype*) [ "$(server_value dtype)" = f16 ] || fail "the server's dtype is $(server_value dtype) after $change" ;;
        device*) [ "$(server_value device)" = cpu ] || fail "the server's device is $(server_value device)" ;;
        server_threads*) [ "$(server_value threads)" = 1 ] || fail "the server runs $(server_value threads) threads" ;;
        RESET) [ "$(server_value threads)" = "$(nproc)" ] || fail "server_threads 0 gave $(server_value threads)" ;;
    esac
    echo "ok: after ALTER SYSTEM $change, a new server serves (pid $(server_value pid), dtype $(server_value dtype), $(server_value threads) threads)"
done

echo "-- a model the server cannot load"
broken=$(install_model tests/fixtures/tiny-qwen3 tiny-qwen3-broken)
truncate -s 100 "$broken/model.safetensors"
q -c "ALTER SYSTEM SET qwen_embed.model_path = '$broken'" -c "SELECT pg_reload_conf()" >/dev/null
wait_for_server state '^failed: '
state=$(server_value state)
echo "$state" | grep -q "model.safetensors" || fail "the failed state does not name the file: $state"
out=$(q -v ON_ERROR_STOP=0 -v VERBOSITY=verbose "${session[@]}" -c '\echo sqlstate=:LAST_ERROR_SQLSTATE' 2>&1 || true)
echo "$out" | grep -qx "sqlstate=F0000" || fail "not ERROR F0000 (config_file_error): $out"
echo "$out" | grep -q "model.safetensors" || fail "the ERROR does not give the server's reason: $out"
echo "$out" | grep -q "^HINT: " || fail "no hint: $out"
echo "$out" | grep -q "route=server" || fail "the failing call was not the server's: $out"
echo "$out" | grep -qx "backend_model_path=(none)" || fail "the session tried the model in its backend: $out"
echo "ok: server_info state '${state:0:100}...'; a session's embed() got ERROR F0000 with the server's reason and a hint"

echo "-- back to a model that loads"
q -c "ALTER SYSTEM RESET qwen_embed.model_path" -c "SELECT pg_reload_conf()" >/dev/null
wait_for_server state '^ready$'
[ "$(q -c "SELECT vector_dims(embed('repaired'))")" = 64 ] || fail "embed failed after the model was repaired"
echo "ok: after ALTER SYSTEM RESET the server runs $(server_value model_path) again"

echo "-- qwen_embed.server = off, then on again"
q -c "ALTER SYSTEM SET qwen_embed.server = off" -c "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 300); do [ "$(q -c "SELECT count(*) FROM qwen_embed.server_info()")" = 0 ] && break; sleep 0.1; done
[ "$(q -c "SELECT count(*) FROM qwen_embed.server_info()")" = 0 ] || fail "the server still runs with server = off"
out=$(q "${session[@]}" 2>&1)
echo "$out" | grep -qx "64" || fail "no vector with server = off: $out"
echo "$out" | grep -qx "route=backend" || fail "not computed in the backend with server = off: $out"
echo "$out" | grep -qx "model_path=$QWEN_EMBED_MODEL" || fail "the backend did not run the configured model: $out"
q -c "ALTER SYSTEM RESET qwen_embed.server" -c "SELECT pg_reload_conf()" >/dev/null
wait_for_server state '^ready$'
[ "$(q -c "SELECT vector_dims(embed('served again'))")" = 64 ] || fail "embed failed with the server back"
echo "ok: with server = off server_info() has no rows and a session computes in its backend; with server = on the"
echo "    server runs again"
