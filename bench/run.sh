#!/usr/bin/env bash
# keyward benchmark: what does validating a session cost, next to a route with no auth?
#
#   bash bench/run.sh                                   # build, then measure (10 s runs)
#   DURATION=30s bash bench/run.sh                      # longer runs
#   KEYWARD_BIN=target/release/keyward bash bench/run.sh   # skip the build, use this binary
#
# For each session-store mode (`sqlite`: sessions in the same SQLite file as the users, the
# default; `memory`: --session-store memory; `postgres`: users and sessions in a private
# PostgreSQL; `redis`: sessions in a private Redis, users in SQLite; `redis-near`,
# `redis-replicated`, `postgres-near`, `postgres-replicated`: the same with
# --session-cache near|replicated) the script starts the
# store it needs (initdb + postgres, redis-server, on free loopback ports, stopped afterwards)
# and its own keyward on 127.0.0.1
# (port chosen by the kernel: --bind 127.0.0.1:0) with a fresh database in a temp dir, waits for
# GET /healthz, registers a user, logs in, and checks GET /v1/sessions/current is 200 with the
# session cookie and 401 without. Then (1 and 2 each after a WARMUP run with the same settings):
#   1. GET /healthz                 wrk -t1 -c64 -dDURATION --latency   (no-auth baseline)
#   2. GET /v1/sessions/current     the same, with the cookie            (validated route)
#      GET /v1/me                   with the cookie, then with a bearer access token
#   3. GET /v1/sessions/current again, while a second wrk runs a login burst for the same
#      DURATION: POST /v1/sessions with the user's credentials on 4 connections (bench/login.lua).
#      Every login hashes a password (Argon2id) and creates a session.
# It prints a markdown table (req/s, ratio to /healthz of the same mode, p50, p99, errors = non-2xx
# responses + socket errors) and writes it to bench/results/latest.md; raw wrk outputs of the last
# run stay in bench/results/raw/ (not committed).
#
# wrk and keyward share this machine's cores (and during the burst, two wrk processes do), so
# compare ratios within one run, not absolute numbers across machines. All traffic goes to
# 127.0.0.1 and every load run is bounded by wrk's -d. Every process the script starts is
# stopped on exit (by PID) and the temp dirs are removed.
#
# Overrides: DURATION=10s WARMUP=2s THREADS=1 CONNS=64 LOGIN_CONNS=4 KEYWARD_BIN=path
#            MODES="sqlite memory postgres postgres-near postgres-replicated redis redis-near redis-replicated"
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
RESULTS=$HERE/results
RAW=$RESULTS/raw
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-1}
CONNS=${CONNS:-64}
LOGIN_CONNS=${LOGIN_CONNS:-4}
BENCH_USER=bench
BENCH_PASSWORD=bench-password-1
read -r -a MODES <<<"${MODES:-sqlite memory postgres postgres-near postgres-replicated redis redis-near redis-replicated}"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
SERVER_PID=""  # the keyward currently running, if any
STORE_PID=""   # the private Redis or PostgreSQL of the current mode, if any
LOGIN_PID=""   # the login-burst wrk, while it runs
WORK=""        # temp dir of this run
cleanup() {
  local pid
  for pid in "$LOGIN_PID" "$SERVER_PID" "$STORE_PID"; do
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  [[ -n $WORK ]] && rm -rf "$WORK"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- tools
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
[[ " ${MODES[*]} " == *" redis"* ]] && { command -v redis-server >/dev/null || need_apt+=(redis-server redis-tools); }
[[ " ${MODES[*]} " == *" postgres"* ]] && { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql); }
if ((${#need_apt[@]})); then
  [[ $(id -u) == 0 ]] || die "missing ${need_apt[*]}; install them (apt-get install ${need_apt[*]})"
  log "installing ${need_apt[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [[ -n ${KEYWARD_BIN:-} ]]; then
  BIN="$(cd "$(dirname "$KEYWARD_BIN")" && pwd)/$(basename "$KEYWARD_BIN")"
else
  command -v cargo >/dev/null || die "cargo not found (install Rust, or set KEYWARD_BIN)"
  log "building keyward (cargo build --release -p keyward)"
  (cd "$ROOT" && cargo build --release --quiet -p keyward)
  BIN=$ROOT/target/release/keyward
fi
[[ -x $BIN ]] || die "$BIN is not an executable"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/keyward-bench.XXXXXX")
mkdir -p "$RESULTS"
rm -rf "$RAW"
mkdir -p "$RAW"

# ---------------------------------------------------------------- helpers
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" || true; }

# wrk latency ("812.00us", "3.25ms", "1.02s", "1.00m") -> milliseconds
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /m$/) { sub(/m$/, "", v); printf "%.1f", v * 60000 }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.1f", v * 1000 }
    else printf "?" }'
}

