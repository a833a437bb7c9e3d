#!/usr/bin/env bash
# Reverse-proxy throughput benchmark: floodgate vs HAProxy vs nginx vs bare Pingora, same origin,
# same run.
#
#   benches/proxy.sh                       # build (release, fat LTO: minutes) + run everything
#   SKIP_BUILD=1 DURATION=5s benches/proxy.sh
#   SKIP_BUILD=1 PROXIES=floodgate SCENARIOS=ka400 \
#     FG_VARIANTS="fg-ws:2:true:1024 fg-nows:2:false:1024" benches/proxy.sh
#   SKIP_BUILD=1 PROXIES=floodgate BARE=0 SCENARIOS=ka50 ROUNDS=3 RATIO_TO=before \
#     FG_VARIANTS="before:2:true:1024:/tmp/old/floodgate after:2:true:1024" benches/proxy.sh
#   SKIP_BUILD=1 ROUNDS=3 OUT_CSV=/tmp/run.csv benches/proxy.sh ; REPORT_FROM=/tmp/run.csv benches/proxy.sh
#   SKIP_BUILD=1 PERF_DIR=/tmp/perf SCENARIOS=ka50 benches/proxy.sh   # perf record each row
#   SKIP_BUILD=1 BARE=0 benches/proxy.sh   # without the bare-Pingora row
# See benches/README.md for the columns and the measured results.
#
# What it does:
#   1. builds floodgate in release into $CARGO_TARGET_DIR (default /work/target-bench, so the
#      shared debug target dir is not locked);
#   2. starts an origin: nginx answering `200 ok` (2 bytes) on its own port, keep-alive on;
#   3. for every scenario, for every proxy: starts the proxy fresh (plain reverse proxy,
#      upstream keep-alive, logs off, $PROXY_THREADS threads), warms it up, runs wrk, reads
#      its peak RSS (VmHWM, summed over the processes of the proxy) and CPU time, stops it;
#   4. prints one table per scenario (median over ROUNDS of each metric): req/s, p50, p99, peak
#      RSS, CPU per request, upstream connections opened, and ratios to HAProxy (or to the row
#      named by RATIO_TO).
#
# The row `pingora-bare` (on unless BARE=0) is the test kit's `bare-proxy` (tests/support/src/bare.rs):
# the smallest Pingora 0.9.1 proxy (one ProxyHttp impl, LoadBalancer<RoundRobin> with one
# backend, Pingora's defaults otherwise), from the same binary. It is the framework's cost floor:
# what floodgate spends above it is floodgate's own work.
#
# Scenarios: ka50 (keep-alive, 50 connections), ka400 (keep-alive, 400 connections),
# close (50 connections, every request sends `Connection: close`).
#
# Each proxy is restarted per scenario so VmHWM is that scenario's peak, not the largest
# over the whole run. Proxies run one after another inside a scenario (never concurrently).
# Loopback only; every process started here is stopped by its PID on exit.
set -euo pipefail

# ---- knobs -------------------------------------------------------------------------------
DURATION=${DURATION:-10s}             # wrk -d per measured run
WARMUP=${WARMUP:-2s}                  # wrk -d of the unmeasured warm-up run (0 = none)
ROUNDS=${ROUNDS:-1}                   # runs per cell; the median of each metric is reported
WRK_THREADS=${WRK_THREADS:-2}
SCENARIOS=${SCENARIOS:-"ka50 ka400 close"}
BARE=${BARE:-1}                       # 1: add the pingora-bare row to PROXIES (if not already there)
PROXIES=${PROXIES:-"floodgate haproxy nginx"}
[ "$BARE" = 1 ] && case " $PROXIES " in *" pingora-bare "*) ;; *) PROXIES="$PROXIES pingora-bare" ;; esac
PROXY_THREADS=${PROXY_THREADS:-2}     # floodgate/pingora-bare threads, HAProxy nbthread, nginx workers
ORIGIN_WORKERS=${ORIGIN_WORKERS:-1}   # nginx origin worker processes
# floodgate variants, each NAME:THREADS:WORK_STEALING:KEEPALIVE_POOL[:BINARY]; every variant
# becomes one row (the name `floodgate` in PROXIES expands to all of them). BINARY (default
# $FLOODGATE_BIN) lets two builds, e.g. two commits, share one run and one table; rows run one
# after another inside every round, so ROUNDS>1 alternates them.
FG_VARIANTS=${FG_VARIANTS:-"floodgate:$PROXY_THREADS:true:1024"}
FG_BALANCE=${FG_BALANCE:-round_robin}
RATIO_TO=${RATIO_TO:-haproxy}         # the row the ratio columns divide by

