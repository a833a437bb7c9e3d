#!/usr/bin/env bash
# Map routing under load: a 1,000,000-entry `pick_server` map (node-N.example.com -> masterK).
#
# Measures, on loopback:
#   - load time: floodgate start until /readyz answers 200, with the big map and with an empty
#     one (the difference is the map's share);
#   - memory per entry: (VmRSS with the map - VmRSS with an empty map) / entries;
#   - ROUNDS pairs of wrk runs of DURATION s with random X-Node-Name headers, each pair first
#     without swaps, then while a loop replaces the whole map every second (PUT /maps/nodes, or SWAP_MODE=rename: write a temp
#     file and rename it over the map file);
#   - failed requests (non-2xx/3xx and socket errors), p50/p99 without and with swaps and their
#     ratio, and the swap times (PUT round trip, or rename until /status shows the new version).
#
# Usage: benches/maps.sh   (env: ENTRIES, DURATION, CONNS, THREADS, SWAP_MODE, ROUNDS, RATE, UPLOAD_RATE, JOBS)
# Needs: cargo, wrk, curl, awk, python3. Every process started here is stopped by PID on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
BIN=${FLOODGATE_BIN:-$TARGET_DIR/release/floodgate}
KIT=${KIT:-$TARGET_DIR/release}   # test-kit binaries
ENTRIES=${ENTRIES:-1000000}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
THREADS=${THREADS:-2}
SWAP_MODE=${SWAP_MODE:-put}        # put | rename | sink (control: upload the same bytes elsewhere)
JOBS=${JOBS:-2}
ROUNDS=${ROUNDS:-5}                # alternating (no swaps, swaps) pairs of wrk runs
RATE=${RATE:-0}                    # total req/s to pace wrk at (0: unpaced, saturating)
UPLOAD_RATE=${UPLOAD_RATE:-}       # curl --limit-rate for the PUT/sink uploads (e.g. 100M); empty: full speed

for tool in wrk curl awk python3; do
  command -v "$tool" >/dev/null || { echo "maps.sh needs $tool" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/floodgate-maps-bench.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "[maps.sh] $*" >&2; }
now() { date +%s.%N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

wait_port() { # port
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 did not open" >&2; return 1
}

# --- build ---------------------------------------------------------------------------------
log "building release into $TARGET_DIR (cargo may wait for the lock)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -j "$JOBS" --workspace --bins) >&2

# --- maps ----------------------------------------------------------------------------------
log "generating $ENTRIES-entry maps"
awk -v n="$ENTRIES" 'BEGIN { for (i = 0; i < n; i++) printf "node-%d.example.com master%d\n", i, i % 2 + 1 }' >"$WORK/v1.map"
awk -v n="$ENTRIES" 'BEGIN { for (i = 0; i < n; i++) printf "node-%d.example.com master%d\n", i, (i + 1) % 2 + 1 }' >"$WORK/v2.map"
: >"$WORK/empty.map"
MAP_BYTES=$(stat -c %s "$WORK/v1.map")

# --- origins -------------------------------------------------------------------------------
O1=$(free_port); O2=$(free_port)
for p in "$O1" "$O2"; do
  "$KIT/sim-origin" --listen "127.0.0.1:$p" --slots 64 --base-ms 0 --render-ms 0 --collapse 0 >"$WORK/origin-$p.log" 2>&1 &
  PIDS+=("$!")
done
wait_port "$O1"; wait_port "$O2"

# --- floodgate -----------------------------------------------------------------------------
FG=$(free_port); ADMIN=$(free_port)
write_config() { # map file
  cat >"$WORK/floodgate.yaml" <<YAML
listeners: [{ bind: "127.0.0.1:$FG" }]
admin: { bind: "127.0.0.1:$ADMIN" }
access_log: { enabled: false }
upstreams:
  puppet:
    servers:
      - { name: master1, addr: "127.0.0.1:$O1" }
      - { name: master2, addr: "127.0.0.1:$O2" }
maps:
  nodes: { file: "$1" }
routes:
  - name: puppet
    match: { path_prefix: / }
    upstream: puppet
    pick_server: { map: nodes, key: "header:X-Node-Name", on_miss: balance }
YAML
}

FG_PID=
start_floodgate() { # -> sets FG_PID, LOAD_S
  local t0 t1
  t0=$(now)
  "$BIN" run --config "$WORK/floodgate.yaml" >>"$WORK/floodgate.log" 2>&1 &
  FG_PID=$!; PIDS+=("$FG_PID")
  for _ in $(seq 1 6000); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN/readyz" 2>/dev/null)" = 200 ]; then
      t1=$(now)
      LOAD_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
      return 0
    fi
    kill -0 "$FG_PID" 2>/dev/null || { echo "floodgate exited; log:" >&2; tail -20 "$WORK/floodgate.log" >&2; return 1; }
    sleep 0.02
  done
  echo "floodgate not ready in 120 s" >&2; return 1
}

