#!/usr/bin/env bash
# Registration-storm benchmark (issue 3): N simulated hosts register against a simulated
# Foreman/Katello app server that collapses under load, directly and through gateways, side by
# side in one run.
#
#   benches/storm.sh                                   # build (release, fat LTO: minutes) + run
#   SKIP_BUILD=1 benches/storm.sh
#   SKIP_BUILD=1 HOSTS_LIST="300 1500" MODES=burst TARGETS="haproxy-prio floodgate" benches/storm.sh
#   TABLE_FROM=results.jsonl benches/storm.sh          # re-render the table of an OUT_JSONL
#
# Defaults (3 N x 2 modes x 5 targets, deadline 20 s, ramp 5 s) take about 8 minutes.
#
# The app server (`floodgate sim-origin`, src/sim/origin.rs): C worker slots (Puma threads); the
# service time of a request is base * (1 + COLLAPSE * max(0, inside - C) / C), so throughput
# falls while more than C requests are inside (congestive collapse); like Rails it finishes the
# work of clients that have gone (counted as `served_for_gone`). GET /register costs RENDER_MS,
# every other app request BASE_MS.
#
# The storm (`floodgate sim-storm`, src/sim/storm.rs): N hosts, each on one keep-alive
# connection: GET /register?activation_keys=ak-<i%4>&location_id=2, POST /rhsm/consumers,
# GET /rhsm/consumers/<uuid>/certificates, GET /rhsm/status. A host passes when all four answer
# 2xx within DEADLINE_S of its start (subscription-manager's 180 s, scaled down); a 503 fails it
# at once (no retry), and a 503 within 1 s counts as "told within 1 s".
# Modes: `ramp` (host i starts at RAMP_S * i / N) and `burst` (all at once).
#
# Targets (each run gets a fresh app server; gateways are started fresh too):
#   direct        the app server alone: shows the collapse
#   haproxy       server maxconn C + maxqueue + timeout queue (+ option abortonclose)
#   haproxy-prio  the same + `http-request set-priority-class int(-1) if { path_beg /rhsm }`
#                 (hosts past GET /register leave the queue first): the best anchor
#   apache        mod_proxy_balancer BalancerMember max=C (the seed's admission control),
#                 acquire= timeout, event MPM with one child so max= is global
#   floodgate     server max_inflight C, upstream queue (timeout just under the deadline,
#                 retry_after auto, fail_fast), GET /register cached (single flight), /rhsm
#                 route priority 1
#   floodgate-lua the same with scripts/registration-priority.lua instead of route priority
#   floodgate-nocache  floodgate without the /register cache (isolates the queue + priority)
# (the last two are not in the default TARGETS). FG_FAIL_FAST=false turns fail_fast off.
# The configs are generated into a temp dir (KEEP_WORK=1 keeps it, with every log).
#
# The physical limit printed per row is min(1, C * (deadline + ramp) / (N * work per host))
# with work per host = RENDER_MS + 3 * BASE_MS of one slot (no collapse, perfect packing); with
# the /register cache only 4 renders are needed at all, so the cached limit uses 3 * BASE_MS.
#
# served_for_gone is counted by the app server until it is stopped, GRACE_S after the storm
# ended; work still inside then is not counted, so for collapsed runs it is a lower bound. It
# only sees its own peer leave, so a gateway that stays connected while its client has gone
# hides it: the "not delivered" column (see render_table) counts that work too.
#
# Output: progress on stderr, one JSON line per run on stdout (and in OUT_JSONL if set), then a
# markdown table (also in OUT_MD if set).
#
# Loopback only. Every process started here is stopped by its PID (TERM, then KILL) on exit.
set -euo pipefail