SKIP_BUILD=${SKIP_BUILD:-0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
FLOODGATE_BIN=${FLOODGATE_BIN:-$CARGO_TARGET_DIR/release/floodgate}
KIT=${KIT:-$CARGO_TARGET_DIR/release}   # test-kit binaries: sim-origin, sim-storm, bare-proxy
HAPROXY_BIN=${HAPROXY_BIN:-haproxy}
NGINX_BIN=${NGINX_BIN:-nginx}
WRK_BIN=${WRK_BIN:-wrk}
OUT_CSV=${OUT_CSV:-}                  # also write the raw rows here (CSV) when set
KEEP_WORK=${KEEP_WORK:-0}             # keep the temp dir (configs, logs, wrk outputs)
PERF_DIR=${PERF_DIR:-}                # when set: `perf record` each row's measured run (all PIDs of the proxy)
PERF_ARGS=${PERF_ARGS:-"-e cpu-clock -F 999 --call-graph dwarf,16384"}

BASE_PORT=${BASE_PORT:-18100}
ORIGIN_ADDR=127.0.0.1:$BASE_PORT
PROXY_ADDR=127.0.0.1:$((BASE_PORT + 1))  # every proxy listens here (one at a time)
FG_ADMIN_ADDR=127.0.0.1:$((BASE_PORT + 9))

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/floodgate-proxybench.XXXXXX)
PIDS=()

log() { echo "[proxy.sh] $*" >&2; }
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"

cleanup() {
  local pid
  # a proxy still running (interrupted cell) first, with its own stop signal
  [ -n "${PROXY_PID:-}" ] && stop_pid "$PROXY_PID" "${PROXY_STOP_SIG:-TERM}"
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && stop_pid "$pid"; done
  if [ "$KEEP_WORK" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need "$WRK_BIN"; need "$NGINX_BIN"; need "$HAPROXY_BIN"; need ss; need awk; need curl

# nginx drops privileges to `nobody` when started as root; keep it as the current user.
NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root root;"

# ---- report tables -----------------------------------------------------------------------
# Per (scenario, row): the median over rounds of each metric separately (req/s, p50, p99, RSS,
# CPU per request, upstream connections; errors are summed), then ratios to the $RATIO_TO row
# (headed ".../hap" for haproxy, ".../base" otherwise).
report() { # rows-file scenarios rows
  awk -v order="$2" -v roworder="$3" -v base="$RATIO_TO" '
    {
      key = $1 SUBSEP $2; k = ++n[key]
      rps[key, k] = $4; p50[key, k] = $5; p99[key, k] = $6; err[key] += $7
      rss[key, k] = $9; cpu[key, k] = ($8 > 0) ? $10 / $8 : 0; upc[key, k] = $11
    }
    END {
      ns = split(order, scs, " "); nr = split(roworder, rws, " ")
      for (i = 1; i <= ns; i++) {
        sc = scs[i]; h = 0; b = (base == "haproxy") ? "hap" : "base"
        for (j = 1; j <= nr; j++) {
          key = sc SUBSEP rws[j]
          if (!(key in n)) continue
          R[j] = med(rps, key, n[key]); P5[j] = med(p50, key, n[key]); P9[j] = med(p99, key, n[key])
          M[j] = med(rss, key, n[key]); C[j] = med(cpu, key, n[key]); U[j] = med(upc, key, n[key])
          if (rws[j] == base) h = j
        }
        printf "\n## %s\n\n", title(sc)
        printf "| %-16s | %9s | %8s | %8s | %9s | %8s | %6s | %8s | %8s | %8s | %8s | %8s |\n", "proxy", "req/s", "p50 ms", "p99 ms", "RSS MiB", "CPU us/r", "errors", "up conns", "rps/" b, "p50/" b, "p99/" b, "RSS/" b
        printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", "------------------", "----------:", "---------:", "---------:", "----------:", "---------:", "-------:", "---------:", "---------:", "---------:", "---------:", "---------:"
        for (j = 1; j <= nr; j++) {
          key = sc SUBSEP rws[j]
          if (!(key in n)) continue
          printf "| %-16s | %9d | %8.2f | %8.2f | %9.1f | %8.1f | %6d | %8d | %8s | %8s | %8s | %8s |\n", rws[j], R[j], P5[j], P9[j], M[j] / 1024, C[j], err[key], U[j], ratio(R[j], R[h], h), ratio(P5[j], P5[h], h), ratio(P9[j], P9[h], h), ratio(M[j], M[h], h)
        }
      }
    }
    # median of a[key, 1..cnt] (mean of the two middle values for an even count)
    function med(a, key, cnt,   v, x, y, t) {
      for (x = 1; x <= cnt; x++) v[x] = a[key, x] + 0
      for (x = 2; x <= cnt; x++) { t = v[x]; for (y = x - 1; y >= 1 && v[y] > t; y--) v[y + 1] = v[y]; v[y + 1] = t }
      return (cnt % 2) ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2
    }
    function ratio(a, b, have) { return (have && b > 0) ? sprintf("%.2f", a / b) : "-" }
    function title(s) {
      if (s == "ka50") return "keep-alive, 50 connections"
      if (s == "ka400") return "keep-alive, 400 connections"
      if (s == "close") return "Connection: close, 50 connections"
      return s
    }
  ' "$1"
}

# Re-print the tables of an earlier run from its OUT_CSV, without running anything.
if [ -n "${REPORT_FROM:-}" ]; then
  tail -n +2 "$REPORT_FROM" | tr , ' ' >"$WORK/rows"
  report "$WORK/rows" "$(awk '{print $1}' "$WORK/rows" | awk '!seen[$0]++' | paste -sd' ')" \
    "$(awk '{print $2}' "$WORK/rows" | awk '!seen[$0]++' | paste -sd' ')"
  exit 0
fi

# ---- build -------------------------------------------------------------------------------
WANT_FG=0  # the build also makes the pingora-bare row's binary
case " $PROXIES " in *" floodgate "* | *" pingora-bare "*) WANT_FG=1 ;; esac
FG_ROWS=0  # floodgate variants are measured
case " $PROXIES " in *" floodgate "*) FG_ROWS=1 ;; esac
if [ "$WANT_FG" = 1 ] && [ "$SKIP_BUILD" != 1 ]; then
  log "building floodgate (release, fat LTO; several minutes) into $CARGO_TARGET_DIR"
  (cd "$ROOT" && cargo build --release --workspace --bins)
