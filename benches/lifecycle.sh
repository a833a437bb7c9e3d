#!/usr/bin/env bash
# Failed requests through a reload and an upgrade: floodgate vs HAProxy vs nginx, same origin,
# same run, each under the same wrk load while its operator procedure runs.
#
#   benches/lifecycle.sh                                   # release build + run
#   SKIP_BUILD=1 DURATION=20 benches/lifecycle.sh
#   SKIP_BUILD=1 FLOODGATE_BIN=target/debug/floodgate PROXIES=floodgate benches/lifecycle.sh
#
# The procedures (each starts 3 s into the wrk run, steps 4 s apart):
#   floodgate: SIGHUP (reload); `floodgate run -c FILE --upgrade` + SIGQUIT to the running one
#              (hand-off of the listening sockets); SIGUSR2 to the new one (it starts its own
#              successor and hands over again); the gateway's process changes twice.
#   haproxy:   master-worker (`-W`): SIGUSR2 to the master twice (its seamless reload: new
#              workers get the sockets over the master's socket pair).
#   nginx:     SIGHUP to the master twice (new workers, old ones finish their requests).
#
# Printed per proxy: requests, failed (wrk socket errors: connect, read, write, timeout), non-2xx,
# req/s. The claim under test is "failed 0, non-2xx 0"; the proxies are not tuned for speed here.
# Loopback only; every process started here is stopped by its PID on exit.
set -euo pipefail

DURATION=${DURATION:-16}              # seconds of wrk per proxy
CONNS=${CONNS:-50}
WRK_THREADS=${WRK_THREADS:-2}
PROXIES=${PROXIES:-"floodgate haproxy nginx"}
BASE_PORT=${BASE_PORT:-18300}
SKIP_BUILD=${SKIP_BUILD:-0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
FLOODGATE_BIN=${FLOODGATE_BIN:-$CARGO_TARGET_DIR/release/floodgate}
HAPROXY_BIN=${HAPROXY_BIN:-haproxy}
NGINX_BIN=${NGINX_BIN:-nginx}
WRK_BIN=${WRK_BIN:-wrk}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "[lifecycle] $*" >&2; }
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
need "$WRK_BIN"; need curl; need ss

WORK=$(mktemp -d /tmp/floodgate-lifecycle.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  # a successor started by SIGUSR2 is no child of ours: its PID is read from the gateway
  [ -f "$WORK/successor.pid" ] && stop_pid "$(cat "$WORK/successor.pid")" KILL
  rm -rf "$WORK"
}
trap cleanup EXIT

ORIGIN=127.0.0.1:$BASE_PORT
PROXY=127.0.0.1:$((BASE_PORT + 1))
ADMIN=127.0.0.1:$((BASE_PORT + 2))

if [ "$SKIP_BUILD" != 1 ]; then
  (cd "$ROOT" && cargo build --release --bin floodgate)
fi

# ---- origin: nginx answering 200 after a short think time would need a module; a static 2-byte
# body keeps the origin out of the measurement
mkdir -p "$WORK/origin/logs"
cat >"$WORK/origin/nginx.conf" <<EOF
worker_processes 1; daemon off; pid $WORK/origin/nginx.pid; error_log stderr warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000;
  server { listen $ORIGIN; location / { return 200 "ok"; } } }
EOF
"$NGINX_BIN" -p "$WORK/origin" -c "$WORK/origin/nginx.conf" >"$WORK/origin/out.log" 2>&1 &
PIDS+=($!)
wait_port "$ORIGIN"

run_wrk() { # name: wrk in the background, output in $WORK/name.wrk
  "$WRK_BIN" -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" "http://$PROXY/" >"$WORK/$1.wrk" 2>&1 &
  WRK_PID=$!
}

report() { # name
  local f="$WORK/$1.wrk" reqs errs non2xx rps
  reqs=$(awk '/requests in/ {print $1}' "$f")
  errs=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$f")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$f")
  rps=$(awk '/Requests\/sec/ {print $2}' "$f")
  printf '%-10s %10s %8s %8s %10s   %s\n' "$1" "${reqs:-?}" "${errs:-0}" "${non2xx:-0}" "${rps:-?}" "$2"
}