# ---- knobs -------------------------------------------------------------------------------
HOSTS_LIST=${HOSTS_LIST:-"200 600 1200"}
MODES=${MODES:-"ramp burst"}
TARGETS=${TARGETS:-"direct haproxy haproxy-prio apache floodgate"}
DEADLINE_S=${DEADLINE_S:-20}          # whole-registration deadline per host
RAMP_S=${RAMP_S:-5}                   # spread of host starts in `ramp` mode
SLOTS=${SLOTS:-8}                     # app worker slots C; also every gateway's per-server limit
BASE_MS=${BASE_MS:-20}
RENDER_MS=${RENDER_MS:-100}
COLLAPSE=${COLLAPSE:-1.0}
QUEUE_MAX=${QUEUE_MAX:-5000}          # gateway queue bound (HAProxy maxqueue, floodgate queue.max)
QUEUE_TIMEOUT_S=${QUEUE_TIMEOUT_S:-$((DEADLINE_S - 1))}   # just under the deadline
FG_FAIL_FAST=${FG_FAIL_FAST:-true}
FG_THREADS=${FG_THREADS:-2}
HA_ABORTONCLOSE=${HA_ABORTONCLOSE:-1}
GRACE_S=${GRACE_S:-2}                 # app server keeps running this long after the storm
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
OUT_JSONL=${OUT_JSONL:-}
OUT_MD=${OUT_MD:-}

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
FLOODGATE_BIN=${FLOODGATE_BIN:-$CARGO_TARGET_DIR/release/floodgate}
HAPROXY_BIN=${HAPROXY_BIN:-haproxy}
APACHE_BIN=${APACHE_BIN:-apache2}
APACHE_MODULES=${APACHE_MODULES:-/usr/lib/apache2/modules}

# Ports BASE_PORT..+9 on 127.0.0.1; by default the first block from 23700 (step 20) where
# nothing listens, since other benchmarks may be running on this machine.
port_block_free() { # base
  ! ss -Htln 2>/dev/null | awk '{print $4}' | grep -qE ":($(seq -s'|' "$1" $(( $1 + 9 ))))\$"
}
if [ -z "${BASE_PORT:-}" ]; then
  BASE_PORT=23700
  while ! port_block_free "$BASE_PORT"; do BASE_PORT=$((BASE_PORT + 20)); done
fi
ORIGIN_ADDR=127.0.0.1:$BASE_PORT
PROXY_ADDR=127.0.0.1:$((BASE_PORT + 1))    # every gateway listens here, one at a time
FG_ADMIN_ADDR=127.0.0.1:$((BASE_PORT + 9))

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/floodgate-storm.XXXXXX)
PIDS=()

log() { echo "[storm.sh $(date +%T)] $*" >&2; }

