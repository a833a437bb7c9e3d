#!/usr/bin/env bash
# Registration-storm benchmark (issue 11): N simulated hosts register against a simulated
# Foreman app server with Foreman's real cost proportions, that never cancels work, through
# floodgate AS SHIPPED (conf/foreman.yaml, timings scaled), HAProxy with stage-aware priority
# and Apache `max=`, side by side in one run.
#
#   benches/storm.sh                                   # build (release) + the issue's cells
#   SKIP_BUILD=1 benches/storm.sh
#   SKIP_BUILD=1 CELLS="burst:1500" TARGETS="floodgate" benches/storm.sh
#   TABLE_FROM=results.jsonl benches/storm.sh          # re-render the table of an OUT_JSONL
#   KEEP_WORK=1 ACCESS_LOG=json RUST_LOG=warn,access=info SKIP_BUILD=1 benches/storm.sh
#
# All timings are Foreman's scaled by SCALE (default 0.1): subscription-manager gives up after
# 180 s (DEADLINE_S 18), the storm ramps over 100 s (RAMP_S 10).
#
# The app server (test kit `sim-origin`): C = 16 Puma slots; `POST /rhsm/consumers` (a new host
# enters; the expensive step) costs CONSUMER_MS +-50% (2 s in real life), every other call
# BASE_MS (0.2 s), `GET /register` RENDER_MS (0.1 s). The service time grows while more than C
# requests are inside (congestive collapse). Like Rails it finishes every request, also for a
# client that has left; it records when each request's work finished, for which host and how
# long it was inside (completions.tsv: host, path, finished Unix ms, inside µs).
#
# The storm (test kit `sim-storm`): each host, on one keep-alive connection, sends
# GET /register (cacheable), POST /rhsm/consumers, then three GET /rhsm/consumers/<uuid>/...
# follow-ups. It passes when all five answer 2xx within DEADLINE_S of its start; a 503 fails it
# at once (no retry). Modes: `ramp` (host i starts at RAMP_S*i/N) and `burst` (all at once).
#
# Per run it reports:
#   pass rate and the physical limit: burst T*C/S hosts, ramp (T+R)*C/S, with S the app work
#     of one host (CONSUMER_MS + 3*BASE_MS + RENDER_MS, no collapse, perfect packing);
#   the app server's peak concurrency (it must never pass max_inflight = C);
#   wasted work: app requests whose work finished after their host had given up, as a share of
#     all app requests served;
#   told within 1 s: failed hosts that got their 503 within 1 s of the request (and the 90th
#     percentile of how long a 503 took).
#
# Targets (each run gets a fresh app server and a fresh gateway):
#   floodgate      conf/foreman.yaml as shipped; only addresses, the admin bind and the
#                  durations tied to the client timeout are rewritten (the shipped queue
#                  timeout and the 180s read timeout, scaled), logs off
#   haproxy-prio   server maxconn C + maxqueue + timeout queue, and
#                  `http-request set-priority-class int(1) if { method POST } { path /rhsm/consumers }`
#                  (new hosts below hosts under way, as floodgate ships), GET /register not cached
#   apache         mod_proxy_balancer BalancerMember max=C acquire= (the seed's setup), one child
#   (also: direct, haproxy (FIFO), floodgate-lua (the shipped config with the example Lua policy
#    instead of route priorities))
#
# Loopback only. Every process started here is stopped by its PID on exit.
set -euo pipefail

