#!/usr/bin/env bash
# The last step of `make demo`: serve the exports on localhost over TF Serving's gRPC and
# REST APIs, ask the recommender for a known user and for a new one, then stop the server.
set -euo pipefail
BIN=${BIN:-.venv/bin}
MODELS=${MODELS:-models}
PORT=${PORT:-8500}

"$BIN/towerrec" serve --model-base-path "$MODELS" --port "$PORT" --rest-api-port 0 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" || true' EXIT

query() { "$BIN/towerrec" query --address "127.0.0.1:$PORT" "$@"; }
for _ in $(seq 180); do  # the server answers once every model has loaded and warmed up
    if query --user 42 >/dev/null 2>&1; then break; fi
    kill -0 "$server" 2>/dev/null || { echo "towerrec serve stopped" >&2; exit 1; }
    sleep 1
done

echo; echo "== user 42, history and context from the data =="
query --user 42 --context "a 29 year old man, student, Saturday evening"
echo; echo "== a new user: a few films by title and a sentence =="
query --history "Star Wars (1977); Alien; The Empire Strikes Back" \
      --context "a 25 year old woman, programmer, Friday night"
