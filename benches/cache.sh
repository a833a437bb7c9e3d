#!/usr/bin/env bash
# Response-cache benchmark (issue 6): floodgate cache hits vs floodgate proxying uncached vs
# nginx proxy_cache hits, same origin, same run; plus single-flight under a cold burst.
#
#   benches/cache.sh                                   # build (release, fat LTO: minutes) + run
#   SKIP_BUILD=1 benches/cache.sh
#   SKIP_BUILD=1 ROUNDS=5 DURATION=10s BURST=500 BURST_TOOLS="curl wrk" benches/cache.sh
#   SKIP_BUILD=1 ROWS="fg-hit nginx-hit" BURST_ROUNDS=0 benches/cache.sh   # throughput only
#   SKIP_BUILD=1 ROUNDS=0 benches/cache.sh                                   # bursts only
#
# The origin is the simulated app server (test kit `sim-origin`, tests/support/src/origin.rs):
# SLOTS worker slots (default 64), GET /register renders in RENDER_MS (default 100 ms), every
# other app request takes BASE_MS (default 1 ms); GET /api/status answers at once and is not
# counted as a render. On SIGTERM it prints its stats as JSON on stdout ({"renders": N, ...});
# that is how renders are counted, so every cell starts its own origin.
#
# Part 1, throughput (wrk, keep-alive, CONNS=50 connections, WRK_THREADS=2, DURATION=10s after a
# WARMUP=2s run; ROUNDS rounds; median of each metric) for URL
# GET /register?activation_keys=ak1&location_id=2, rows:
#   fg-hit       floodgate, route with `cache: { ttl: 300s }`, primed (every request a hit)
#   fg-proxied   floodgate, the same route without `cache:` (every request renders, 100 ms)
#   nginx-hit    nginx, proxy_cache + proxy_cache_lock on + proxy_cache_valid 200 300s, primed
# Each cell starts a fresh origin and a fresh proxy, checks one request goes through
# (/api/status), primes the cache with one request and checks that the next one is a HIT
# (X-Cache: HIT / X-Cache-Status: HIT), warms up, measures, stops both and reads the origin's
# render count. The proxy's CPU time (utime+stime over its process tree, /proc) during the
# measured run divided by the requests gives CPU us/request.
#
# Part 2, single-flight under a cold burst (BURST_ROUNDS rounds, default ROUNDS, for each of
# BURST_TOOLS): a fresh origin and a fresh proxy (empty cache; nginx's cache dir is wiped),
# then BURST concurrent requests for one new key (activation_keys=burst-<tool>-<round>):
#   curl   BURST requests all in flight at once: CURL_PROCS curl processes started together,
#          each `--parallel --parallel-immediate --parallel-max BURST/CURL_PROCS` (curl caps
#          --parallel-max at 300); every request on its own connection
#   wrk    `wrk -c BURST -d BURST_WRK_DURATION` (keeps firing for 2 s: the first wave is cold)
# then stops the origin and reads how many renders it did (1 = perfect coalescing).
#
# Everything runs on 127.0.0.1; ports BASE_PORT..+9 (default: the first free block from 18600).
# The floodgate binary is copied into the temp dir first, so a concurrent rebuild cannot change
# it mid-run. Every process started here is stopped by its PID (TERM, then KILL) on exit.
# KEEP_WORK=1 keeps the temp dir (configs, logs, wrk and curl outputs).
set -euo pipefail

# ---- knobs -------------------------------------------------------------------------------
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
WRK_THREADS=${WRK_THREADS:-2}
ROWS=${ROWS:-"fg-hit fg-proxied nginx-hit"}
PROXY_THREADS=${PROXY_THREADS:-2}     # floodgate server.threads, nginx worker_processes
SLOTS=${SLOTS:-64}
BASE_MS=${BASE_MS:-1}
RENDER_MS=${RENDER_MS:-100}
URL_PATH=${URL_PATH:-"/register?activation_keys=ak1&location_id=2"}
BURST=${BURST:-500}
BURST_ROUNDS=${BURST_ROUNDS:-$ROUNDS}
BURST_TOOLS=${BURST_TOOLS:-"curl wrk"}
BURST_PROXIES=${BURST_PROXIES:-"floodgate nginx"}
BURST_WRK_DURATION=${BURST_WRK_DURATION:-2s}
CURL_PROCS=${CURL_PROCS:-2}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
FLOODGATE_BIN=${FLOODGATE_BIN:-$CARGO_TARGET_DIR/release/floodgate}
KIT=${KIT:-$CARGO_TARGET_DIR/release}   # test-kit binaries: sim-origin, sim-storm, bare-proxy
NGINX_BIN=${NGINX_BIN:-nginx}
WRK_BIN=${WRK_BIN:-wrk}