# Parse one wrk output file into the globals RPS P50 P99 ERRORS (P50/P99 in ms).
parse_wrk() {
  local f=$1 non2xx sockerr
  RPS=$(awk '/^Requests\/sec:/ {print $2}' "$f")
  P50=$(awk '$1=="50%" {print $2}' "$f")
  P99=$(awk '$1=="99%" {print $2}' "$f")
  non2xx=$(awk -F': *' '/Non-2xx or 3xx responses/ {print $2}' "$f")
  sockerr=$(awk '/Socket errors/ {s=0; for (i=1;i<=NF;i++) if ($i ~ /^[0-9]+,?$/) s+=$i; print s}' "$f")
  [[ -n $RPS && -n $P50 && -n $P99 ]] || die "wrk gave no result (see $f)"
  P50=$(to_ms "$P50")
  P99=$(to_ms "$P99")
  ERRORS=$(( ${non2xx:-0} + ${sockerr:-0} ))
}

# One measured wrk run (after a warm-up with the same settings); output in $RAW/$1.txt.
# Usage: measure NAME URL [extra wrk args...]
measure() {
  local name=$1 url=$2; shift 2
  log "$name: warm-up $WARMUP"
  wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$@" "$url" >"$RAW/$name.warmup.txt" 2>&1 || true
  log "$name: wrk -t$THREADS -c$CONNS -d$DURATION --latency $url"
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$@" "$url" >"$RAW/$name.txt" 2>&1 ||
    die "wrk failed (see $RAW/$name.txt)"
  parse_wrk "$RAW/$name.txt"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
ROWS=()

free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  die "no free port"
}

# The private store a mode needs; sets STORE_PID and STORE_URL.
start_store() {
  local mode=$1 dir=$WORK/$1 port
  port=$(free_port)
  case $mode in
    redis*)
      redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        --logfile "$RAW/$mode.redis.log" --daemonize no &
      STORE_PID=$!
      for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
      STORE_URL=redis://127.0.0.1:$port
      ;;
    postgres*)
      local bin run=()
      bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
      # As root, PostgreSQL runs as the postgres user, which must reach its directory.
      if [[ $(id -u) == 0 ]]; then run=(runuser -u postgres --); chmod 711 "$WORK"; chown postgres "$dir"; fi
      "${run[@]}" "$bin/initdb" -A trust -U postgres --no-sync -E UTF8 -D "$dir/pg" >"$RAW/$mode.initdb.log" 2>&1 ||
        die "initdb failed (see $RAW/$mode.initdb.log)"
      "${run[@]}" "$bin/postgres" -D "$dir/pg" -p "$port" -c listen_addresses=127.0.0.1 \
        -c "unix_socket_directories=$dir" -c fsync=off -c synchronous_commit=off \
        >"$RAW/$mode.postgres.log" 2>&1 &
      STORE_PID=$!
      for _ in $(seq 100); do grep -q "ready to accept connections" "$RAW/$mode.postgres.log" && break; sleep 0.1; done
      STORE_URL=postgres://postgres@127.0.0.1:$port/postgres
      ;;
  esac
}

stop_store() {
  if [[ -n $STORE_PID ]]; then
    # runuser forwards the signal to postgres.
    kill "$STORE_PID" 2>/dev/null || true
    wait "$STORE_PID" 2>/dev/null || true
    STORE_PID=""
  fi
}

