#!/usr/bin/env bash
# The embedded example (examples/embed-axum) under load: its own protected JSON route
# (GET /api/notes, a `Principal` extractor behind `kw.layer()`) next to the same process's
# unprotected page for comparison (GET / without a cookie renders the sign-in form), with the
# same wrk settings as bench/run.sh and ../shared/peers/run.sh (so the figure sits beside
# tower-sessions-memory's /me from the peers' run).
#
#   bash bench/embed.sh                      # build embed-axum (release), then measure
#   EMBED_BIN=target/release/embed-axum bash bench/embed.sh
#
# Everything runs on 127.0.0.1 on a kernel-chosen free port; the app and its temp dir are
# removed on exit; each load run is bounded by wrk's -d.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-64}
if [[ -z ${EMBED_BIN:-} ]]; then
  cargo build --release -p embed-axum
  EMBED_BIN=target/release/embed-axum
fi
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
source bench/lib.sh
PORT=$(free_port)
"$EMBED_BIN" --bind "127.0.0.1:$PORT" --database "sqlite://$WORK/notes.db" 2>"$WORK/log" &
PID=$!
BASE=http://127.0.0.1:$PORT
for _ in $(seq 1 100); do curl -s -o /dev/null "$BASE/" && break; sleep 0.1; done
curl -s -o /dev/null -w '%{http_code}\n' -H 'content-type: application/json' \
  -d '{"username":"bench","password":"bench-password-1 for the embedded app"}' "$BASE/v1/users" | grep -q 201
COOKIE=$(curl -s -D - -o /dev/null --data-urlencode username=bench \
  --data-urlencode 'password=bench-password-1 for the embedded app' "$BASE/login" |
  tr -d '\r' | sed -n 's/^set-cookie: \(keyward=[^;]*\).*/\1/ip' | head -1)
[[ -n $COOKIE ]] || { echo "sign-in failed" >&2; exit 1; }
[[ $(curl -s -o /dev/null -w '%{http_code}' -H "cookie: $COOKIE" "$BASE/api/notes") == 200 ]]
[[ $(curl -s -o /dev/null -w '%{http_code}' "$BASE/api/notes") == 401 ]]
run() {
  local name=$1; shift
  wrk -t1 -c"$CONNS" -d"$WARMUP" "$@" >/dev/null 2>&1 || true
  local out
  out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$@")
  printf '%s: %s req/s, p50 %s, p99 %s\n' "$name" \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
    "$(awk '$1 == "50%" {print $2}' <<<"$out")" \
    "$(awk '$1 == "99%" {print $2}' <<<"$out")"
}
run "embed-axum GET / (no session, renders a page)" "$BASE/"
run "embed-axum GET /api/notes (validated)" -H "cookie: $COOKIE" "$BASE/api/notes"