fi

# ---- configs -----------------------------------------------------------------------------
nginx_common() { # prefix
  cat <<EOF
$NGINX_USER
daemon off;
master_process on;
pid $1/nginx.pid;
error_log $1/error.log crit;
worker_rlimit_nofile 20000;
EOF
}

write_origin_conf() {
  mkdir -p "$WORK/origin"
  { nginx_common "$WORK/origin"; cat <<EOF
worker_processes $ORIGIN_WORKERS;
events { worker_connections 8192; multi_accept on; }
http {
$(nginx_http_basics $WORK/origin)
  server {
    listen $ORIGIN_ADDR backlog=4096;
    default_type text/plain;
    location / { return 200 "ok"; }
    location = /__origin_status { stub_status; }
  }
}
EOF
  } >"$WORK/origin/nginx.conf"
}

write_nginx_conf() {
  mkdir -p "$WORK/nginx"
  { nginx_common "$WORK/nginx"; cat <<EOF
worker_processes $PROXY_THREADS;
events { worker_connections 8192; multi_accept on; }
http {
$(nginx_http_basics $WORK/nginx)
  upstream origin {
    server $ORIGIN_ADDR;
    keepalive 1024;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
  }
  server {
    listen $PROXY_ADDR backlog=4096;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering on;
    }
  }
}
EOF
  } >"$WORK/nginx/nginx.conf"
}

write_haproxy_conf() {
  mkdir -p "$WORK/haproxy"
  cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
  nbthread $PROXY_THREADS
  maxconn 8000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 300s
frontend fe
  bind $PROXY_ADDR
  default_backend be
backend be
  server origin $ORIGIN_ADDR
EOF
}

