#!/usr/bin/env bash
# Cost of Lua policies on the request path: floodgate without a policy vs the same config with a
# trivial `admit` + `route` policy, same origin, same run.
#
#   benches/policy.sh                                  # build (release, fat LTO: minutes) + run
#   SKIP_BUILD=1 ROUNDS=3 DURATION=10s CONNECTIONS="50 1" benches/policy.sh
#   SKIP_BUILD=1 ORIGIN=sim benches/policy.sh          # the built-in simulated origin, no nginx
#
# What it does:
#   1. builds floodgate in release into $CARGO_TARGET_DIR (default /work/target-bench; cargo
#      waits on the lock if another build is running there);
#   2. starts a fast origin: nginx answering `200 ok` (ORIGIN=nginx, default) or
#      test kit `sim-origin --slots 256 --base-ms 0` (ORIGIN=sim);
#   3. starts two floodgates side by side on their own ports, identical but for the `policy`
#      section: `base` (none) and `policy` (the script below: `admit` checks the path, `route`
#      reads a header; both return nil, so every request pays for the hooks and nothing else);
#   4. warms both up, then for each connection count in $CONNECTIONS runs wrk against each side
#      in turn for $ROUNDS alternating rounds (the order flips every round so drift on a shared
#      machine hits both sides alike);
#   5. prints every round, the medians, and the policy side relative to the base side:
#      req/s loss (goal < 5%) and added p50 latency (goal < 20 us), plus the mean time of one
#      admit/route call from floodgate_policy_duration_seconds.
#
# Reading it: at 50 connections p50 is mostly queueing inside a saturated 2-thread proxy, so a
# few us of added CPU per request shows up multiplied; the 1-connection rows show the latency
# one request pays. On a machine shared with other work, compare rounds, not single numbers.
#
# Loopback only; every process started here is stopped by its PID on exit.
set -euo pipefail

# ---- knobs -------------------------------------------------------------------------------
DURATION=${DURATION:-10s}             # wrk -d per measured run
WARMUP=${WARMUP:-2s}                  # wrk -d of the unmeasured warm-up per side (0 = none)
ROUNDS=${ROUNDS:-3}                   # alternating rounds; medians are reported
CONNECTIONS=${CONNECTIONS:-"50 1"}     # one scenario per count
WRK_THREADS=${WRK_THREADS:-2}
PROXY_THREADS=${PROXY_THREADS:-2}     # floodgate server.threads (both sides)
ORIGIN=${ORIGIN:-nginx}               # nginx | sim
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}             # keep the temp dir (configs, logs, wrk outputs)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
FLOODGATE_BIN=${FLOODGATE_BIN:-$CARGO_TARGET_DIR/release/floodgate}
KIT=${KIT:-$CARGO_TARGET_DIR/release}   # test-kit binaries: sim-origin, sim-storm, bare-proxy
NGINX_BIN=${NGINX_BIN:-nginx}
WRK_BIN=${WRK_BIN:-wrk}

BASE_PORT=${BASE_PORT:-18300}
ORIGIN_ADDR=127.0.0.1:$BASE_PORT
declare -A PROXY_ADDR=([base]=127.0.0.1:$((BASE_PORT + 1)) [policy]=127.0.0.1:$((BASE_PORT + 2)))
declare -A ADMIN_ADDR=([base]=127.0.0.1:$((BASE_PORT + 11)) [policy]=127.0.0.1:$((BASE_PORT + 12)))
SIDES=(base policy)

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/floodgate-policybench.XXXXXX)
PIDS=()

log() { echo "[policy.sh] $*" >&2; }
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"

