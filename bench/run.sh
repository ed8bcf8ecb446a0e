#!/usr/bin/env bash
# The CPU benchmark from the repository alone: creates bench/.venv with the pinned anchors (bench/requirements.txt),
# writes the random-weight 0.6B-shaped model (tools/make_random_model.py, once), exports it to ONNX (once, under
# ~/.cache/qwen_embed/onnx), builds ours and runs bench/run.py with the arguments given.
#
#     bash bench/run.sh                        # every case, ours with default settings against all four anchors
#     bash bench/run.sh --only query_1,docs_32 --reps 3
set -euo pipefail
cd "$(dirname "$0")/.."
venv=bench/.venv
if ! [ -x "$venv/bin/python" ] || ! cmp -s bench/requirements.txt "$venv/requirements.txt"; then
    if ! python3 -c 'import ensurepip' 2>/dev/null; then
        apt-get install -y -q python3-venv >/dev/null
    fi
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r bench/requirements.txt
    cp bench/requirements.txt "$venv/requirements.txt"
fi
python3 tools/make_random_model.py
exec "$venv/bin/python" bench/run.py "$@"