write_fg_conf() { # name threads work_stealing pool
  mkdir -p "$WORK/$1"
  cat >"$WORK/$1/floodgate.yaml" <<EOF
server: { threads: $2, work_stealing: $3, upstream_keepalive_pool: $4 }
listeners:
  - { name: bench, bind: "$PROXY_ADDR" }
admin: { bind: "$FG_ADMIN_ADDR" }
access_log: { enabled: false }
upstreams:
  origin:
    balance: $FG_BALANCE
    servers: [{ name: o1, addr: "$ORIGIN_ADDR" }]
    timeouts: { connect: 5s, read: 60s, idle: 300s }
routes:
  - { name: all, match: { path_prefix: / }, upstream: origin }
EOF
}

# ---- process control ---------------------------------------------------------------------
PROXY_PID=""
PROXY_STOP_SIG=TERM
start_proxy() { # row-name
  local name=$1
  wait_port_free "$PROXY_ADDR"
  PROXY_STOP_SIG=TERM
  case $name in
    haproxy)
      "$HAPROXY_BIN" -db -f "$WORK/haproxy/haproxy.cfg" >"$WORK/haproxy/out.log" 2>&1 &
      PROXY_PID=$! ;;
    nginx)
      "$NGINX_BIN" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx/out.log" 2>&1 &
      PROXY_PID=$! ;;
    pingora-bare)
      mkdir -p "$WORK/$name"
      RUST_LOG=warn "$KIT/bare-proxy" --listen "$PROXY_ADDR" --upstream "$ORIGIN_ADDR" \
        --threads "$PROXY_THREADS" >"$WORK/$name/out.log" 2>&1 &
      PROXY_PID=$!
      # SIGTERM is Pingora's graceful stop with its default 300 s grace period; SIGINT exits now
      PROXY_STOP_SIG=INT ;;
    *)
      RUST_LOG=warn "$(cat "$WORK/$name/bin")" run -c "$WORK/$name/floodgate.yaml" >"$WORK/$name/out.log" 2>&1 &
      PROXY_PID=$! ;;
  esac
  PIDS+=("$PROXY_PID")
  if ! wait_port "$PROXY_ADDR"; then
    log "$name did not start; its output:"; cat "$WORK/$name/out.log" >&2 || true
    exit 1
  fi
  # A request must get through before measuring (floodgate turns ready after its first round).
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$PROXY_ADDR/" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  log "$name does not answer 200 through to the origin"; exit 1
}

stop_proxy() {
  stop_pid "$PROXY_PID" "$PROXY_STOP_SIG"
  PROXY_PID=""
}

# PIDs of a process and its children (nginx master + workers); floodgate/HAProxy: itself.
proc_tree() { echo "$1"; pgrep -P "$1" 2>/dev/null || true; }

peak_rss_kb() { # pid -> sum of VmHWM over the tree
  local total=0 p v
  for p in $(proc_tree "$1"); do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}

cpu_ticks() { # pid -> utime+stime (+ reaped children) over the tree, in clock ticks
  local total=0 p v
  for p in $(proc_tree "$1"); do
    # fields after the ")": state is $1, utime $12, stime $13, cutime $14, cstime $15
    v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13 + $14 + $15}' || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# ---- wrk ---------------------------------------------------------------------------------
WRK_ARGS=()
set_wrk_args() { # scenario -> WRK_ARGS
  case $1 in
    ka50) WRK_ARGS=(-c 50) ;;
    ka400) WRK_ARGS=(-c 400) ;;
    close) WRK_ARGS=(-c 50 -H "Connection: close") ;;
    *) log "unknown scenario $1"; exit 1 ;;
  esac
}

