#!/usr/bin/env bash
# Soak (issue 19): the full feature set under mixed load for a long time; memory, open fds and
# threads must stay flat once the cache is full.
#
#   benches/soak.sh                       # 30 minutes, release build first (fat LTO: minutes)
#   SKIP_BUILD=1 benches/soak.sh --minutes 5
#   SKIP_BUILD=1 FLOODGATE_BIN=/path/to/floodgate MAX_BYTES=64MiB BODY_BYTES=1048576 benches/soak.sh --minutes 5
#
# What runs (all on 127.0.0.1, ports BASE_PORT..+4, default: the first free block from 18700):
#   origin    nginx, 1 worker: GET /register answers a BODY_BYTES-byte script (default 30) with the
#             headers nginx sends for a static file; /rhsm/* and everything else a small JSON 200.
#             Two listeners (two servers of the `puppet` upstream, so a map can pin either).
#   gateway   floodgate, `server.threads: PROXY_THREADS` (2), the shipped registration policy
#             (scripts/registration-priority.lua), routes:
#               register  GET /register, cached (ttl TTL, default 300s), cache.memory.max_bytes MAX_BYTES
#               rhsm      /rhsm, admission (max_inflight 64, queue 5000)
#               puppet    header X-Node-Name, pick_server from the map `nodes`
#   load      wrk -t WRK_THREADS -c CONNS for the whole run, per thread in turn: 6 of 10 requests
#             GET /register?activation_keys=ak-<thread>-<n>&location_id=2 (every key new: the cache
#             fills, then evicts), 1 POST /rhsm/consumers, 1 GET /rhsm/consumers/<n>/certificates,
#             2 GET /catalog with X-Node-Name node-<n mod MAP_ENTRIES>.example.com.
#   churn     every MAP_EVERY s the whole `nodes` map (MAP_ENTRIES entries, default 10,000) is
#             replaced through the admin API (PUT /maps/nodes, alternating which server each node
#             is pinned to); every HUP_EVERY s (15) the gateway gets SIGHUP (a reload).
#   samples   every SAMPLE_EVERY s (10): VmRSS, open fds and threads of the gateway (/proc), and
#             floodgate_cache_entries / floodgate_cache_bytes from /metrics.
#
# Printed: the samples, then the figures after warm-up (WARMUP_S seconds, default a fifth of the
# run, at least 60): RSS at the end of warm-up, its min/max/last afterwards and the growth in
# percent; the same for fds and threads; RSS over floodgate_cache_bytes; wrk's requests,
# failed requests (socket errors) and non-2xx answers; map PUTs and reloads that failed.
# The claim under test: RSS within 5% after warm-up, fds and threads flat, 0 failed requests.
#
# Every process started here is stopped by its PID on exit; KEEP_WORK=1 keeps the temp dir.
set -euo pipefail

MINUTES=${MINUTES:-30}
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) MINUTES=$2; shift 2 ;;
    --minutes=*) MINUTES=${1#*=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "soak.sh: unknown argument $1 (use --minutes N)" >&2; exit 2 ;;
  esac
done
case $MINUTES in '' | *[!0-9]*) echo "soak.sh: --minutes takes a whole number, got '$MINUTES'" >&2; exit 2 ;; esac

MAX_BYTES=${MAX_BYTES:-16MiB}
BODY_BYTES=${BODY_BYTES:-30}
TTL=${TTL:-300s}
CONNS=${CONNS:-50}
WRK_THREADS=${WRK_THREADS:-2}
PROXY_THREADS=${PROXY_THREADS:-2}
MAP_ENTRIES=${MAP_ENTRIES:-10000}
MAP_EVERY=${MAP_EVERY:-1}
HUP_EVERY=${HUP_EVERY:-15}
SAMPLE_EVERY=${SAMPLE_EVERY:-10}
DURATION_S=$((MINUTES * 60))
WARMUP_S=${WARMUP_S:-$((DURATION_S / 5 > 60 ? DURATION_S / 5 : 60))}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
FLOODGATE_BIN=${FLOODGATE_BIN:-$CARGO_TARGET_DIR/release/floodgate}
NGINX_BIN=${NGINX_BIN:-nginx}
WRK_BIN=${WRK_BIN:-wrk}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "[soak.sh $(date +%T)] $*" >&2; }
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
need "$WRK_BIN"; need "$NGINX_BIN"; need curl; need awk; need ss