floodgate_run() {
  local d=$WORK/floodgate
  mkdir -p "$d"
  cat >"$d/floodgate.yaml" <<EOF
listeners: [{ bind: "$PROXY" }]
admin: { bind: "$ADMIN" }
server: { threads: 2, upgrade_sock: $d/upgrade.sock }
access_log: { enabled: false }
upstreams:
  o: { servers: [{ addr: "$ORIGIN" }] }
routes: [{ name: all, upstream: o }]
shutdown: { drain: 10s }
EOF
  RUST_LOG=warn "$FLOODGATE_BIN" run -c "$d/floodgate.yaml" >"$d/old.log" 2>&1 &
  local old=$!
  PIDS+=("$old")
  wait_port "$PROXY"
  until curl -sf "http://$ADMIN/readyz" >/dev/null; do sleep 0.1; done
  run_wrk floodgate
  sleep 3
  kill -HUP "$old"
  sleep 4
  RUST_LOG=warn "$FLOODGATE_BIN" run -c "$d/floodgate.yaml" --upgrade >"$d/new.log" 2>&1 &
  local new=$!
  PIDS+=("$new")
  for _ in $(seq 1 50); do [ -S "$d/upgrade.sock" ] && break; sleep 0.1; done
  kill -QUIT "$old"
  sleep 4
  kill -USR2 "$new"
  local third=""
  for _ in $(seq 1 100); do
    third=$(curl -sf "http://$ADMIN/status" | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
    [ -n "$third" ] && [ "$third" != "$new" ] && [ "$third" != "$old" ] && break
    sleep 0.1
  done
  echo "$third" >"$WORK/successor.pid"
  wait "$WRK_PID" || true
  wait "$old" || log "old process exit status $?"
  wait "$new" || log "upgraded process exit status $?"
  report floodgate "SIGHUP, run --upgrade + SIGQUIT, SIGUSR2 (pids $old -> $new -> $third)"
  stop_pid "$third" TERM
  rm -f "$WORK/successor.pid"
}

haproxy_run() {
  need "$HAPROXY_BIN"
  local d=$WORK/haproxy
  mkdir -p "$d"
  cat >"$d/haproxy.cfg" <<EOF
global
  nbthread 2
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind $PROXY
  default_backend b
backend b
  server o $ORIGIN
EOF
  "$HAPROXY_BIN" -W -db -f "$d/haproxy.cfg" >"$d/out.log" 2>&1 &
  local master=$!
  PIDS+=("$master")
  wait_port "$PROXY"
  run_wrk haproxy
  sleep 3
  kill -USR2 "$master"
  sleep 4
  kill -USR2 "$master"
  wait "$WRK_PID" || true
  report haproxy "master SIGUSR2 twice (reload)"
  stop_pid "$master" USR1
  wait_port_free "$PROXY"
}

nginx_run() {
  local d=$WORK/nginx
  mkdir -p "$d/logs"
  cat >"$d/nginx.conf" <<EOF
worker_processes 2; daemon off; pid $d/nginx.pid; error_log stderr warn;
events { worker_connections 4096; }
http { access_log off;
  upstream o { server $ORIGIN; keepalive 1024; }
  server { listen $PROXY;
    location / { proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
  "$NGINX_BIN" -p "$d" -c "$d/nginx.conf" >"$d/out.log" 2>&1 &
  local master=$!
  PIDS+=("$master")
  wait_port "$PROXY"
  run_wrk nginx
  sleep 3
  kill -HUP "$master"
  sleep 4
  kill -HUP "$master"
  wait "$WRK_PID" || true
  report nginx "master SIGHUP twice (reload)"
  stop_pid "$master" QUIT
  wait_port_free "$PROXY"
}

printf '%-10s %10s %8s %8s %10s   %s\n' proxy requests failed non-2xx req/s procedure
for p in $PROXIES; do
  "${p}_run"
  wait_port_free "$PROXY"
  wait_port_free "$ADMIN"
done