start_server() {
  local mode=$1 dir=$WORK/$1 extra=() db
  mkdir -p "$dir"
  db=sqlite://$dir/keyward.db
  case $mode in
    memory) extra=(--session-store memory) ;;
    postgres*) start_store "$mode"; db=$STORE_URL
      extra=(--key-encryption-key "$(head -c32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')")
      [[ $mode == postgres-* ]] && extra+=(--session-cache "${mode#postgres-}") ;;
    redis) start_store "$mode"; extra=(--session-store "$STORE_URL") ;;
    redis-near) start_store "$mode"; extra=(--session-store "$STORE_URL" --session-cache near) ;;
    redis-replicated) start_store "$mode"; extra=(--session-store "$STORE_URL" --session-cache replicated) ;;
    sqlite) ;;
    *) die "unknown mode $mode" ;;
  esac
  log "$mode: starting keyward ($BIN serve --bind 127.0.0.1:0 --database $db ${extra[*]})"
  "$BIN" serve --bind 127.0.0.1:0 --database "$db" --log-format json "${extra[@]}" \
    >"$RAW/$mode.server.log" 2>&1 &
  SERVER_PID=$!
  # The kernel picks the port; keyward logs it in its "keyward listening" line.
  ADDR=""
  for _ in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || die "keyward exited at start-up (see $RAW/$mode.server.log)"
    ADDR=$(grep -m1 '"keyward listening"' "$RAW/$mode.server.log" 2>/dev/null |
      sed -n 's/.*"addr":"\([^"]*\)".*/\1/p' || true)
    [[ -n $ADDR ]] && break
    sleep 0.1
  done
  [[ $ADDR == 127.0.0.1:* ]] || die "keyward did not report a 127.0.0.1 address (see $RAW/$mode.server.log)"
  BASE=http://$ADDR
  for _ in $(seq 100); do
    [[ $(http_code "$BASE/healthz") == 200 ]] && break
    sleep 0.1
  done
  [[ $(http_code "$BASE/healthz") == 200 ]] || die "$BASE/healthz does not answer 200"
  log "$mode: keyward pid $SERVER_PID listening on $BASE"
}

