# Sourced by the bench scripts: a free port, and one server process with a temp dir that are
# both gone when the script exits.

# A port on 127.0.0.1 that the kernel just handed out (and took back).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# WORK: a temp dir; PID: the server the script runs now (empty when none). Both are cleaned
# up on exit.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/keyward-bench.XXXXXX")
PID=""
cleanup() {
  if [[ -n $PID ]]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM
