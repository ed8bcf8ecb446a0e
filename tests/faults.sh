#!/usr/bin/env bash
# Faults that need the server itself: a backend killed with SIGKILL in the middle of an embedding (the cluster
# recovers, every committed row is intact, nothing of the killed transaction is left), and a model too big for the
# memory the server may use (an ERROR, not an abort; the same session then works with a model that fits).
# Runs against the system cluster set up by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh
db=qwen_embed_faults
pg -q -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
q() { pg -q -At -d $db "$@"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

echo "-- kill -9 of a backend mid-embed"
q <<'SQL'
CREATE EXTENSION qwen_embed CASCADE;
CREATE TABLE docs (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL, embedding vector(64));
SELECT qwen_embed.create_embedding_triggers('docs', 'body', 'embedding');
INSERT INTO docs (body) SELECT 'committed before the crash ' || g FROM generate_series(1, 200) g;
SQL
# The victim inserts rows whose embedding takes several seconds, in a transaction it never gets to commit.
(pg -q -d $db -c "SET application_name = 'qwen_embed_victim'" \
    -c "INSERT INTO docs (body) SELECT repeat('long uncommitted text ' || g || ' ', 300) FROM generate_series(1, 3000) g" \
    >/dev/null 2>&1 || true) &
victim=""
for _ in $(seq 100); do
    victim=$(q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'qwen_embed_victim' AND state = 'active'")
    [ -n "$victim" ] && break
    sleep 0.1
done
[ -n "$victim" ] || fail "the victim never started"
sleep 1 # well inside the forward passes
$SUDO kill -9 "$victim"
wait
for _ in $(seq 120); do q -c "SELECT 1" >/dev/null 2>&1 && break; sleep 0.5; done
q -c "SELECT 1" >/dev/null || fail "the server did not come back"
rows=$(q -c "SELECT count(*) FROM docs")
[ "$rows" = 200 ] || fail "$rows rows after the crash, expected the 200 committed"
worst=$(q -c "SELECT max(1 - cosine_sim(embedding, embed(body))) < 1e-5 FROM docs")
[ "$worst" = t ] || fail "a committed vector differs from embed(body) after recovery"
echo "ok: killed backend $victim mid-embed; server recovered; 200 committed rows intact, vectors equal embed(body)"

echo "-- a model too big for the memory limit"
tmp=$(mktemp -d)
python3 tools/make_sparse_model.py "$tmp/sparse-0.6b" >/dev/null
sparse=$(install_model "$tmp/sparse-0.6b" sparse-0.6b) # cp keeps the file sparse
rm -rf "$tmp"
# 2 GB of address space per server process: the tiny model fits, the 0.6B shape in f32 (2.2 GB) does not.
$SUDO pg_ctlcluster 15 main stop
(ulimit -v 2000000 && $SUDO pg_ctlcluster 15 main start)
out=$(q -v ON_ERROR_STOP=0 2>&1 <<SQL
SET qwen_embed.model_path = '$sparse';
SET qwen_embed.dtype = 'f32';
SELECT embed('too big');
\echo sqlstate=:LAST_ERROR_SQLSTATE
RESET qwen_embed.model_path;
RESET qwen_embed.dtype;
SELECT vector_dims(embed('the model that fits'));
SQL
)
$SUDO pg_ctlcluster 15 main restart # without the limit
echo "$out" | grep -q "not enough memory to load the model" || fail "no out-of-memory ERROR: $out"
echo "$out" | grep -qx "sqlstate=53200" || fail "wrong SQLSTATE: $out"
echo "$out" | grep -qx "64" || fail "the session did not recover: $out"
echo "ok: $(echo "$out" | grep -m1 'not enough memory')"
echo "ok: same session embeds with the configured model afterwards"