log "baseline: floodgate with an empty map"
write_config "$WORK/empty.map"
start_floodgate
sleep 1
BASE_LOAD_S=$LOAD_S
BASE_RSS_KB=$(rss_kb "$FG_PID")
stop_pid "$FG_PID"

log "floodgate with the $ENTRIES-entry map"
cp "$WORK/v1.map" "$WORK/nodes.map"
write_config "$WORK/nodes.map"
start_floodgate
sleep 1
MAP_LOAD_S=$LOAD_S
MAP_RSS_KB=$(rss_kb "$FG_PID")
BYTES_PER_ENTRY=$(awk -v a="$BASE_RSS_KB" -v b="$MAP_RSS_KB" -v n="$ENTRIES" 'BEGIN { printf "%.1f", (b - a) * 1024 / n }')
# The table's own heap (as /status reports it): RSS also holds allocator slack and the
# file text read at start, which is freed but not necessarily returned to the OS yet.
HEAP_BYTES=$(curl -s "http://127.0.0.1:$ADMIN/status" | python3 -c 'import sys, json; print(json.load(sys.stdin)["maps"]["nodes"].get("bytes", 0))')
HEAP_PER_ENTRY=$(awk -v b="$HEAP_BYTES" -v n="$ENTRIES" 'BEGIN { printf "%.1f", b / n }')
wait_port "$FG"

if [ "$SWAP_MODE" = sink ]; then
  SINK=$(free_port)
  cat >"$WORK/sink.py" <<'PY'
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
while True:
    c, _ = s.accept()
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            break
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
    got = len(rest)
    while got < n:
        d = c.recv(1 << 20)
        if not d:
            break
        got += len(d)
    c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    c.close()
PY
  python3 "$WORK/sink.py" "$SINK" &
  PIDS+=("$!")
  wait_port "$SINK"
fi

# --- load ----------------------------------------------------------------------------------
PACE_MS=$(awk -v r="$RATE" -v c="$CONNS" 'BEGIN { if (r > 0) printf "%d", c * 1000 / r; else print 0 }')
cat >"$WORK/nodes.lua" <<LUA
local counter = 1
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  math.randomseed(os.time() * 1000 + id)
end
-- RATE > 0: each connection waits CONNS/RATE s between requests (a paced load below
-- saturation); RATE = 0: as fast as possible (saturation: every CPU cycle shows in latency).
function delay()
  return $PACE_MS
end
function request()
  local n = math.random(0, $ENTRIES - 1)
  return wrk.format("GET", "/node", { ["X-Node-Name"] = "node-" .. n .. ".example.com" })
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d p50_us=%d p99_us=%d max_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
    summary.requests, latency:percentile(50), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
LUA

field() { # name line
  echo "$2" | tr ' ' '\n' | awk -F= -v k="$1" '$1 == k { print $2 }'
}

run_wrk() { # label -> prints RESULT line
  wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$WORK/nodes.lua" "http://127.0.0.1:$FG/" >"$WORK/wrk-$1.txt" 2>&1
  grep '^RESULT' "$WORK/wrk-$1.txt"
}

map_version() { # no python here: this runs every 50 ms during the rename swaps
  curl -s "http://127.0.0.1:$ADMIN/status" | sed -n 's/.*"nodes":{[^}]*"version":\([0-9]*\).*/\1/p'
}