# ---- knobs -------------------------------------------------------------------------------
CELLS=${CELLS:-"ramp:1000 ramp:1500 ramp:3000 burst:1500"}
TARGETS=${TARGETS:-"haproxy-prio apache floodgate"}
SCALE=${SCALE:-0.1}
DEADLINE_S=${DEADLINE_S:-18}
RAMP_S=${RAMP_S:-10}
SLOTS=${SLOTS:-16}
BASE_MS=${BASE_MS:-20}
CONSUMER_MS=${CONSUMER_MS:-200}
JITTER=${JITTER:-0.5}
RENDER_MS=${RENDER_MS:-10}
COLLAPSE=${COLLAPSE:-1.0}
QUEUE_MAX=${QUEUE_MAX:-5000}
# FOREMAN_CONF (default: the repository's conf/foreman.yaml) and QUEUE_TIMEOUT_S (HAProxy and
# Apache; default: that config's queue timeout, scaled) are read once ROOT is known, below.
HA_ABORTONCLOSE=${HA_ABORTONCLOSE:-0}
GRACE_S=${GRACE_S:-3}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
# floodgate's access log: off (default, as HAProxy and Apache run here), or a format
# (`json`) written to the kept work directory's floodgate.log (with RUST_LOG=warn,access=info)
ACCESS_LOG=${ACCESS_LOG:-off}
OUT_JSONL=${OUT_JSONL:-}
OUT_MD=${OUT_MD:-}

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
FLOODGATE_BIN=${FLOODGATE_BIN:-$CARGO_TARGET_DIR/release/floodgate}
KIT=${KIT:-$CARGO_TARGET_DIR/release}
HAPROXY_BIN=${HAPROXY_BIN:-haproxy}
APACHE_BIN=${APACHE_BIN:-apache2}
APACHE_MODULES=${APACHE_MODULES:-/usr/lib/apache2/modules}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FOREMAN_CONF=${FOREMAN_CONF:-$ROOT/conf/foreman.yaml}
# the queue timeout floodgate ships (seconds, unscaled): the same wait for every target
SHIPPED_QUEUE_S=$(sed -n 's/^ *queue: {.* timeout: \([0-9.]*\)s.*/\1/p' "$FOREMAN_CONF" | head -n1)
[ -n "$SHIPPED_QUEUE_S" ] || { echo "storm.sh: no 'queue: { ... timeout: Ns' in $FOREMAN_CONF" >&2; exit 1; }
SHIPPED_QUEUE_SCALED=$(awk -v s="$SCALE" -v t="$SHIPPED_QUEUE_S" 'BEGIN { printf "%g", t * s }')
QUEUE_TIMEOUT_S=${QUEUE_TIMEOUT_S:-$SHIPPED_QUEUE_SCALED}
QUEUE_TIMEOUT_MS=$(awk -v t="$QUEUE_TIMEOUT_S" 'BEGIN { printf "%d", t * 1000 }')
WORK=$(mktemp -d /tmp/floodgate-storm.XXXXXX)
PIDS=()
log() { echo "[storm.sh $(date +%T)] $*" >&2; }
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

port_block_free() { # base: nothing listens on base..base+9
  ! ss -Htln 2>/dev/null | awk '{print $4}' | grep -qE ":($(seq -s'|' "$1" $(( $1 + 9 ))))\$"
}
if [ -z "${BASE_PORT:-}" ]; then
  BASE_PORT=23700
  while ! port_block_free "$BASE_PORT"; do BASE_PORT=$((BASE_PORT + 20)); done
fi
ORIGIN_ADDR=127.0.0.1:$BASE_PORT
PROXY_ADDR=127.0.0.1:$((BASE_PORT + 1))
FG_ADMIN_ADDR=127.0.0.1:$((BASE_PORT + 9))

