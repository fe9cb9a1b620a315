#!/usr/bin/env bash
# keyward at scale: a replicated node's load time and memory at N sessions, and how fast a
# revocation on one node reaches another, on a private Redis and PostgreSQL (see
# bench/scale/src/main.rs for what is measured and how).
#
#   bash bench/scale.sh                                     # 100k and 1M sessions, both engines
#   bash bench/scale.sh --sessions 1000000 --engines postgres --revocations 300
#
# Builds the release binaries (skip with KEYWARD_BIN=… SCALE_BIN=…), then runs; every server it
# starts is on 127.0.0.1 and stopped at the end. Expect ~6 minutes per million sessions per
# engine to fill the store through keyward's own store code.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z ${KEYWARD_BIN:-} || -z ${SCALE_BIN:-} ]]; then
  cargo build --release -p keyward -p keyward-scale
fi
exec "${SCALE_BIN:-target/release/keyward-scale}" --keyward "${KEYWARD_BIN:-target/release/keyward}" "$@"