swap_loop() { # writes one "code seconds" line per swap into $WORK/swaps.txt until $WORK/stop exists
  local k file t0 t1 el code before rest
  # the count goes on across rounds, so every swap changes the map (v1 and v2 alternate)
  k=$(cat "$WORK/swapk" 2>/dev/null || echo 0)
  while [ ! -e "$WORK/stop" ]; do
    k=$((k + 1))
    echo "$k" >"$WORK/swapk"
    if [ $((k % 2)) = 1 ]; then file=$WORK/v2.map; else file=$WORK/v1.map; fi
    t0=$(now)
    if [ "$SWAP_MODE" = rename ]; then
      before=$(map_version)
      # a hard link renamed over the map: a new inode each time, no 30 MiB copy in the harness
      ln -f "$file" "$WORK/nodes.map.tmp" && mv "$WORK/nodes.map.tmp" "$WORK/nodes.map"
      code=000
      for _ in $(seq 1 500); do
        if [ "$(map_version)" != "$before" ]; then code=200; break; fi
        sleep 0.05
      done
      t1=$(now)
    else
      local target="http://127.0.0.1:$ADMIN/maps/nodes"
      [ "$SWAP_MODE" = sink ] && target="http://127.0.0.1:$SINK/sink"
      code=$(curl -s ${UPLOAD_RATE:+--limit-rate "$UPLOAD_RATE"} -o "$WORK/put.out" -w '%{http_code}' -X PUT -H 'content-type: text/plain' -H 'Expect:' \
        --data-binary "@$file" "$target")
      t1=$(now)
    fi
    el=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    echo "$code $el" >>"$WORK/swaps.txt"
    # one swap per second: sleep what is left of the second, if anything
    rest=$(awk -v e="$el" 'BEGIN { r = 1 - e; printf "%.3f", (r > 0 ? r : 0) }')
    sleep "$rest"
  done
}

# Rounds alternate a run without swaps and a run with them, so that drift in the shared
# machine's load hits both sides alike; the verdict compares the medians of their p99s.
: >"$WORK/swaps.txt"
: >"$WORK/rounds.txt"
for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS: wrk ${DURATION}s without swaps ($THREADS threads, $CONNS connections)"
  R_NOSWAP=$(run_wrk "noswap-$round")
  log "$R_NOSWAP"
  log "round $round/$ROUNDS: wrk ${DURATION}s while the whole map is replaced every second ($SWAP_MODE)"
  rm -f "$WORK/stop"
  swap_loop &
  SWAP_PID=$!; PIDS+=("$SWAP_PID")
  R_SWAP=$(run_wrk "swap-$round")
  touch "$WORK/stop"
  wait "$SWAP_PID" 2>/dev/null || true
  log "$R_SWAP"
  echo "$round $R_NOSWAP | $R_SWAP" >>"$WORK/rounds.txt"
