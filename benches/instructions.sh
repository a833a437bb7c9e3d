#!/usr/bin/env bash
# Instructions per request (valgrind callgrind): a CPU cost that a shared, noisy machine does
# not move, for comparing builds (and floodgate against the bare Pingora proxy) when wall-clock
# rows (proxy.sh) differ by less than their noise.
#
# Each row: the proxy under `valgrind --tool=callgrind` with 1 worker thread, an nginx origin
# answering `200 ok`; WARM requests, counters zeroed, exactly N requests `ab -k -c C`, dump;
# then IDLE seconds without traffic, dumped the same way, give the background rate (timers),
# subtracted for the run's wall time. Prints instructions per request for every row and round.
#
#   benches/instructions.sh                                        # target-rel builds, 2 rounds
#   ROWS="before:/tmp/old/floodgate after:target-rel/release/floodgate bare:bare" \
#     ROUNDS=3 benches/instructions.sh
#
# A row is NAME:BINARY; BINARY `bare` is the test kit's bare-proxy ($KIT/bare-proxy), the
# framework's floor. Needs valgrind (callgrind_control), ab (apache2-utils), nginx, curl, ss.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

TARGET=${TARGET:-$ROOT/target-rel/release}
KIT=${KIT:-$TARGET}
ROWS=${ROWS:-"floodgate:$TARGET/floodgate bare:bare"}
ROUNDS=${ROUNDS:-2}
N=${N:-5000}             # measured requests
C=${C:-50}               # ab concurrency (keep-alive connections)
WARM=${WARM:-200}        # requests before the counters are zeroed
IDLE=${IDLE:-5}          # seconds of the background-rate window
BASE_PORT=${BASE_PORT:-18400}
ORIGIN_ADDR=127.0.0.1:$BASE_PORT
PROXY_ADDR=127.0.0.1:$((BASE_PORT + 1))
ADMIN_ADDR=127.0.0.1:$((BASE_PORT + 9))
KEEP_WORK=${KEEP_WORK:-0}

WORK=$(mktemp -d /tmp/floodgate-instructions.XXXXXX)
PIDS=()
log() { echo "[instructions.sh] $*" >&2; }
cleanup() {
  for p in "${PIDS[@]}"; do stop_pid "$p" INT; done
  [ "$KEEP_WORK" = 1 ] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
need() { command -v "$1" >/dev/null || { log "needs $1"; exit 1; }; }
for t in valgrind callgrind_control ab nginx curl ss; do need "$t"; done

# ---- origin ------------------------------------------------------------------------------
mkdir -p "$WORK/origin"
cat >"$WORK/origin/nginx.conf" <<EOF
daemon off;
master_process on;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log crit;
worker_processes 1;
events { worker_connections 4096; }
http {
$(nginx_http_basics "$WORK/origin")
  server {
    listen $ORIGIN_ADDR backlog=4096;
    default_type text/plain;
    location / { return 200 "ok"; }
  }
}
EOF
wait_port_free "$ORIGIN_ADDR"
nginx -p "$WORK/origin" -c "$WORK/origin/nginx.conf" >"$WORK/origin/out.log" 2>&1 &
PIDS+=($!)
wait_port "$ORIGIN_ADDR"

cat >"$WORK/floodgate.yaml" <<EOF
server: { threads: 1, work_stealing: true, upstream_keepalive_pool: 1024 }
listeners:
  - { name: bench, bind: "$PROXY_ADDR" }
admin: { bind: "$ADMIN_ADDR" }
access_log: { enabled: false }
upstreams:
  origin:
    servers: [{ name: o1, addr: "$ORIGIN_ADDR" }]
    timeouts: { connect: 5s, read: 60s, idle: 300s }
routes:
  - { name: all, match: { path_prefix: / }, upstream: origin }
EOF

summary() { # callgrind output file -> its instruction total
  awk '/^summary:/ {print $2}' "$1"
}

measure() { # name binary round -> prints "name round ir_per_request"
  local name=$1 bin=$2 round=$3 dir="$WORK/$1-$3" pid
  mkdir -p "$dir"
  wait_port_free "$PROXY_ADDR"
  if [ "$bin" = bare ]; then
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
      "$KIT/bare-proxy" --listen "$PROXY_ADDR" --upstream "$ORIGIN_ADDR" --threads 1 \
      >"$dir/out.log" 2>&1 &
  else
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" \
      "$bin" run -c "$WORK/floodgate.yaml" >"$dir/out.log" 2>&1 &
  fi
  pid=$!
  PIDS+=("$pid")
  local ok=0
  for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$PROXY_ADDR/" 2>/dev/null)" = 200 ] && { ok=1; break; }
    sleep 0.1
  done
  [ "$ok" = 1 ] || { log "$name did not answer 200; its output:"; cat "$dir/out.log" >&2; exit 1; }
  ab -q -k -n "$WARM" -c "$C" "http://$PROXY_ADDR/" >/dev/null 2>&1
  callgrind_control --zero "$pid" >/dev/null 2>&1
  local t0 t1 t2
  t0=$(date +%s.%N)
  ab -q -k -n "$N" -c "$C" "http://$PROXY_ADDR/" >"$dir/ab.txt" 2>&1
  t1=$(date +%s.%N)
  callgrind_control --dump "$pid" >/dev/null 2>&1
  sleep "$IDLE"
  t2=$(date +%s.%N)
  callgrind_control --dump "$pid" >/dev/null 2>&1
  stop_pid "$pid" INT
  local failed run idle
  failed=$(awk '/^Failed requests:/ {print $3}' "$dir/ab.txt")
  failed=${failed:-?}
  grep -q "^Non-2xx" "$dir/ab.txt" && failed="$failed+non2xx"
  run=$(summary "$dir/cg.out.1")
  idle=$(summary "$dir/cg.out.2")
  awk -v name="$name" -v round="$round" -v n="$N" -v run="$run" -v idle="$idle" \
    -v t0="$t0" -v t1="$t1" -v t2="$t2" -v failed="$failed" 'BEGIN {
      rate = idle / (t2 - t1); net = run - rate * (t1 - t0)
      printf "%-12s %5d %12.0f %12.0f %10.1f %10.0f %8s\n", name, round, run / n, net / n, t1 - t0, rate, failed
    }'
}

printf "%-12s %5s %12s %12s %10s %10s %8s\n" row round "Ir/req" "net Ir/req" "run s" "idle Ir/s" failed
for r in $(seq 1 "$ROUNDS"); do
  for row in $ROWS; do
    measure "${row%%:*}" "${row#*:}" "$r"
  done
done