stop_pid() { # pid [signal]: signal (TERM), wait up to 10 s, then KILL
  local pid=$1 sig=${2:-TERM}
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -"$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  log "pid $pid did not stop on $sig: KILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && stop_pid "$pid"; done
  if [ "$KEEP_WORK" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # addr: until it accepts (10 s)
  local host=${1%:*} port=${1##*:}
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  log "port $1 did not open"; return 1
}

wait_port_free() { # addr: until nothing listens there (5 s)
  local host=${1%:*} port=${1##*:}
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null || return 0
    sleep 0.1
  done
  log "port $1 still in use"; return 1
}

# ---- build -------------------------------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
  log "building floodgate (release) into $CARGO_TARGET_DIR"
  (cd "$ROOT" && cargo build --release >&2)
fi
[ -x "$FLOODGATE_BIN" ] || { log "no binary at $FLOODGATE_BIN"; exit 1; }
# A private copy: the whole run uses one binary even if the target dir is rebuilt meanwhile.
cp "$FLOODGATE_BIN" "$WORK/floodgate"
FLOODGATE_BIN=$WORK/floodgate

max_hosts=0
for n in $HOSTS_LIST; do [ "$n" -gt "$max_hosts" ] && max_hosts=$n; done

# ---- configs -----------------------------------------------------------------------------
write_haproxy_cfg() { # file with_priority
  local abort="" prio=""
  [ "$HA_ABORTONCLOSE" = 1 ] && abort="  option abortonclose"
  [ "$2" = 1 ] && prio="  http-request set-priority-class int(-1) if { path_beg /rhsm }"
  cat >"$1" <<CFG
global
  maxconn $((max_hosts * 2 + 1000))
  nbthread 2
defaults
  mode http
  option http-keep-alive
$abort
  timeout connect 2s
  timeout client ${DEADLINE_S}s
  timeout server ${DEADLINE_S}s
  timeout http-keep-alive ${DEADLINE_S}s
  timeout queue ${QUEUE_TIMEOUT_S}s
frontend fe
  bind ${PROXY_ADDR}
$prio
  default_backend app
backend app
  # maxconn = requests inside the app; maxqueue = waiting ones; past either (or after
  # timeout queue) HAProxy answers 503.
  server app1 ${ORIGIN_ADDR} maxconn ${SLOTS} maxqueue ${QUEUE_MAX}
CFG
}

write_apache_cfg() { # file
  local threads=$((max_hosts + 64))
  mkdir -p "$WORK/apache"
  chmod 755 "$WORK" "$WORK/apache"
  cat >"$1" <<CFG
ServerRoot "$WORK/apache"
ServerName localhost
Listen ${PROXY_ADDR}
PidFile "$WORK/apache/httpd.pid"
DefaultRuntimeDir "$WORK/apache"
ErrorLog "$WORK/apache/error.log"
LogLevel warn
LoadModule mpm_event_module $APACHE_MODULES/mod_mpm_event.so
LoadModule authz_core_module $APACHE_MODULES/mod_authz_core.so
LoadModule slotmem_shm_module $APACHE_MODULES/mod_slotmem_shm.so
LoadModule proxy_module $APACHE_MODULES/mod_proxy.so
LoadModule proxy_http_module $APACHE_MODULES/mod_proxy_http.so
LoadModule proxy_balancer_module $APACHE_MODULES/mod_proxy_balancer.so
LoadModule lbmethod_byrequests_module $APACHE_MODULES/mod_lbmethod_byrequests.so
User www-data
Group www-data
# One child process, so the per-child connection pool (max=) is the global limit; a thread per
# host, because a request waiting for a pooled connection holds its worker thread.
ServerLimit 1
StartServers 1
ThreadLimit $threads
ThreadsPerChild $threads
MaxRequestWorkers $threads
MinSpareThreads 1
MaxSpareThreads $threads
MaxConnectionsPerChild 0
ListenBacklog 4096
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout ${DEADLINE_S}
Timeout ${DEADLINE_S}
<Proxy "balancer://app">
  # max= as in the seed (theforeman/foremanctl#495); acquire= = HAProxy's timeout queue;
  # retry=0 so a busy pool never puts the only member into its 60 s error state.
  BalancerMember "http://${ORIGIN_ADDR}" max=${SLOTS} acquire=$((QUEUE_TIMEOUT_S * 1000)) timeout=${DEADLINE_S} retry=0
</Proxy>
ProxyPass "/" "balancer://app/"
CFG
}

write_floodgate_cfg() { # file variant
  local variant=$2 rhsm_prio="    priority: 1" cache="    cache: { ttl: 300s }" policy=""
  case $variant in
    floodgate-lua)
      rhsm_prio=""
      policy="policy: { scripts: [\"$ROOT/scripts/registration-priority.lua\"], budget: 2ms, on_error: continue }" ;;
    floodgate-nocache) cache="" ;;
  esac
  cat >"$1" <<CFG
# Generated by benches/storm.sh ($variant).
server: { threads: $FG_THREADS, upstream_keepalive_pool: 1024 }
listeners:
  - { name: public, bind: "$PROXY_ADDR" }
admin: { bind: "$FG_ADMIN_ADDR" }
access_log: { enabled: false }
upstreams:
  app:
    servers:
      - { name: app1, addr: "$ORIGIN_ADDR", max_inflight: $SLOTS }
    timeouts: { connect: 2s, read: ${DEADLINE_S}s, write: 10s, idle: 60s }
    queue: { max: $QUEUE_MAX, timeout: ${QUEUE_TIMEOUT_S}s, retry_after: auto, fail_fast: $FG_FAIL_FAST }
routes:
  - name: register
    match: { path: /register, methods: [GET, HEAD] }
    upstream: app
$cache
  - name: rhsm
    match: { path_prefix: /rhsm }
    upstream: app
$rhsm_prio
  - { name: default, match: { path_prefix: / }, upstream: app }
$policy
cache:
  memory: { max_bytes: 64MiB }
  wait_timeout: ${QUEUE_TIMEOUT_S}s
shutdown: { pre_drain: 0s, drain: 1s, ceiling: 3s }
CFG
}

# ---- one run -----------------------------------------------------------------------------
ORIGIN_PID=""
GW_PID=""

start_origin() {
  wait_port_free "$ORIGIN_ADDR"
  "$FLOODGATE_BIN" sim-origin --listen "$ORIGIN_ADDR" --slots "$SLOTS" --base-ms "$BASE_MS" \
    --render-ms "$RENDER_MS" --collapse "$COLLAPSE" >"$WORK/origin.out" 2>"$WORK/origin.err" &
  ORIGIN_PID=$!; PIDS+=("$ORIGIN_PID")
  wait_port "$ORIGIN_ADDR"
}

start_gateway() { # target; sets GW_PID (empty for direct); returns 2 when unavailable
  local target=$1
  GW_PID=""
  case $target in
    direct) return 0 ;;
    haproxy|haproxy-prio)
      command -v "$HAPROXY_BIN" >/dev/null || return 2
      local prio=0; [ "$target" = haproxy-prio ] && prio=1
      write_haproxy_cfg "$WORK/$target.cfg" "$prio"
      "$HAPROXY_BIN" -c -q -f "$WORK/$target.cfg" >&2 || return 1
      wait_port_free "$PROXY_ADDR" || return 1
      "$HAPROXY_BIN" -db -f "$WORK/$target.cfg" >"$WORK/$target.log" 2>&1 &
      GW_PID=$! ;;
    apache)
      command -v "$APACHE_BIN" >/dev/null || return 2
      write_apache_cfg "$WORK/apache.conf"
      "$APACHE_BIN" -t -f "$WORK/apache.conf" >&2 2>"$WORK/apache-t.log" || { cat "$WORK/apache-t.log" >&2; return 1; }
      wait_port_free "$PROXY_ADDR" || return 1
      "$APACHE_BIN" -f "$WORK/apache.conf" -DFOREGROUND >"$WORK/apache.log" 2>&1 &
      GW_PID=$! ;;
    floodgate*)
      write_floodgate_cfg "$WORK/$target.yaml" "$target"
      "$FLOODGATE_BIN" check -c "$WORK/$target.yaml" >&2 || return 1
      wait_port_free "$PROXY_ADDR" || return 1
      RUST_LOG=${RUST_LOG:-warn} "$FLOODGATE_BIN" run -c "$WORK/$target.yaml" >"$WORK/$target.log" 2>&1 &
      GW_PID=$! ;;
    *) log "unknown target $target"; return 1 ;;
  esac
  PIDS+=("$GW_PID")
  wait_port "$PROXY_ADDR" || return 1
}