port_block_free() { # base
  ! ss -Htln 2>/dev/null | awk '{print $4}' | grep -qE ":($(seq -s'|' "$1" $(($1 + 9))))\$"
}
if [ -z "${BASE_PORT:-}" ]; then
  BASE_PORT=18600
  while ! port_block_free "$BASE_PORT"; do BASE_PORT=$((BASE_PORT + 20)); done
fi
ORIGIN_ADDR=127.0.0.1:$BASE_PORT
PROXY_ADDR=127.0.0.1:$((BASE_PORT + 1))   # floodgate or nginx, one at a time
FG_ADMIN_ADDR=127.0.0.1:$((BASE_PORT + 9))

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/floodgate-cachebench.XXXXXX)
PIDS=()

log() { echo "[cache.sh $(date +%T)] $*" >&2; }
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"

cleanup() {
  local pid
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && stop_pid "$pid"; done
  if [ "$KEEP_WORK" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need "$WRK_BIN"; need "$NGINX_BIN"; need ss; need awk; need curl

NGINX_USER=""
[ "$(id -u)" = 0 ] && NGINX_USER="user root root;"

# ---- build, then freeze the binary -------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
  log "building floodgate (release, fat LTO; several minutes) into $CARGO_TARGET_DIR"
  (cd "$ROOT" && cargo build --release --workspace --bins)
fi
[ -x "$FLOODGATE_BIN" ] || { log "no binary at $FLOODGATE_BIN"; exit 1; }
cp "$FLOODGATE_BIN" "$WORK/floodgate"
FG="$WORK/floodgate"
log "floodgate binary: $FLOODGATE_BIN ($(date -u -r "$FLOODGATE_BIN" +%FT%TZ)), copied to $FG"

# ---- configs -----------------------------------------------------------------------------
write_fg_conf() { # file cached(0|1)
  local cache_line="" cache_top=""
  if [ "$2" = 1 ]; then
    cache_line="    cache: { ttl: 300s }"
    cache_top="cache: { memory: { max_bytes: 64MiB } }"
  fi
  cat >"$1" <<EOF
server: { threads: $PROXY_THREADS }
listeners:
  - { name: bench, bind: "$PROXY_ADDR" }
admin: { bind: "$FG_ADMIN_ADDR" }
access_log: { enabled: false }
upstreams:
  origin:
    servers: [{ name: o1, addr: "$ORIGIN_ADDR" }]
    timeouts: { connect: 5s, read: 60s, idle: 300s }
routes:
  - name: register
    match: { path_prefix: /register, methods: [GET, HEAD] }
    upstream: origin
$cache_line
  - { name: all, match: { path_prefix: / }, upstream: origin }
$cache_top
shutdown: { pre_drain: 0s, drain: 2s }
EOF
}

write_nginx_conf() {
  mkdir -p "$WORK/nginx"
  cat >"$WORK/nginx/nginx.conf" <<EOF
$NGINX_USER
daemon off;
master_process on;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log crit;
worker_rlimit_nofile 20000;
worker_processes $PROXY_THREADS;
events { worker_connections 8192; multi_accept on; }
http {
$(nginx_http_basics $WORK/nginx)
  proxy_cache_path $WORK/nginx/cache levels=1:2 keys_zone=bench:10m max_size=256m inactive=10m use_temp_path=off;
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
      proxy_read_timeout 60s;
      proxy_cache bench;
      proxy_cache_lock on;
      proxy_cache_valid 200 300s;
      add_header X-Cache-Status \$upstream_cache_status;
    }
  }
}
EOF
}