done
# Sums of requests and failures, medians of the latencies, over the rounds.
combine() { # side (1 = without swaps, 2 = with) -> a RESULT-like line
  awk -F' [|] ' -v side="$1" '
    { line = (side == 1 ? $1 : $2); n = split(line, kv, " ")
      for (i = 1; i <= n; i++) if (split(kv[i], p, "=") == 2) v[p[1], NR] = p[2]; rows = NR }
    function med(k,   i, j, t, a) { for (i = 1; i <= rows; i++) a[i] = v[k, i] + 0
      for (i = 1; i <= rows; i++) for (j = i + 1; j <= rows; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return a[int((rows + 1) / 2)] }
    function sum(k,   i, s) { for (i = 1; i <= rows; i++) s += v[k, i]; return s + 0 }
    END { printf "requests=%d p50_us=%d p99_us=%d max_us=%d non2xx=%d connect=%d read=%d write=%d timeout=%d\n",
      sum("requests"), med("p50_us"), med("p99_us"), med("max_us"), sum("non2xx"), sum("connect"), sum("read"), sum("write"), sum("timeout") }' "$WORK/rounds.txt"
}
NOSWAP=$(combine 1)
SWAP=$(combine 2)
ROUND_RATIOS=$(awk -F' [|] ' '{ split($1, a, "p99_us="); split($2, b, "p99_us="); split(a[2], x, " "); split(b[2], y, " ");
  printf "%s%.2f", (NR > 1 ? " " : ""), (x[1] > 0 ? y[1] / x[1] : 0) }' "$WORK/rounds.txt")
AFTER_RSS_KB=$(rss_kb "$FG_PID")
HWM_KB=$(hwm_kb "$FG_PID")
METRICS=$(curl -s "http://127.0.0.1:$ADMIN/metrics")
UPDATES_OK=$(echo "$METRICS" | awk '/^floodgate_map_updates_total\{/ && /result="ok"/ && /source="(api|file)"/ { s += $NF } END { print s + 0 }')
UPDATES_ERR=$(echo "$METRICS" | awk '/^floodgate_map_updates_total\{/ && /result="error"/ { s += $NF } END { print s + 0 }')
HITS=$(echo "$METRICS" | awk '/^floodgate_map_lookups_total\{/ && /result="hit"/ { s += $NF } END { print s + 0 }')
MISSES=$(echo "$METRICS" | awk '/^floodgate_map_lookups_total\{/ && /result="miss"/ { s += $NF } END { print s + 0 }')
stop_pid "$FG_PID"

# --- report --------------------------------------------------------------------------------
SWAPS=$(wc -l <"$WORK/swaps.txt")
SWAPS_OK=$(awk '$1 == 200' "$WORK/swaps.txt" | wc -l)
SWAP_STATS=$(sort -n -k2 "$WORK/swaps.txt" | awk '{ t[NR] = $2; s += $2 } END { if (NR == 0) { print "0 0 0"; exit } printf "%.3f %.3f %.3f", s / NR, t[int((NR + 1) / 2)], t[NR] }')
read -r SWAP_MEAN SWAP_MEDIAN SWAP_MAX <<<"$SWAP_STATS"
fails() { # RESULT line -> failed requests
  echo $(( $(field non2xx "$1") + $(field connect "$1") + $(field read "$1") + $(field write "$1") + $(field timeout "$1") ))
}
P99_RATIO=$(awk -v a="$(field p99_us "$NOSWAP")" -v b="$(field p99_us "$SWAP")" 'BEGIN { printf "%.2f", (a > 0 ? b / a : 0) }')

cat <<REPORT

== floodgate map bench: $ENTRIES entries ($((MAP_BYTES / 1024 / 1024)) MiB map text), $THREADS wrk threads x $CONNS conns$( [ "$RATE" -gt 0 ] && echo " paced at ~$RATE req/s" ), ${DURATION}s per run, swaps by $SWAP_MODE ==
load time to /readyz      : ${MAP_LOAD_S}s with the map, ${BASE_LOAD_S}s with an empty map
memory                    : VmRSS ${BASE_RSS_KB} KiB empty -> ${MAP_RSS_KB} KiB loaded = ${BYTES_PER_ENTRY} bytes/entry (table heap ${HEAP_PER_ENTRY} bytes/entry); after swaps ${AFTER_RSS_KB} KiB, peak (VmHWM) ${HWM_KB} KiB
without swaps (all rounds): $(field requests "$NOSWAP") requests, $(fails "$NOSWAP") failed, p50 $(field p50_us "$NOSWAP") us, p99 $(field p99_us "$NOSWAP") us, max $(field max_us "$NOSWAP") us
with swaps (all rounds)   : $(field requests "$SWAP") requests, $(fails "$SWAP") failed, p50 $(field p50_us "$SWAP") us, p99 $(field p99_us "$SWAP") us, max $(field max_us "$SWAP") us
p99 ratio (swaps / none)  : $P99_RATIO (median of $ROUNDS rounds; per round: $ROUND_RATIOS)
swaps                     : $SWAPS_OK/$SWAPS answered 200; time per swap mean ${SWAP_MEAN}s, median ${SWAP_MEDIAN}s, max ${SWAP_MAX}s
map metrics               : updates ok=$UPDATES_OK error=$UPDATES_ERR; lookups hit=$HITS miss=$MISSES
REPORT
echo "{\"entries\":$ENTRIES,\"load_s\":$MAP_LOAD_S,\"empty_load_s\":$BASE_LOAD_S,\"bytes_per_entry\":$BYTES_PER_ENTRY,\"heap_bytes_per_entry\":$HEAP_PER_ENTRY,\"rss_kb\":{\"empty\":$BASE_RSS_KB,\"loaded\":$MAP_RSS_KB,\"after_swaps\":$AFTER_RSS_KB,\"peak\":$HWM_KB},\"noswap\":{\"requests\":$(field requests "$NOSWAP"),\"failed\":$(fails "$NOSWAP"),\"p99_us\":$(field p99_us "$NOSWAP")},\"swap\":{\"requests\":$(field requests "$SWAP"),\"failed\":$(fails "$SWAP"),\"p99_us\":$(field p99_us "$SWAP")},\"p99_ratio\":$P99_RATIO,\"swaps\":$SWAPS,\"swaps_ok\":$SWAPS_OK,\"swap_s\":{\"mean\":$SWAP_MEAN,\"median\":$SWAP_MEDIAN,\"max\":$SWAP_MAX}}"