cleanup() {
  local pid
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && stop_pid "$pid"; done
  if [ "$KEEP_WORK" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { # addr
  local port=${1##*:}
  ! ss -Hltn "sport = :$port" 2>/dev/null | grep -q .
}

need "$WRK_BIN"; need ss; need awk; need curl
[ "$ORIGIN" = sim ] || need "$NGINX_BIN"
for a in "$ORIGIN_ADDR" "${PROXY_ADDR[@]}" "${ADMIN_ADDR[@]}"; do
  port_free "$a" || { log "$a is in use; set BASE_PORT"; exit 1; }
done

# ---- build -------------------------------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
  log "building floodgate (release, fat LTO; several minutes) into $CARGO_TARGET_DIR"
  (cd "$ROOT" && cargo build --release --workspace --bins)
fi
[ -x "$FLOODGATE_BIN" ] || { log "no binary at $FLOODGATE_BIN"; exit 1; }

# ---- configs -----------------------------------------------------------------------------
write_origin_conf() {
  mkdir -p "$WORK/origin"
  local user=""
  # nginx drops privileges to `nobody` when started as root; keep it as the current user.
  [ "$(id -u)" = 0 ] && user="user root root;"
  cat >"$WORK/origin/nginx.conf" <<EOF
$user
daemon off;
master_process on;
pid $WORK/origin/nginx.pid;
error_log $WORK/origin/error.log crit;
worker_processes 1;
worker_rlimit_nofile 20000;
events { worker_connections 8192; multi_accept on; }
http {
$(nginx_http_basics $WORK/origin)
  server {
    listen $ORIGIN_ADDR backlog=4096;
    default_type text/plain;
    location / { return 200 "ok"; }
  }
}
EOF
}

# The policy side's script: both hooks run on every request and return nil (no opinion).
write_policy() {
  cat >"$WORK/trivial.lua" <<'EOF'
-- Trivial admit + route: what every request pays for having a policy at all.
function admit(req)
  if req.path == "/blocked" then
    return { deny = 403 }
  end
  return nil
end

function route(req)
  local node = req.headers["x-node-name"]
  if node ~= nil then
    return { upstream = "origin", set_headers = { ["X-Node"] = node } }
  end
  return nil
end
EOF
}

write_fg_conf() { # side
  local side=$1 policy=""
  [ "$side" = policy ] && policy="policy: { scripts: [\"$WORK/trivial.lua\"] }"
  mkdir -p "$WORK/$side"
  cat >"$WORK/$side/floodgate.yaml" <<EOF
server: { threads: $PROXY_THREADS }
listeners:
  - { name: bench, bind: "${PROXY_ADDR[$side]}" }
admin: { bind: "${ADMIN_ADDR[$side]}" }
access_log: { enabled: false }
upstreams:
  origin:
    servers: [{ name: o1, addr: "$ORIGIN_ADDR" }]
    timeouts: { connect: 5s, read: 60s, idle: 300s }
routes:
  - { name: all, match: { path_prefix: / }, upstream: origin }
$policy
EOF
}

# ---- processes ---------------------------------------------------------------------------
start_origin() {
  if [ "$ORIGIN" = sim ]; then
    "$KIT/sim-origin" --listen "$ORIGIN_ADDR" --slots 256 --base-ms 0 >"$WORK/origin.log" 2>&1 &
  else
    write_origin_conf
    "$NGINX_BIN" -p "$WORK/origin" -c "$WORK/origin/nginx.conf" >"$WORK/origin.log" 2>&1 &
  fi
  PIDS+=("$!")
  wait_port "$ORIGIN_ADDR"
}

start_floodgate() { # side
  local side=$1
  "$FLOODGATE_BIN" check -c "$WORK/$side/floodgate.yaml" >/dev/null
  RUST_LOG=warn "$FLOODGATE_BIN" run -c "$WORK/$side/floodgate.yaml" >"$WORK/$side/out.log" 2>&1 &
  PIDS+=("$!")
  if ! wait_port "${PROXY_ADDR[$side]}"; then
    log "$side did not start:"; cat "$WORK/$side/out.log" >&2 || true; exit 1
  fi
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://${PROXY_ADDR[$side]}/" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  log "$side does not answer 200 through to the origin"; exit 1
}

# ---- wrk ---------------------------------------------------------------------------------
# wrk --latency output -> "rps p50_us p99_us errors requests".
parse_wrk() {
  awk '
    function us(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v + 0 }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v * 1000 }
      if (v ~ /m$/)  { sub(/m$/, "", v); return v * 60000000 }
      if (v ~ /s$/)  { sub(/s$/, "", v); return v * 1000000 }
      return v + 0
    }
    $1 == "50%" { p50 = us($2) }
    $1 == "99%" { p99 = us($2) }
    /^Requests\/sec:/ { rps = $2 }
    / requests in / { reqs = $1 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
    END { printf "%.0f %.1f %.1f %d %d\n", rps, p50, p99, err, reqs }'
}

run_wrk() { # side round connections
  local side=$1 round=$2 conns=$3 threads=$WRK_THREADS out res
  [ "$conns" -lt "$threads" ] && threads=$conns
  out="$WORK/wrk-$conns-$side-$round.txt"
  "$WRK_BIN" -t "$threads" -c "$conns" -d "$DURATION" --latency "http://${PROXY_ADDR[$side]}/" >"$out" 2>&1 || true
  res=$(parse_wrk <"$out")
  echo "$side $round $conns $res" >>"$WORK/rows"
  log "c=$conns round $round $side: req/s p50_us p99_us errors requests = $res"
}

# Mean seconds per call of one hook, from the policy side's histogram.
hook_mean_us() { # hook
  curl -s "http://${ADMIN_ADDR[policy]}/metrics" | awk -v h="$1" '
    index($0, "floodgate_policy_duration_seconds_sum{") == 1 && index($0, "hook=\"" h "\"") { s = $NF }
    index($0, "floodgate_policy_duration_seconds_count{") == 1 && index($0, "hook=\"" h "\"") { c = $NF }
    END { if (c > 0) printf "%.2f us over %d calls", s / c * 1000000, c; else print "no calls" }'
}

# ---- main --------------------------------------------------------------------------------
write_policy
for s in "${SIDES[@]}"; do write_fg_conf "$s"; done
start_origin
for s in "${SIDES[@]}"; do start_floodgate "$s"; done

if [ "$WARMUP" != 0 ] && [ "$WARMUP" != 0s ]; then
  for s in "${SIDES[@]}"; do
    "$WRK_BIN" -t "$WRK_THREADS" -c 50 -d "$WARMUP" "http://${PROXY_ADDR[$s]}/" >/dev/null 2>&1 || true
  done
fi

: >"$WORK/rows"
log "duration=$DURATION rounds=$ROUNDS connections=($CONNECTIONS) wrk_threads=$WRK_THREADS proxy_threads=$PROXY_THREADS origin=$ORIGIN"
for c in $CONNECTIONS; do
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="base policy"; else order="policy base"; fi
    for s in $order; do run_wrk "$s" "$r" "$c"; done
  done
done
ADMIT=$(hook_mean_us admit)
ROUTE=$(hook_mean_us route)

# ---- report ------------------------------------------------------------------------------
echo
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# wrk -t$WRK_THREADS -d$DURATION, $ROUNDS alternating rounds per connection count; floodgate with $PROXY_THREADS threads; origin $ORIGIN"
echo "# policy side: trivial admit (path check) + route (header read), both returning nil"
for c in $CONNECTIONS; do
  echo
  echo "## $c connection(s)"
  echo
  printf "| %-6s | %5s | %9s | %9s | %9s | %6s |\n" side round "req/s" "p50 us" "p99 us" errors
  printf "|%s|%s|%s|%s|%s|%s|\n" "--------" "------:" "----------:" "----------:" "----------:" "-------:"
  awk -v c="$c" '$3 == c' "$WORK/rows" | sort -k2,2n -k1,1 |
    awk '{ printf "| %-6s | %5d | %9d | %9.1f | %9.1f | %6d |\n", $1, $2, $4, $5, $6, $7 }'
  echo
  awk -v c="$c" '
    function median(a, n,    i, j, t) {
      for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    $3 != c { next }
    { n[$1]++; k = n[$1]
      if ($1 == "base") { br[k] = $4; b50[k] = $5; b99[k] = $6 } else { pr[k] = $4; p50[k] = $5; p99[k] = $6 } }
    END {
      mbr = median(br, n["base"]); mb50 = median(b50, n["base"]); mb99 = median(b99, n["base"])
      mpr = median(pr, n["policy"]); mp50 = median(p50, n["policy"]); mp99 = median(p99, n["policy"])
      printf "median base:   %d req/s, p50 %.1f us, p99 %.1f us\n", mbr, mb50, mb99
      printf "median policy: %d req/s, p50 %.1f us, p99 %.1f us\n", mpr, mp50, mp99
      printf "policy/base:   req/s %.3f (%+.1f%%), p50 %.3f (%+.1f us), p99 %.3f (%+.1f us)\n", \
        mpr / mbr, (mpr / mbr - 1) * 100, mp50 / mb50, mp50 - mb50, mp99 / mb99, mp99 - mb99
      printf "goals:         req/s loss < 5%%: %s; added p50 < 20 us: %s\n", \
        ((1 - mpr / mbr) < 0.05 ? "met" : "MISSED"), ((mp50 - mb50) < 20 ? "met" : "MISSED")
    }' "$WORK/rows"
done
echo
echo "hook time (policy side, floodgate_policy_duration_seconds, all runs): admit $ADMIT; route $ROUTE"