write_fg_conf "$WORK/fg-cache.yaml" 1
write_fg_conf "$WORK/fg-nocache.yaml" 0
write_nginx_conf
"$FG" check -c "$WORK/fg-cache.yaml" >/dev/null
"$FG" check -c "$WORK/fg-nocache.yaml" >/dev/null
"$NGINX_BIN" -t -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >/dev/null 2>&1 ||
  { "$NGINX_BIN" -t -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"; exit 1; }

# ---- process control ---------------------------------------------------------------------
ORIGIN_PID=""; ORIGIN_OUT=""
start_origin() { # tag
  ORIGIN_OUT="$WORK/origin-$1.json"
  wait_port_free "$ORIGIN_ADDR"
  RUST_LOG=warn "$KIT/sim-origin" --listen "$ORIGIN_ADDR" --slots "$SLOTS" --base-ms "$BASE_MS" \
    --render-ms "$RENDER_MS" >"$ORIGIN_OUT" 2>"$WORK/origin-$1.log" &
  ORIGIN_PID=$!; PIDS+=("$ORIGIN_PID")
  wait_port "$ORIGIN_ADDR"
}

stop_origin() { # -> prints "renders requests"
  stop_pid "$ORIGIN_PID"; ORIGIN_PID=""
  local r q
  r=$(grep -o '"renders":[0-9]*' "$ORIGIN_OUT" | cut -d: -f2 || true)
  q=$(grep -o '"requests":[0-9]*' "$ORIGIN_OUT" | cut -d: -f2 || true)
  echo "${r:--1} ${q:--1}"
}

PROXY_PID=""
start_proxy() { # floodgate-cache | floodgate-nocache | nginx
  wait_port_free "$PROXY_ADDR"
  case $1 in
    nginx)
      rm -rf "$WORK/nginx/cache"
      "$NGINX_BIN" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" >"$WORK/nginx/out.log" 2>&1 &
      PROXY_PID=$! ;;
    floodgate-cache)
      RUST_LOG=warn "$FG" run -c "$WORK/fg-cache.yaml" >"$WORK/fg.log" 2>&1 &
      PROXY_PID=$! ;;
    floodgate-nocache)
      RUST_LOG=warn "$FG" run -c "$WORK/fg-nocache.yaml" >"$WORK/fg.log" 2>&1 &
      PROXY_PID=$! ;;
  esac
  PIDS+=("$PROXY_PID")
  wait_port "$PROXY_ADDR" || { log "$1 did not start"; cat "$WORK/fg.log" "$WORK/nginx/error.log" >&2 2>/dev/null; exit 1; }
  # one quick request through (not a render), until it answers 200
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$PROXY_ADDR/api/status" 2>/dev/null)" = 200 ] && return 0
    sleep 0.1
  done
  log "$1 does not answer 200 through to the origin"; exit 1
}

stop_proxy() { stop_pid "$PROXY_PID"; PROXY_PID=""; }

cache_status() { # url -> value of X-Cache or X-Cache-Status
  curl -s -o /dev/null -D - "$1" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-cache" || tolower($1) == "x-cache-status" {print $2}'
}

proc_tree() { echo "$1"; pgrep -P "$1" 2>/dev/null || true; }
cpu_ticks() { # pid -> utime+stime (+ reaped children) over the tree, in clock ticks
  local total=0 p v
  for p in $(proc_tree "$1"); do
    v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13 + $14 + $15}' || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

# wrk --latency output -> "rps p50_ms p99_ms errors requests max_ms"
parse_wrk() {
  awk '
    function ms(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
      if (v ~ /m$/)  { sub(/m$/, "", v); return v * 60000 }
      if (v ~ /s$/)  { sub(/s$/, "", v); return v * 1000 }
      return v + 0
    }
    $1 == "Latency" && max == "" { max = ms($4) }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    / requests in / { reqs = $1 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    /Socket errors:/ { gsub(/,/, ""); err += $4 + $6 + $8 + $10 }
    END { printf "%.0f %.3f %.3f %d %d %.3f\n", rps, p50, p99, err, reqs, max }'
}

# ---- part 1: throughput ------------------------------------------------------------------
: >"$WORK/rows"
run_cell() { # row round
  local row=$1 round=$2 proxy url st t0 t1 res rq
  url="http://$PROXY_ADDR$URL_PATH"
  case $row in
    fg-hit) proxy=floodgate-cache ;;
    fg-proxied) proxy=floodgate-nocache ;;
    nginx-hit) proxy=nginx ;;
    *) log "unknown row $row"; exit 1 ;;
  esac
  start_origin "$row-$round"
  start_proxy "$proxy"
  if [ "$row" != fg-proxied ]; then
    curl -s -o /dev/null "$url"
    st=$(cache_status "$url")
    [ "$st" = HIT ] || { log "$row: second request was not a cache hit (got '$st')"; exit 1; }
  fi
  if [ "$WARMUP" != 0 ] && [ "$WARMUP" != 0s ]; then
    "$WRK_BIN" -t "$WRK_THREADS" -c "$CONNS" -d "$WARMUP" "$url" >/dev/null 2>&1 || true
  fi
  t0=$(cpu_ticks "$PROXY_PID")
  "$WRK_BIN" -t "$WRK_THREADS" -c "$CONNS" -d "$DURATION" --latency "$url" >"$WORK/wrk-$row-$round.txt" 2>&1 || true
  t1=$(cpu_ticks "$PROXY_PID")
  stop_proxy
  rq=$(stop_origin)
  res=$(parse_wrk <"$WORK/wrk-$row-$round.txt")
  # row round rps p50 p99 errors requests max cpu_us renders origin_requests
  echo "$row $round $res $(((t1 - t0) * 1000000 / CLK_TCK)) $rq" >>"$WORK/rows"
  log "$row round $round: rps p50 p99 errors requests max = $res; renders origin_requests = $rq"
}