stop_server() {
  if [[ -n $SERVER_PID ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}

# Register the bench user, log in, check the cookie works; sets COOKIE (name=value).
login_once() {
  local mode=$1 body code with without
  body=$(printf '{"username":"%s","password":"%s"}' "$BENCH_USER" "$BENCH_PASSWORD")
  code=$(http_code -H 'Content-Type: application/json' -d "$body" "$BASE/v1/users")
  [[ $code == 201 ]] || die "$mode: POST /v1/users gave $code (want 201)"
  code=$(curl -s -o "$RAW/$mode.login.body" -D "$RAW/$mode.login.headers" -w '%{http_code}' \
    --max-time 30 -H 'Content-Type: application/json' -d "$body" "$BASE/v1/sessions" || true)
  [[ $code == 201 ]] || die "$mode: POST /v1/sessions gave $code (want 201)"
  COOKIE=$(tr -d '\r' <"$RAW/$mode.login.headers" |
    awk 'tolower($1)=="set-cookie:" {sub(/^[^:]*: */, ""); sub(/;.*/, ""); print; exit}')
  [[ $COOKIE == keyward=?* ]] || die "$mode: login gave no keyward cookie (got '${COOKIE:-none}')"
  with=$(http_code -H "Cookie: $COOKIE" "$BASE/v1/sessions/current")
  without=$(http_code "$BASE/v1/sessions/current")
  [[ $with == 200 && $without == 401 ]] ||
    die "$mode: GET /v1/sessions/current gave $with with the cookie and $without without (want 200/401)"
  log "$mode: /v1/sessions/current is $with with the cookie, $without without"
  # A bearer access token for the same user (password grant).
  ACCESS=$(curl -s --max-time 30 -d grant_type=password -d "username=$BENCH_USER" \
    -d "password=$BENCH_PASSWORD" "$BASE/v1/token" | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
  [[ -n $ACCESS ]] || die "$mode: POST /v1/token gave no access token"
  with=$(http_code -H "Authorization: Bearer $ACCESS" "$BASE/v1/me")
  [[ $with == 200 ]] || die "$mode: GET /v1/me with the bearer token gave $with (want 200)"
}

# ---------------------------------------------------------------- runs
for mode in "${MODES[@]}"; do
  start_server "$mode"
  login_once "$mode"

  measure "$mode-healthz" "$BASE/healthz"
  health_rps=$RPS
  ROWS+=("| $mode | GET /healthz (no auth) | $(printf '%.0f' "$RPS") | 1.00 | $P50 | $P99 | $ERRORS |")

  measure "$mode-current" "$BASE/v1/sessions/current" -H "Cookie: $COOKIE"
  ROWS+=("| $mode | GET /v1/sessions/current | $(printf '%.0f' "$RPS") | $(ratio "$RPS" "$health_rps") | $P50 | $P99 | $ERRORS |")

  measure "$mode-me-cookie" "$BASE/v1/me" -H "Cookie: $COOKIE"
  ROWS+=("| $mode | GET /v1/me (cookie) | $(printf '%.0f' "$RPS") | $(ratio "$RPS" "$health_rps") | $P50 | $P99 | $ERRORS |")

  measure "$mode-me-bearer" "$BASE/v1/me" -H "Authorization: Bearer $ACCESS"
  ROWS+=("| $mode | GET /v1/me (bearer, EdDSA) | $(printf '%.0f' "$RPS") | $(ratio "$RPS" "$health_rps") | $P50 | $P99 | $ERRORS |")

  # The same validated load, while a login burst runs beside it for the same duration.
  log "$mode: login burst (wrk -t1 -c$LOGIN_CONNS -d$DURATION -s bench/login.lua) + validated load"
  BENCH_USER=$BENCH_USER BENCH_PASSWORD=$BENCH_PASSWORD \
    wrk -t1 -c"$LOGIN_CONNS" -d"$DURATION" --latency -s "$HERE/login.lua" "$BASE/v1/sessions" \
    >"$RAW/$mode-burst-logins.txt" 2>&1 &
  LOGIN_PID=$!
  wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "Cookie: $COOKIE" "$BASE/v1/sessions/current" \
    >"$RAW/$mode-burst-current.txt" 2>&1 || die "wrk failed (see $RAW/$mode-burst-current.txt)"
  wait "$LOGIN_PID" || die "login wrk failed (see $RAW/$mode-burst-logins.txt)"
  LOGIN_PID=""
  parse_wrk "$RAW/$mode-burst-current.txt"
  ROWS+=("| $mode | GET /v1/sessions/current during login burst | $(printf '%.0f' "$RPS") | $(ratio "$RPS" "$health_rps") | $P50 | $P99 | $ERRORS |")
  parse_wrk "$RAW/$mode-burst-logins.txt"
  ROWS+=("| $mode | POST /v1/sessions (the burst: logins/s, $LOGIN_CONNS conns) | $(printf '%.1f' "$RPS") | - | $P50 | $P99 | $ERRORS |")

  # Sanity: the bench cookie still validates after the run.
  code=$(http_code -H "Cookie: $COOKIE" "$BASE/v1/sessions/current")
  [[ $code == 200 ]] || log "$mode: warning: after the runs the cookie gives $code"
  stop_server
  stop_store
done

# ---------------------------------------------------------------- report
git_state() {
  local head
  head=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || { echo "unknown commit"; return; }
  if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    echo "$head with uncommitted changes"
  else
    echo "$head"
  fi
}
cpu_model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
REPORT=$RESULTS/latest.md
{
  echo "# keyward: validated route vs no-auth route"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores (${cpu_model:-unknown CPU}), $(uname -sr),"
  echo "binary $BIN$([[ -n ${KEYWARD_BIN:-} ]] && echo ' (given by KEYWARD_BIN)' || true), source tree at $(git_state), $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}')."
  echo "\`wrk -t$THREADS -c$CONNS -d$DURATION --latency\` against 127.0.0.1 after a $WARMUP warm-up with the same settings;"
  echo "the burst rows run it again beside \`wrk -t1 -c$LOGIN_CONNS -d$DURATION -s bench/login.lua\` (logins of the same user)."
  echo "wrk and keyward share the same cores. Latencies in ms; ratio = req/s / GET /healthz req/s of the same mode."
  echo
  echo "| mode | route | req/s | vs /healthz | p50 ms | p99 ms | errors |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "- sqlite: sessions in the SQLite database (the default); memory: \`--session-store memory\` (users still in SQLite);"
  echo "  postgres: users and sessions in a private PostgreSQL (fsync off); redis: sessions in a private Redis (users in SQLite);"
  echo "  redis-near / redis-replicated / postgres-near / postgres-replicated: the same with \`--session-cache near\` / \`replicated\`. Every store runs on this machine too."
  echo "- errors = non-2xx responses + socket errors during the measured run."
  echo "- Load average (1/5/15 min) before the runs: $LOAD_START; after: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews the numbers)."
} >"$REPORT"
cat "$REPORT"