# Parses wrk --latency output into "rps p50_ms p99_ms errors requests".
parse_wrk() {
  awk '
    function ms(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
      if (v ~ /m$/)  { sub(/m$/, "", v); return v * 60000 }
      if (v ~ /s$/)  { sub(/s$/, "", v); return v * 1000 }
      return v + 0
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    / requests in / { reqs = $1 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
    END { printf "%.0f %.3f %.3f %d %d\n", rps, p50, p99, err, reqs }'
}

# Connections the origin has accepted so far (nginx stub_status).
origin_accepts() {
  curl -s "http://$ORIGIN_ADDR/__origin_status" | awk 'NR == 3 {print $1}'
}

run_cell() { # scenario row-name round -> appends a line to $WORK/rows
  local sc=$1 name=$2 round=$3 t0 t1 rss res a0 a1
  set_wrk_args "$sc"
  a0=$(origin_accepts)
  start_proxy "$name"
  if [ "$WARMUP" != 0 ] && [ "$WARMUP" != 0s ]; then
    "$WRK_BIN" -t "$WRK_THREADS" "${WRK_ARGS[@]}" -d "$WARMUP" "http://$PROXY_ADDR/" >/dev/null 2>&1 || true
  fi
  local perf_pid=""
  if [ -n "$PERF_DIR" ]; then
    mkdir -p "$PERF_DIR"
    # shellcheck disable=SC2086
    perf record $PERF_ARGS -p "$(proc_tree "$PROXY_PID" | paste -sd,)" -o "$PERF_DIR/$sc-$name-$round.data" >"$WORK/perf.log" 2>&1 &
    perf_pid=$!; PIDS+=("$perf_pid")
    sleep 0.5
  fi
  t0=$(cpu_ticks "$PROXY_PID")
  "$WRK_BIN" -t "$WRK_THREADS" "${WRK_ARGS[@]}" -d "$DURATION" --latency "http://$PROXY_ADDR/" \
    >"$WORK/wrk-$sc-$name-$round.txt" 2>&1 || true
  t1=$(cpu_ticks "$PROXY_PID")
  rss=$(peak_rss_kb "$PROXY_PID")
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
  fi
  stop_proxy
  a1=$(origin_accepts)
  res=$(parse_wrk <"$WORK/wrk-$sc-$name-$round.txt")
  # cpu: proxy CPU time (us) during the measured run; upconns: connections the proxy opened
  # to the origin over the whole cell (start-up check, warm-up and measured run)
  echo "$sc $name $round $res $rss $(( (t1 - t0) * 1000000 / CLK_TCK )) $((a1 - a0 - 1))" >>"$WORK/rows"
  log "$sc $name round $round: rps p50 p99 errors requests = $res; rss_kb=$rss upstream_conns=$((a1 - a0 - 1))"
}

# ---- main --------------------------------------------------------------------------------
rows_for_proxies() {
  local p v
  for p in $PROXIES; do
    if [ "$p" = floodgate ]; then
      for v in $FG_VARIANTS; do echo "${v%%:*}"; done
    else
      echo "$p"
    fi
  done
}

write_origin_conf
write_haproxy_conf
write_nginx_conf
for v in $FG_VARIANTS; do
  IFS=: read -r n t ws pool bin <<<"$v"
  write_fg_conf "$n" "$t" "$ws" "$pool"
  bin=${bin:-$FLOODGATE_BIN}
  [ "$FG_ROWS" = 0 ] || [ -x "$bin" ] || { log "variant $n: no binary at $bin"; exit 1; }
  echo "$bin" >"$WORK/$n/bin"
done

wait_port_free "$ORIGIN_ADDR"
"$NGINX_BIN" -p "$WORK/origin" -c "$WORK/origin/nginx.conf" >"$WORK/origin/out.log" 2>&1 &
ORIGIN_PID=$!; PIDS+=("$ORIGIN_PID")
wait_port "$ORIGIN_ADDR"

: >"$WORK/rows"
ROWS=$(rows_for_proxies)
log "duration=$DURATION warmup=$WARMUP rounds=$ROUNDS wrk_threads=$WRK_THREADS proxy_threads=$PROXY_THREADS rows: $(echo $ROWS)"
for sc in $SCENARIOS; do
  for r in $(seq 1 "$ROUNDS"); do
    for name in $ROWS; do
      run_cell "$sc" "$name" "$r"
    done
  done
done

# ---- report ------------------------------------------------------------------------------
if [ -n "$OUT_CSV" ]; then
  { echo "scenario,proxy,round,rps,p50_ms,p99_ms,errors,requests,peak_rss_kb,cpu_us,upstream_conns"; tr ' ' , <"$WORK/rows"; } >"$OUT_CSV"
fi
echo
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# wrk -t$WRK_THREADS -d$DURATION, median of $ROUNDS round(s); proxies with $PROXY_THREADS threads; origin nginx ($ORIGIN_WORKERS worker) returning 200 \"ok\""
if [ "$FG_ROWS" = 1 ]; then
  echo "# floodgate binaries: $(for v in $FG_VARIANTS; do printf '%s=%s ' "${v%%:*}" "$(cat "$WORK/${v%%:*}/bin")"; done)"
fi
report "$WORK/rows" "$SCENARIOS" "$(echo $ROWS)"