report_throughput() {
  awk -v roworder="$ROWS" '
    {
      key = $1; k = ++n[key]
      rps[key, k] = $3; p50[key, k] = $4; p99[key, k] = $5; err[key] += $6
      cpu[key, k] = ($7 > 0) ? $9 / $7 : 0; ren[key] = ren[key] (ren[key] == "" ? "" : "/") $10
    }
    END {
      nr = split(roworder, rws, " ")
      printf "| %-11s | %9s | %8s | %8s | %8s | %6s | %-17s |\n", "row", "req/s", "p50 ms", "p99 ms", "CPU us/r", "errors", "renders per round"
      printf "|-------------|----------:|---------:|---------:|---------:|-------:|-------------------|\n"
      for (j = 1; j <= nr; j++) {
        key = rws[j]
        if (!(key in n)) continue
        R[key] = med(rps, key, n[key]); P5[key] = med(p50, key, n[key]); P9[key] = med(p99, key, n[key]); C[key] = med(cpu, key, n[key])
        printf "| %-11s | %9d | %8.2f | %8.2f | %8.1f | %6d | %-17s |\n", key, R[key], P5[key], P9[key], C[key], err[key], ren[key]
      }
      printf "\n| ratio | req/s | p50 | p99 | CPU us/r |\n|---|---:|---:|---:|---:|\n"
      line("floodgate-hit / nginx-hit", "fg-hit", "nginx-hit")
      line("floodgate-hit / floodgate-proxied", "fg-hit", "fg-proxied")
    }
    function line(title, a, b) {
      if (!(a in n) || !(b in n)) return
      printf "| %s | %s | %s | %s | %s |\n", title, r(R[a], R[b]), r(P5[a], P5[b]), r(P9[a], P9[b]), r(C[a], C[b])
    }
    function r(x, y) { return (y > 0) ? sprintf("%.3g", x / y) : "-" }
    function med(a, key, cnt,   v, x, y, t) {
      for (x = 1; x <= cnt; x++) v[x] = a[key, x] + 0
      for (x = 2; x <= cnt; x++) { t = v[x]; for (y = x - 1; y >= 1 && v[y] > t; y--) v[y + 1] = v[y]; v[y + 1] = t }
      return (cnt % 2) ? v[(cnt + 1) / 2] : (v[cnt / 2] + v[cnt / 2 + 1]) / 2
    }' "$WORK/rows"
}