run_one() { # mode hosts target
  local mode=$1 hosts=$2 target=$3 ramp=0 addr=$PROXY_ADDR storm origin rc=0
  [ "$mode" = ramp ] && ramp=$RAMP_S
  start_origin
  start_gateway "$target" || rc=$?
  if [ "$rc" = 2 ]; then
    stop_pid "$ORIGIN_PID"
    echo "{\"mode\":\"$mode\",\"hosts\":$hosts,\"target\":\"$target\",\"skipped\":\"not installed\"}"
    return 0
  elif [ "$rc" != 0 ]; then
    if [ -n "$GW_PID" ]; then stop_pid "$GW_PID"; fi
    stop_pid "$ORIGIN_PID"
    echo "{\"mode\":\"$mode\",\"hosts\":$hosts,\"target\":\"$target\",\"skipped\":\"failed to start\"}"
    return 0
  fi
  [ "$target" = direct ] && addr=$ORIGIN_ADDR
  storm=$("$FLOODGATE_BIN" sim-storm --target "$addr" --hosts "$hosts" \
    --deadline-s "$DEADLINE_S" --ramp-s "$ramp" --json 2>>"$WORK/storm.err")
  sleep "$GRACE_S"
  gw=null
  if [[ $target == floodgate* ]]; then
    # admission outcomes by reason, from the gateway's Prometheus metrics
    gw=$(curl -s --max-time 5 "http://$FG_ADMIN_ADDR/metrics" | tee "$WORK/$target-$mode-$hosts.metrics" \
      | awk '/^floodgate_(admission_rejected_total|admission_abandoned_total|cache_requests_total)/ {
               n = $1; sub(/^floodgate_/, "", n); gsub(/"/, "", n); printf "%s\"%s\":%s", sep, n, $2; sep = "," }
             BEGIN { printf "{" } END { printf "}" }')
  fi
  stop_pid "$ORIGIN_PID"
  origin=$(tail -n 1 "$WORK/origin.out")
  [ -n "$GW_PID" ] && stop_pid "$GW_PID"
  if [ -n "$GW_PID" ] && [ "$KEEP_WORK" = 1 ]; then
    cp "$WORK/$target.log" "$WORK/$target-$mode-$hosts.log" 2>/dev/null || true
  fi
  echo "{\"mode\":\"$mode\",\"hosts\":$hosts,\"target\":\"$target\",\"ramp_s\":$ramp,\"deadline_s\":$DEADLINE_S,\"storm\":$storm,\"origin\":${origin:-null},\"gateway\":$gw}"
}

# ---- table -------------------------------------------------------------------------------
# "not delivered" = requests the app server received minus app answers that reached a host
# (2xx received by hosts, less those served from the gateway cache): work done (or still being
# done when the app was stopped) for hosts that had gone or had been answered otherwise. It
# also catches what the app's own served_for_gone cannot see: a gateway still connected to the
# app while its client has left (Apache).
render_table() { # results.jsonl
  SLOTS=$SLOTS BASE_MS=$BASE_MS RENDER_MS=$RENDER_MS python3 - "$1" <<'PY'
import json, os, sys
c = int(os.environ["SLOTS"]); base = float(os.environ["BASE_MS"]); render = float(os.environ["RENDER_MS"])
w_full = (render + 3 * base) / 1000.0   # slot-seconds of app work per host
w_cached = 3 * base / 1000.0            # ... when GET /register is served from a cache
print("| mode | N | target | limit (cached) | pass | p50 s | p99 s | served for gone | not delivered | /register renders | told <=1 s (all 503) | deadline missed | app max inside |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "skipped" in r:
        print(f"| {r['mode']} | {r['hosts']} | {r['target']} | | skipped: {r['skipped']} | | | | | | | | |")
        continue
    s, o, g, n = r["storm"], r.get("origin") or {}, r.get("gateway") or {}, r["hosts"]
    span = r["deadline_s"] + r["ramp_s"]
    lim = min(1.0, c * span / (n * w_full)); limc = min(1.0, c * span / (n * w_cached))
    ok = sum(v for k, v in s["by_status"].items() if k.startswith("2"))
    from_cache = sum(v for k, v in g.items() if k.startswith("cache_requests_total") and ("result=hit" in k or "result=coalesced" in k))
    undelivered = o["requests"] - (ok - from_cache) if "requests" in o else "?"
    other = s["failed"] - s["rejected_503"] - s["deadline_exceeded"]
    missed = f"{s['deadline_exceeded']}" + (f" (+{other} other)" if other else "")
    print(f"| {r['mode']} | {n} | {r['target']} | {lim*100:.0f}% ({limc*100:.0f}%) | {s['pass_rate']*100:.1f}% "
          f"| {s['p50_ms']/1000:.2f} | {s['p99_ms']/1000:.2f} | {o.get('served_for_gone','?')} | {undelivered} | {o.get('renders','?')} "
          f"| {s['told_within_1s']} ({s['rejected_503']}) | {missed} | {o.get('max_concurrent','?')} |")
PY
}

if [ -n "${TABLE_FROM:-}" ]; then   # only render the table of an earlier run's OUT_JSONL
  render_table "$TABLE_FROM"
  exit 0
fi

# ---- main --------------------------------------------------------------------------------
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "C=$SLOTS base=${BASE_MS}ms render=${RENDER_MS}ms collapse=$COLLAPSE deadline=${DEADLINE_S}s ramp=${RAMP_S}s queue=$QUEUE_MAX/${QUEUE_TIMEOUT_S}s"
log "hosts: $HOSTS_LIST; modes: $MODES; targets: $TARGETS; ports $BASE_PORT+; work dir $WORK"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
started=$(date +%s)
for mode in $MODES; do
  for hosts in $HOSTS_LIST; do
    for target in $TARGETS; do
      t0=$(date +%s)
      # not in $(...): run_one records its PIDs for the exit trap
      run_one "$mode" "$hosts" "$target" >"$WORK/line"
      line=$(cat "$WORK/line")
      echo "$line" | tee -a "$RESULTS"
      [ -n "$OUT_JSONL" ] && echo "$line" >>"$OUT_JSONL"
      log "$mode N=$hosts $target: $(echo "$line" | jq -r 'if .skipped then "skipped (\(.skipped))" else "pass \(.storm.pass_rate*100|floor)% served_for_gone \(.origin.served_for_gone // "?")" end') ($(( $(date +%s) - t0 ))s)"
    done
  done
done
log "total $(( $(date +%s) - started ))s"

TABLE=$(render_table "$RESULTS")
echo
echo "$TABLE"
[ -n "$OUT_MD" ] && echo "$TABLE" >"$OUT_MD"
exit 0