port_block_free() { # base
  ! ss -Htln 2>/dev/null | awk '{print $4}' | grep -qE ":($(seq -s'|' "$1" $(($1 + 4))))\$"
}
if [ -z "${BASE_PORT:-}" ]; then
  BASE_PORT=18700
  while ! port_block_free "$BASE_PORT"; do BASE_PORT=$((BASE_PORT + 10)); done
fi
ORIGIN1=127.0.0.1:$BASE_PORT
ORIGIN2=127.0.0.1:$((BASE_PORT + 1))
PROXY=127.0.0.1:$((BASE_PORT + 2))
ADMIN=127.0.0.1:$((BASE_PORT + 3))

WORK=$(mktemp -d /tmp/floodgate-soak.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && stop_pid "$p"; done
  if [ "$KEEP_WORK" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$SKIP_BUILD" != 1 ]; then
  log "building floodgate (release) into $CARGO_TARGET_DIR"
  (cd "$ROOT" && cargo build --release --bin floodgate)
fi
[ -x "$FLOODGATE_BIN" ] || { log "no binary at $FLOODGATE_BIN"; exit 1; }
cp "$FLOODGATE_BIN" "$WORK/floodgate"

# ---- origin ------------------------------------------------------------------------------
mkdir -p "$WORK/nginx/html"
head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x' >"$WORK/nginx/html/register"
NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root root;"
cat >"$WORK/nginx/nginx.conf" <<EOF
$NGINX_USER
daemon off;
master_process on;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log crit;
worker_processes 1;
worker_rlimit_nofile 20000;
events { worker_connections 8192; }
http {
$(nginx_http_basics $WORK/nginx)
  server {
    listen $ORIGIN1;
    listen $ORIGIN2;
    root $WORK/nginx/html;
    default_type text/x-shellscript;
    location = /register { try_files /register =404; }
    location / { default_type application/json; return 200 '{"ok": true}'; }
  }
}
EOF
"$NGINX_BIN" -t -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >/dev/null 2>&1 ||
  { "$NGINX_BIN" -t -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"; exit 1; }

# ---- gateway -----------------------------------------------------------------------------
map_file() { # out flip(0|1): node-N -> p1 or p2, alternating by N and flip
  awk -v n="$MAP_ENTRIES" -v f="$2" 'BEGIN { for (i = 0; i < n; i++) printf "node-%d.example.com p%d\n", i, 1 + (i + f) % 2 }' >"$1"
}
map_file "$WORK/nodes.map" 0
map_file "$WORK/nodes-0.map" 0
map_file "$WORK/nodes-1.map" 1
cp "$ROOT/scripts/registration-priority.lua" "$WORK/policy.lua"
cat >"$WORK/floodgate.yaml" <<EOF
server: { threads: $PROXY_THREADS, upstream_keepalive_pool: 1024 }
listeners:
  - { name: soak, bind: "$PROXY" }
admin: { bind: "$ADMIN" }
access_log: { enabled: false }
upstreams:
  foreman:
    servers: [{ name: app1, addr: "$ORIGIN1", max_inflight: 256 }]
    queue: { max: 5000, timeout: 30s }
  puppet:
    servers: [{ name: p1, addr: "$ORIGIN1" }, { name: p2, addr: "$ORIGIN2" }]
maps:
  nodes: { file: nodes.map }
routes:
  - name: register
    match: { path: /register, methods: [GET, HEAD] }
    upstream: foreman
    cache: { ttl: $TTL }
  - name: rhsm
    match: { path_prefix: /rhsm }
    upstream: foreman
    admission: { max_inflight: 64, queue: 5000, queue_timeout: 30s }
  - name: puppet
    match: { header: { name: X-Node-Name } }
    upstream: puppet
    pick_server: { map: nodes, key: "header:X-Node-Name", on_miss: balance }
  - { name: rest, match: { path_prefix: / }, upstream: foreman }
policy: { scripts: [policy.lua] }
cache: { memory: { max_bytes: $MAX_BYTES } }
shutdown: { pre_drain: 0s, drain: 2s }
EOF
"$WORK/floodgate" check -c "$WORK/floodgate.yaml" >/dev/null ||
  { "$WORK/floodgate" check -c "$WORK/floodgate.yaml"; exit 1; }

cat >"$WORK/mix.lua" <<EOF
-- per thread in turn: 6 distinct /register keys, 1 POST /rhsm/consumers,
-- 1 GET /rhsm/consumers/N/certificates, 2 pinned /catalog requests
local n, tid, seq = 0, 0, 0
local map_entries = $MAP_ENTRIES
function setup(thread)
  seq = seq + 1
  thread:set("tid", seq)
end
function request()
  n = n + 1
  local k = n % 10
  if k < 6 then
    return wrk.format("GET", "/register?activation_keys=ak-" .. tid .. "-" .. n .. "&location_id=2")
  elseif k == 6 then
    return wrk.format("POST", "/rhsm/consumers", { ["Content-Type"] = "application/json" }, '{"name": "host-' .. n .. '"}')
  elseif k == 7 then
    return wrk.format("GET", "/rhsm/consumers/" .. tid .. "-" .. n .. "/certificates")
  else
    return wrk.format("GET", "/catalog", { ["X-Node-Name"] = "node-" .. (n % map_entries) .. ".example.com" })
  end
end
EOF

"$NGINX_BIN" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx/out.log" 2>&1 &
PIDS+=($!)
wait_port "$ORIGIN1"
(cd "$WORK" && RUST_LOG=warn exec ./floodgate run -c floodgate.yaml) >"$WORK/floodgate.log" 2>&1 &
FG=$!
PIDS+=("$FG")
wait_port "$PROXY" || { cat "$WORK/floodgate.log" >&2; exit 1; }
for _ in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/readyz")" = 200 ] && break
  sleep 0.1
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$PROXY/register?activation_keys=probe")" = 200 ] ||
  { log "GET /register through the gateway is not 200"; cat "$WORK/floodgate.log" >&2; exit 1; }

# ---- load, churn, samples ----------------------------------------------------------------
metric() { # name -> value (0 when absent)
  curl -s --max-time 5 "http://$ADMIN/metrics" | awk -v k="$1" '$1 == k {v = $2} END {printf "%.0f\n", v + 0}'
}
sample() { # t -> "t rss_kb fds threads entries bytes"
  local rss thr fds
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$FG/status")
  thr=$(awk '/^Threads:/ {print $2}' "/proc/$FG/status")
  fds=$(find "/proc/$FG/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  echo "$1 $rss $fds $thr $(metric floodgate_cache_entries) $(metric floodgate_cache_bytes)"
}

log "floodgate $FLOODGATE_BIN, pid $FG; $MINUTES min (warm-up ${WARMUP_S}s), max_bytes $MAX_BYTES, body ${BODY_BYTES} B"
log "wrk -t$WRK_THREADS -c$CONNS; map of $MAP_ENTRIES entries replaced every ${MAP_EVERY}s; SIGHUP every ${HUP_EVERY}s"
sample 0 >"$WORK/samples"
"$WRK_BIN" -t "$WRK_THREADS" -c "$CONNS" -d "${DURATION_S}s" --timeout 30s -s "$WORK/mix.lua" "http://$PROXY" >"$WORK/wrk.txt" 2>&1 &
WRK=$!
PIDS+=("$WRK")

START=$(date +%s)
puts=0 put_fail=0 hups=0 next_put=$START next_hup=$((START + HUP_EVERY)) next_sample=$((START + SAMPLE_EVERY))
while kill -0 "$WRK" 2>/dev/null; do
  now=$(date +%s)
  if [ "$now" -ge "$next_put" ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X PUT --data-binary "@$WORK/nodes-$((puts % 2)).map" "http://$ADMIN/maps/nodes" || echo 000)
    puts=$((puts + 1))
    [ "$code" = 200 ] || put_fail=$((put_fail + 1))
    next_put=$((next_put + MAP_EVERY))
  fi
  if [ "$now" -ge "$next_hup" ]; then
    kill -HUP "$FG"
    hups=$((hups + 1))
    next_hup=$((next_hup + HUP_EVERY))
  fi
  if [ "$now" -ge "$next_sample" ]; then
    s=$(sample $((now - START)))
    echo "$s" >>"$WORK/samples"
    echo "$s" | awk '{printf "[soak] t=%5ds rss=%7.1f MiB fds=%4d threads=%3d cache entries=%7d bytes=%6.1f MiB\n", $1, $2 / 1024, $3, $4, $5, $6 / 1048576}' >&2
    next_sample=$((next_sample + SAMPLE_EVERY))
  fi
  sleep 0.2
done
wait "$WRK" || true
kill -0 "$FG" 2>/dev/null || { log "the gateway died"; tail -20 "$WORK/floodgate.log" >&2; exit 1; }
reload_fail=$(metric 'floodgate_reloads_total{kind="config",result="error"}')

# ---- report ------------------------------------------------------------------------------
echo
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $MINUTES min, warm-up ${WARMUP_S}s"
echo "# floodgate threads $PROXY_THREADS, cache max_bytes $MAX_BYTES, /register body $BODY_BYTES B; wrk -t$WRK_THREADS -c$CONNS"
awk '/requests in/ {print "# wrk: " $0} /Requests\/sec/ {print "# wrk: " $0}' "$WORK/wrk.txt"
awk -v w="$WARMUP_S" -v puts="$puts" -v pf="$put_fail" -v hups="$hups" -v rf="$reload_fail" '
  FNR == NR {
    t[NR] = $1; rss[NR] = $2; fds[NR] = $3; thr[NR] = $4; ent[NR] = $5; by[NR] = $6; n = NR; next
  }
  /Non-2xx or 3xx responses:/ { non2xx += $NF }
  /Socket errors:/ { gsub(/,/, ""); failed += $4 + $6 + $8 + $10 }
  / requests in / { reqs = $1 }
  END {
    b = 1; for (i = 1; i <= n; i++) if (t[i] <= w) b = i
    rmin = rss[b]; rmax = rss[b]; fmin = fds[b]; fmax = fds[b]; tmin = thr[b]; tmax = thr[b]
    for (i = b; i <= n; i++) {
      if (rss[i] < rmin) rmin = rss[i]; if (rss[i] > rmax) rmax = rss[i]
      if (fds[i] < fmin) fmin = fds[i]; if (fds[i] > fmax) fmax = fds[i]
      if (thr[i] < tmin) tmin = thr[i]; if (thr[i] > tmax) tmax = thr[i]
    }
    printf "\n| after warm-up (t=%ds..%ds) | at warm-up end | min | max | last | last vs warm-up end |\n", t[b], t[n]
    printf "|---|---:|---:|---:|---:|---:|\n"
    printf "| RSS MiB | %.1f | %.1f | %.1f | %.1f | %+.1f%% |\n", rss[b] / 1024, rmin / 1024, rmax / 1024, rss[n] / 1024, 100 * (rss[n] - rss[b]) / rss[b]
    printf "| open fds | %d | %d | %d | %d | %+d |\n", fds[b], fmin, fmax, fds[n], fds[n] - fds[b]
    printf "| threads | %d | %d | %d | %d | %+d |\n", thr[b], tmin, tmax, thr[n], thr[n] - thr[b]
    printf "\nRSS growth from start: %.1f MiB at warm-up end, %.1f MiB max after, %.1f MiB last; cache %d entries, %.1f MiB charged (last sample)\n", (rss[b] - rss[1]) / 1024, (rmax - rss[1]) / 1024, (rss[n] - rss[1]) / 1024, ent[n], by[n] / 1048576
    printf "requests %d, failed (socket errors) %d, non-2xx %d; map PUTs %d (failed %d); SIGHUPs %d (failed reloads %d)\n", reqs, failed, non2xx, puts, pf, hups, rf
  }' "$WORK/samples" "$WORK/wrk.txt"