# ---- part 2: cold burst ------------------------------------------------------------------
: >"$WORK/bursts"
burst_curl() { # url tag -> "sent ok p50_ms p99_ms max_ms cache-statuses"
  local url=$1 tag=$2 per i p cpids=()
  per=$(((BURST + CURL_PROCS - 1) / CURL_PROCS))
  for p in $(seq 1 "$CURL_PROCS"); do
    for i in $(seq 1 "$per"); do printf 'url = "%s"\noutput = "/dev/null"\n' "$url"; done >"$WORK/curl-$tag-$p.cfg"
  done
  for p in $(seq 1 "$CURL_PROCS"); do
    curl -s --parallel --parallel-immediate --parallel-max "$per" --max-time 60 \
      -w '%{http_code} %{time_total} %header{x-cache}%header{x-cache-status}\n' \
      -K "$WORK/curl-$tag-$p.cfg" >"$WORK/curl-$tag-$p.out" 2>/dev/null &
    cpids+=($!); PIDS+=($!)
  done
  for p in "${cpids[@]}"; do wait "$p" || true; done
  cat "$WORK"/curl-"$tag"-*.out | awk '
    { n++; if ($1 == 200) ok++; t[n] = $2 * 1000; s = ($3 == "") ? "-" : $3; st[s]++ }
    END {
      for (x = 2; x <= n; x++) { v = t[x]; for (y = x - 1; y >= 1 && t[y] > v; y--) t[y + 1] = t[y]; t[y + 1] = v }
      sts = ""; for (s in st) sts = sts (sts == "" ? "" : ",") s ":" st[s]
      printf "%d %d %.1f %.1f %.1f %s\n", n, ok, t[int((n + 1) / 2)], t[int(n * 0.99 + 0.999)], t[n], sts
    }'
}

burst_wrk() { # url tag -> "sent ok p50_ms p99_ms max_ms -"
  "$WRK_BIN" -t "$WRK_THREADS" -c "$BURST" -d "$BURST_WRK_DURATION" --timeout 30s --latency "$1" >"$WORK/burst-wrk-$2.txt" 2>&1 || true
  parse_wrk <"$WORK/burst-wrk-$2.txt" | awk '{printf "%d %d %.1f %.1f %.1f -\n", $5, $5 - $4, $2, $3, $6}'
}

run_burst() { # proxy tool round
  local px=$1 tool=$2 round=$3 tag url res rq
  tag="$px-$tool-$round"
  url="http://$PROXY_ADDR/register?activation_keys=burst-$tool-$round&location_id=2"
  start_origin "burst-$tag"
  if [ "$px" = floodgate ]; then start_proxy floodgate-cache; else start_proxy nginx; fi
  sleep 0.2
  if [ "$tool" = curl ]; then res=$(burst_curl "$url" "$tag"); else res=$(burst_wrk "$url" "$tag"); fi
  sleep 0.3
  stop_proxy
  rq=$(stop_origin)
  # proxy tool round sent ok p50 p99 max statuses renders origin_requests
  echo "$px $tool $round $res $rq" >>"$WORK/bursts"
  log "burst $tag: sent ok p50 p99 max statuses = $res; renders origin_requests = $rq"
}

# ---- main --------------------------------------------------------------------------------
log "ports $BASE_PORT..+9; rounds=$ROUNDS duration=$DURATION warmup=$WARMUP conns=$CONNS rows: $ROWS"
log "origin: slots=$SLOTS base_ms=$BASE_MS render_ms=$RENDER_MS; burst=$BURST x $BURST_ROUNDS round(s), tools: $BURST_TOOLS"
for r in $(seq 1 "$ROUNDS"); do
  for row in $ROWS; do run_cell "$row" "$r"; done
done
for r in $(seq 1 "$BURST_ROUNDS"); do
  for tool in $BURST_TOOLS; do
    for px in $BURST_PROXIES; do run_burst "$px" "$tool" "$r"; done
  done
done

echo
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# origin: test kit sim-origin --slots $SLOTS --base-ms $BASE_MS --render-ms $RENDER_MS; proxies with $PROXY_THREADS threads/workers"
if [ "$ROUNDS" -gt 0 ]; then
  echo "# throughput: wrk -t$WRK_THREADS -c$CONNS -d$DURATION (after ${WARMUP} warm-up) GET $URL_PATH, median of $ROUNDS round(s)"
  echo
  report_throughput
fi
if [ "$BURST_ROUNDS" -gt 0 ]; then
  echo
  echo "# cold burst: $BURST concurrent requests for one new key on a fresh proxy and origin"
  echo "# (curl: exactly $BURST requests, $CURL_PROCS processes x --parallel; wrk: -c$BURST for $BURST_WRK_DURATION)"
  echo
  echo "| proxy | tool | round | requests | 200 | p50 ms | p99 ms | max ms | cache statuses | origin renders |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"
  awk '{printf "| %s | %s | %d | %d | %d | %.1f | %.1f | %.1f | %s | **%d** |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10}' "$WORK/bursts"
fi
