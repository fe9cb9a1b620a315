#!/usr/bin/env bash
# The cost of keyward's edge (the layer's guard, security headers and metrics, the router,
# the connection's client address) on a request that needs no session: keyward's /healthz
# against bare axum (`hello` from ../shared/peers, GET /me), in interleaved rounds so that the
# two share whatever else the machine is doing. One wrk run on this 2-core machine varies by
# ±15% from run to run; the median of the rounds' ratios does not.
#
#   bash bench/edge.sh                                  # build both (release), 7 rounds
#   KEYWARD_BIN=target/release/keyward ROUNDS=9 bash bench/edge.sh
#   PIN=1 bash bench/edge.sh                            # server on CPU 0, wrk on CPU 1
#
# Each round: the two servers in turn (alternating which goes first), each warmed for 1 s
# and then loaded for DURATION with `wrk -t1 -c64` (../shared/peers/run.sh's settings).
# Everything runs on 127.0.0.1, on kernel-chosen free ports; servers stop after their turn.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
PEERS=${PEERS:-../shared/peers/rust-peers}
if [[ -z ${KEYWARD_BIN:-} ]]; then
  cargo build --release -p keyward
  KEYWARD_BIN=target/release/keyward
fi
if [[ -z ${HELLO_BIN:-} ]]; then
  # The peers' sources may be read-only: build them into this workspace's target dir.
  cargo build --release --locked --manifest-path "$PEERS/Cargo.toml" --target-dir target/peers --bin hello
  HELLO_BIN=target/peers/release/hello
fi
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
SERVER_CPU=() WRK_CPU=()
if [[ ${PIN:-0} == 1 ]]; then SERVER_CPU=(taskset -c 0) WRK_CPU=(taskset -c 1); fi
source bench/lib.sh

# measure NAME: start it, load it, print its requests per second.
measure() {
  local port url
  port=$(free_port)
  case $1 in
    hello)
      "${SERVER_CPU[@]}" "$HELLO_BIN" "$port" 2>/dev/null &
      url=http://127.0.0.1:$port/me ;;
    keyward)
      rm -rf "$WORK/kw" && mkdir "$WORK/kw"
      "${SERVER_CPU[@]}" "$KEYWARD_BIN" serve --bind "127.0.0.1:$port" \
        --database "sqlite://$WORK/kw/keyward.db" 2>/dev/null &
      url=http://127.0.0.1:$port/healthz ;;
  esac
  PID=$!
  for _ in $(seq 1 100); do curl -sf -o /dev/null "$url" && break; sleep 0.1; done
  "${WRK_CPU[@]}" wrk -t1 -c"$CONNS" -d1s "$url" >/dev/null
  "${WRK_CPU[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" "$url" | awk '/Requests\/sec/ {print $2}'
  kill "$PID" && wait "$PID" 2>/dev/null || true
  PID=""
}

printf '| round | hello req/s | keyward /healthz req/s | ratio |\n|---:|---:|---:|---:|\n'
ratios=()
for round in $(seq 1 "$ROUNDS"); do
  if ((round % 2)); then h=$(measure hello); k=$(measure keyward)
  else k=$(measure keyward); h=$(measure hello); fi
  r=$(python3 -c "print(f'{$k/$h:.3f}')")
  ratios+=("$r")
  printf '| %s | %.0f | %.0f | %s |\n' "$round" "$h" "$k" "$r"
done
python3 - "${ratios[@]}" <<'EOF'
import statistics, sys
r = sorted(float(x) for x in sys.argv[1:])
print(f"\nmedian ratio {statistics.median(r):.3f} (min {r[0]:.3f}, max {r[-1]:.3f}, {len(r)} rounds)")
EOF