cleanup() {
  local pid
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && stop_pid "$pid"; done
  if [ "$KEEP_WORK" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- build -------------------------------------------------------------------------------
if [ -z "${TABLE_FROM:-}" ]; then
  if [ "$SKIP_BUILD" != 1 ]; then
    log "building floodgate and the test kit (release) into $CARGO_TARGET_DIR"
    (cd "$ROOT" && cargo build --release --workspace --bins >&2)
  fi
  for b in "$FLOODGATE_BIN" "$KIT/sim-origin" "$KIT/sim-storm"; do
    [ -x "$b" ] || { log "no binary at $b"; exit 1; }
  done
  # Private copies: the whole run uses one build even if the target dir is rebuilt meanwhile.
  cp "$FLOODGATE_BIN" "$WORK/floodgate"
  cp "$KIT/sim-origin" "$KIT/sim-storm" "$WORK/"
  FLOODGATE_BIN=$WORK/floodgate
fi

max_hosts=0
for cell in $CELLS; do n=${cell#*:}; [ "$n" -gt "$max_hosts" ] && max_hosts=$n; done

# ---- configs -----------------------------------------------------------------------------
write_haproxy_cfg() { # file with_priority
  local abort="" prio=""
  [ "$HA_ABORTONCLOSE" = 1 ] && abort="  option abortonclose"
  [ "$2" = 1 ] && prio="  http-request set-priority-class int(1) if { method POST } { path /rhsm/consumers }"
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
  timeout queue ${QUEUE_TIMEOUT_MS}ms
frontend fe
  bind ${PROXY_ADDR}
$prio
  default_backend app
backend app
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
LoadModule authn_core_module $APACHE_MODULES/mod_authn_core.so
LoadModule authz_core_module $APACHE_MODULES/mod_authz_core.so
LoadModule slotmem_shm_module $APACHE_MODULES/mod_slotmem_shm.so
LoadModule proxy_module $APACHE_MODULES/mod_proxy.so
LoadModule proxy_http_module $APACHE_MODULES/mod_proxy_http.so
LoadModule proxy_balancer_module $APACHE_MODULES/mod_proxy_balancer.so
LoadModule lbmethod_byrequests_module $APACHE_MODULES/mod_lbmethod_byrequests.so
User www-data
Group www-data
# One child process, so the per-child pool (max=) is the global limit; a thread per host,
# because a request waiting for a pooled connection holds its worker thread.
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
  BalancerMember "http://${ORIGIN_ADDR}" max=${SLOTS} acquire=${QUEUE_TIMEOUT_MS} timeout=${DEADLINE_S} retry=0
</Proxy>
ProxyPass "/" "balancer://app/"
CFG
}

# The shipped conf/foreman.yaml with only what a test bench must change: addresses, the
# durations tied to the client's 180 s timeout (scaled), logs off.
write_floodgate_cfg() { # file variant
  local q=$SHIPPED_QUEUE_SCALED r
  r=$(awk -v s="$SCALE" 'BEGIN { printf "%g", 180 * s }')
  sed -e "s|127.0.0.1:3000|$ORIGIN_ADDR|; s|127.0.0.1:8080|$PROXY_ADDR|; s|127.0.0.1:9901|$FG_ADMIN_ADDR|" \
      -e "s|timeout: ${SHIPPED_QUEUE_S}s|timeout: ${q}s|; s|read: 180s|read: ${r}s|" \
      -e "s|^access_log: .*|access_log: { enabled: false }|" \
      "$FOREMAN_CONF" >"$1"
  if [ "$ACCESS_LOG" != off ]; then
    sed -i -e "s|^access_log: .*|access_log: { format: $ACCESS_LOG }|" "$1"
  fi
  if [ "$2" = floodgate-lua ]; then
    # the example policy instead of the route priorities
    sed -i -e 's|^    priority: [01]$||' -e 's|, priority: 1 }| }|' "$1"
    printf 'policy: { scripts: ["%s"], budget: 2ms, on_error: continue }\n' \
      "$ROOT/scripts/registration-priority.lua" >>"$1"
  fi
  grep -q "$ORIGIN_ADDR" "$1" && grep -q "timeout: ${q}s" "$1" || { log "conf/foreman.yaml changed shape"; return 1; }
}

# ---- one run -----------------------------------------------------------------------------
ORIGIN_PID=""
GW_PID=""

start_origin() {
  wait_port_free "$ORIGIN_ADDR"
  "$WORK/sim-origin" --listen "$ORIGIN_ADDR" --slots "$SLOTS" --base-ms "$BASE_MS" \
    --render-ms "$RENDER_MS" --consumer-ms "$CONSUMER_MS" --jitter "$JITTER" \
    --collapse "$COLLAPSE" --completions "$WORK/completions.tsv" \
    >"$WORK/origin.out" 2>"$WORK/origin.err" &
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
      write_floodgate_cfg "$WORK/$target.yaml" "$target" || return 1
      "$FLOODGATE_BIN" check -c "$WORK/$target.yaml" >&2 || return 1
      wait_port_free "$PROXY_ADDR" || return 1
      RUST_LOG=${RUST_LOG:-warn} "$FLOODGATE_BIN" run -c "$WORK/$target.yaml" >"$WORK/$target.log" 2>&1 &
      GW_PID=$!
      # ready = first health round done
      for _ in $(seq 1 100); do
        curl -sf -o /dev/null "http://$FG_ADMIN_ADDR/readyz" && break
        sleep 0.1
      done ;;
    *) log "unknown target $target"; return 1 ;;
  esac
  PIDS+=("$GW_PID")
  wait_port "$PROXY_ADDR" || return 1
}

# Joins the storm's per-host outcomes with the app's completions: work finished after its host
# had given up is wasted.
wasted_json() { # outcomes.tsv completions.tsv
  awk -F'\t' 'FNR == NR { passed[$1] = $2; end[$1] = $3; next }
              { served++; h = $1
                if (h != "-" && (h in passed) && passed[h] == 0 && $3 > end[h]) wasted++ }
              END { printf "{\"app_served\":%d,\"wasted_after_gone\":%d}", served, wasted }' "$1" "$2"
}

run_one() { # mode hosts target
  local mode=$1 hosts=$2 target=$3 ramp=0 addr=$PROXY_ADDR storm origin rc=0 wasted
  [ "$mode" = ramp ] && ramp=$RAMP_S
  rm -f "$WORK/completions.tsv" "$WORK/outcomes.tsv"
  start_origin
  start_gateway "$target" || rc=$?
  if [ "$rc" != 0 ]; then
    if [ -n "$GW_PID" ]; then stop_pid "$GW_PID"; fi
    stop_pid "$ORIGIN_PID"
    local why="failed to start"; [ "$rc" = 2 ] && why="not installed"
    echo "{\"mode\":\"$mode\",\"hosts\":$hosts,\"target\":\"$target\",\"skipped\":\"$why\"}"
    return 0
  fi
  [ "$target" = direct ] && addr=$ORIGIN_ADDR
  storm=$("$WORK/sim-storm" --target "$addr" --hosts "$hosts" --deadline-s "$DEADLINE_S" \
    --ramp-s "$ramp" --outcomes "$WORK/outcomes.tsv" --json 2>>"$WORK/storm.err")
  sleep "$GRACE_S"   # work still inside the app finishes (and is counted) before it stops
  gw=null
  if [[ $target == floodgate* ]]; then
    gw=$(curl -s --max-time 5 "http://$FG_ADMIN_ADDR/metrics" | tee "$WORK/$target-$mode-$hosts.metrics" \
      | awk '/^floodgate_(admission_rejected_total|upstream_client_gone_total|cache_requests_total)/ {
               n = $1; sub(/^floodgate_/, "", n); gsub(/"/, "", n); printf "%s\"%s\":%s", sep, n, $2; sep = "," }
             BEGIN { printf "{" } END { printf "}" }')
  fi
  stop_pid "$ORIGIN_PID"
  origin=$(tail -n 1 "$WORK/origin.out")
  [ -n "$GW_PID" ] && stop_pid "$GW_PID"
  wasted=$(wasted_json "$WORK/outcomes.tsv" "$WORK/completions.tsv")
  if [ "$KEEP_WORK" = 1 ]; then
    cp "$WORK/outcomes.tsv" "$WORK/outcomes-$target-$mode-$hosts.tsv"
    cp "$WORK/completions.tsv" "$WORK/completions-$target-$mode-$hosts.tsv"
  fi
  echo "{\"mode\":\"$mode\",\"hosts\":$hosts,\"target\":\"$target\",\"ramp_s\":$ramp,\"deadline_s\":$DEADLINE_S,\"storm\":$storm,\"origin\":${origin:-null},\"waste\":$wasted,\"gateway\":$gw}"
}

# ---- table -------------------------------------------------------------------------------
render_table() { # results.jsonl
  SLOTS=$SLOTS BASE_MS=$BASE_MS CONSUMER_MS=$CONSUMER_MS RENDER_MS=$RENDER_MS python3 - "$1" <<'PY'
import json, os, sys
c = int(os.environ["SLOTS"])
work = (float(os.environ["CONSUMER_MS"]) + 3 * float(os.environ["BASE_MS"]) + float(os.environ["RENDER_MS"])) / 1000.0
print("| mode | hosts | target | physical limit | pass | pass / limit | app peak (C) | wasted | failed told <= 1 s | p99 s |")
print("|---|---|---|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "skipped" in r:
        print(f"| {r['mode']} | {r['hosts']} | {r['target']} | | skipped: {r['skipped']} | | | | | |")
        continue
    s, o, w, n = r["storm"], r.get("origin") or {}, r.get("waste") or {}, r["hosts"]
    span = r["deadline_s"] + r["ramp_s"]
    lim = min(1.0, c * span / (n * work))
    ratio = s["pass_rate"] / lim if lim else 0
    served = w.get("app_served", 0)
    wasted = w.get("wasted_after_gone", 0)
    wpct = 100.0 * wasted / served if served else 0
    told = s["told_within_1s"]
    if s.get("told_p90_ms"):
        told = f"{told} (p90 {s['told_p90_ms']/1000:.1f} s)"
    print(f"| {r['mode']} | {n} | {r['target']} | {lim*100:.1f}% | {s['pass_rate']*100:.1f}% | {ratio:.2f} "
          f"| {o.get('max_concurrent','?')} ({c}) | {wasted} of {served} ({wpct:.1f}%) | {told} of {s['failed']} | {s['p99_ms']/1000:.2f} |")
PY
}

if [ -n "${TABLE_FROM:-}" ]; then
  render_table "$TABLE_FROM"
  exit 0
fi

# ---- main --------------------------------------------------------------------------------
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "C=$SLOTS consumer=${CONSUMER_MS}ms+-${JITTER} follow-up=${BASE_MS}ms render=${RENDER_MS}ms collapse=$COLLAPSE deadline=${DEADLINE_S}s ramp=${RAMP_S}s"
log "cells: $CELLS; targets: $TARGETS; ports $BASE_PORT+; work dir $WORK"
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
started=$(date +%s)
for cell in $CELLS; do
  mode=${cell%%:*}; hosts=${cell#*:}
  for target in $TARGETS; do
    t0=$(date +%s)
    run_one "$mode" "$hosts" "$target" >"$WORK/line"
    line=$(cat "$WORK/line")
    echo "$line" | tee -a "$RESULTS"
    [ -n "$OUT_JSONL" ] && echo "$line" >>"$OUT_JSONL"
    log "$mode N=$hosts $target: $(echo "$line" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("skipped" if "skipped" in r else "pass %.1f%% peak %s wasted %s" % (r["storm"]["pass_rate"]*100, r["origin"]["max_concurrent"], r["waste"]["wasted_after_gone"]))') ($(( $(date +%s) - t0 ))s)"
  done
done
log "total $(( $(date +%s) - started ))s"

TABLE=$(render_table "$RESULTS")
echo
echo "$TABLE"
[ -n "$OUT_MD" ] && echo "$TABLE" >"$OUT_MD"
exit 0
