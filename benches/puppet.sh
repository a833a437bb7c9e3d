#!/usr/bin/env bash
# Puppet end to end through floodgate (issue 14, "How it is shown"): a real puppetserver with its
# own CA behind floodgate, and a real `puppet agent -t` through it.
#
#   1. A scratch dir; `puppetserver ca setup` (certname `puppet`, SANs puppet and localhost) and an
#      offline certificate for floodgate (`floodgate.example.com`, SAN localhost) from that CA.
#      puppetserver runs in the foreground (its JVM started directly, every directory in the
#      scratch dir) on HTTPS 127.0.0.1:$PS_PORT with `allow-header-cert-info: true` in auth.conf,
#      so it takes the identity from X-Client-Verify / X-Client-DN / X-Client-Cert only.
#   2. A second "master": a Python HTTPS server with the same host certificate that answers 200
#      and logs every request with its identity headers (a decoy: routing to it is visible).
#   3. floodgate, config derived from conf/puppet.yaml: HTTPS listener with the Puppet CA as client
#      CA (`client_auth: optional`), `client_cert_headers: puppet`, upstream `puppet` with both
#      masters over HTTPS (Puppet CA, SNI `puppet`, floodgate's own certificate), a map keyed by
#      X-Node-Name: node1.example.com -> master1 (puppetserver), node2.example.com -> master2.
#   4. `puppet agent -t` (own confdir, certname node1.example.com, server localhost:$FG_PORT,
#      `http_extra_headers = X-Node-Name:node1.example.com`): the first run sends a CSR;
#      `puppetserver ca sign` signs it through floodgate (the CLI's certificate reaches puppetserver
#      as X-Client-Cert, whose pp_cli_auth extension the certificate_status rule asks for); the
#      second run gets a catalog and applies it (exit 0 or 2). The catalog writes a file holding
#      `$trusted['certname']`, so the file shows the identity puppetserver saw.
#   5. A request with the agent's certificate and X-Node-Name: node2.example.com reaches the decoy.
#   6. A request without a certificate forging X-Client-Verify/-DN for node1: floodgate replaces
#      them (403 from puppetserver); sent straight to puppetserver the same request is believed.
#   7. Checks: floodgate's access log (`server=master1` for the agent's catalog request,
#      `server=master2` for node2), puppetserver's access log (the catalog request for
#      node1.example.com, answered 200), the decoy's log (X-Client-DN: CN=node1.example.com).
#   Prints a table (step, result, seconds) and stops every process it started by PID.
#
# Usage: benches/puppet.sh   (env: BASE_PORT (18140: floodgate; +1 puppetserver, +2 decoy, +9 admin),
#        FLOODGATE_BIN (default target/debug/floodgate, built if missing), KEEP=1 keeps the scratch dir,
#        JAVA_ARGS (default -Xms512m -Xmx1g -XX:TieredStopAtLevel=1))
# Needs: Debian 12 `apt-get install -y puppetserver puppet-agent`, python3, curl, ss.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
log() { echo "[puppet.sh $(date +%T)] $*" >&2; }
# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

BASE_PORT=${BASE_PORT:-18140}
FG_PORT=$BASE_PORT
PS_PORT=$((BASE_PORT + 1))
DECOY_PORT=$((BASE_PORT + 2))
ADMIN_PORT=$((BASE_PORT + 9))
BIN=${FLOODGATE_BIN:-$ROOT/target/debug/floodgate}
JAVA_ARGS=${JAVA_ARGS:--Xms512m -Xmx1g -XX:TieredStopAtLevel=1}
NODE=node1.example.com
CA_CLI=/usr/share/puppetserver/cli/apps/ca

for tool in java puppet python3 curl ss ruby; do need "$tool"; done
[ -x "$CA_CLI" ] || { log "missing $CA_CLI (apt-get install -y puppetserver)"; exit 1; }
if [ ! -x "$BIN" ]; then
  log "building floodgate (debug)"
  (cd "$ROOT" && cargo build --bin floodgate)
fi
for p in $FG_PORT $PS_PORT $DECOY_PORT $ADMIN_PORT; do wait_port_free "127.0.0.1:$p"; done

W=$(mktemp -d /tmp/floodgate-puppet.XXXXXX)
PIDS=()
ROWS=()
FAILED=0
cleanup() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}"; done
  if [ "${KEEP:-0}" = 1 ] || [ "$FAILED" != 0 ]; then log "scratch dir kept: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

T0=0
step_start() { T0=$(date +%s.%N); }
row() { # step result
  local t
  t=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  ROWS+=("$1|$2|$t")
  log "$1: $2 (${t} s)"
}
fail() { # step result
  row "$1" "FAIL: $2"
  FAILED=1
  report
  exit 1
}
report() {
  printf '\n%-44s | %-78s | %6s\n' step result "s"
  printf '%s\n' "---------------------------------------------+--------------------------------------------------------------------------------+-------"
  local r
  for r in "${ROWS[@]}"; do
    IFS='|' read -r a b c <<<"$r"
    printf '%-44s | %-78s | %6s\n' "$a" "$b" "$c"
  done
}
wait_for() { # seconds command...: until the command succeeds
  local deadline=$(($(date +%s) + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

# --- 1. puppetserver: its own CA, confdir and vardir in the scratch dir -------------------------
step_start
S=$W/server
mkdir -p "$S"/{etc,code/environments/production/manifests,var,run,log,gems,conf.d,services.d} "$W/agent"
cat >"$S/etc/puppet.conf" <<EOF
[main]
certname = puppet
server = localhost
masterport = $FG_PORT
ca_port = $FG_PORT
ssldir = $S/etc/ssl
vardir = $S/var
rundir = $S/run
logdir = $S/log
publicdir = $S/public
codedir = $S/code
[server]
cadir = $S/ca
autosign = false
EOF
cat >"$S/code/environments/production/manifests/site.pp" <<EOF
node default {
  file { '$W/agent/applied': content => "certname=\${trusted['certname']} authenticated=\${trusted['authenticated']}\n" }
  notify { "catalog for \${trusted['certname']}": }
}
EOF
"$CA_CLI" setup --config "$S/etc/puppet.conf" --certname puppet \
  --subject-alt-names puppet,localhost >"$W/ca-setup.log" 2>&1 || { cat "$W/ca-setup.log" >&2; fail "puppetserver ca setup" "see $W/ca-setup.log"; }
SSL=$S/etc/ssl
# floodgate's own certificate from the Puppet CA (openssl with the CA's key: `puppetserver ca
# generate` needs a running server, or `--ca-client`, which would make it a CA admin)
openssl req -new -newkey rsa:2048 -nodes -subj /CN=floodgate.example.com \
  -keyout "$SSL/private_keys/floodgate.example.com.pem" -out "$W/fg.csr" 2>>"$W/ca-setup.log"
printf 'subjectAltName=DNS:floodgate.example.com,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$W/fg.ext"
openssl x509 -req -in "$W/fg.csr" -CA "$S/ca/ca_crt.pem" -CAkey "$S/ca/ca_key.pem" -CAcreateserial \
  -days 2 -extfile "$W/fg.ext" -out "$SSL/certs/floodgate.example.com.pem" 2>>"$W/ca-setup.log"
cp /etc/puppet/puppetserver/services.d/* "$S/services.d/"
cp /etc/puppet/puppetserver/conf.d/{ca,metrics,web-routes}.conf "$S/conf.d/"
# auth.conf as shipped, plus header identity (the puppetserver docs' "External SSL termination")
sed 's/^authorization: {/authorization: {\n    allow-header-cert-info: true/' \
  /etc/puppet/puppetserver/conf.d/auth.conf >"$S/conf.d/auth.conf"
grep -q 'allow-header-cert-info: true' "$S/conf.d/auth.conf"
cat >"$S/conf.d/global.conf" <<EOF
global: { logging-config: $S/logback.xml }
EOF
cat >"$S/conf.d/webserver.conf" <<EOF
webserver: {
    access-log-config: $S/request-logging.xml
    client-auth: want
    ssl-host: 127.0.0.1
    ssl-port: $PS_PORT
}
EOF
cat >"$S/conf.d/puppetserver.conf" <<EOF
jruby-puppet: {
    ruby-load-path: [/usr/lib/puppetserver/ruby/vendor_ruby]
    gem-home: $S/gems
    gem-path: [\${jruby-puppet.gem-home}, "/usr/lib/puppetserver/vendored-jruby-gems"]
    server-conf-dir: $S/etc
    server-code-dir: $S/code
    server-var-dir: $S/var
    server-run-dir: $S/run
    server-log-dir: $S/log
    max-active-instances: 1
}
http-client: {}
profiler: {}
EOF
cat >"$S/logback.xml" <<EOF
<configuration>
  <appender name="F" class="ch.qos.logback.core.FileAppender">
    <file>$S/log/puppetserver.log</file>
    <encoder><pattern>%d{HH:mm:ss.SSS} %-5p [%c{2}] %m%n</pattern></encoder>
  </appender>
  <root level="info"><appender-ref ref="F"/></root>
</configuration>
EOF
cat >"$S/request-logging.xml" <<EOF
<configuration>
  <appender name="F" class="ch.qos.logback.core.FileAppender">
    <file>$S/log/access.log</file>
    <encoder><pattern>%h [%t] "%r" %s %b %D</pattern></encoder>
  </appender>
  <appender-ref ref="F"/>
</configuration>
EOF
row "puppetserver CA + configs" "CA for puppet, floodgate.example.com cert"

step_start
# shellcheck disable=SC2086
(cd /usr/share/puppetserver && exec java $JAVA_ARGS -Djruby.logger.class=com.puppetlabs.jruby_utils.jruby.Slf4jLogger \
  -Djruby.lib=/usr/share/jruby/lib -XX:+CrashOnOutOfMemoryError \
  -jar /usr/share/puppetserver/puppetserver.jar \
  --config "$S/conf.d" --bootstrap-config "$S/services.d") >"$S/log/stdout.log" 2>&1 &
PS_PID=$!
PIDS+=("$PS_PID")
ps_up() { kill -0 "$PS_PID" && curl -sk --max-time 5 "https://127.0.0.1:$PS_PORT/status/v1/simple" | grep -q running; }
for _ in $(seq 1 360); do
  ps_up 2>/dev/null && break
  kill -0 "$PS_PID" 2>/dev/null || { tail -30 "$S/log/stdout.log" "$S/log/puppetserver.log" >&2 || true; fail "puppetserver start" "exited"; }
  sleep 0.5
done
ps_up 2>/dev/null || { tail -30 "$S/log/puppetserver.log" >&2 || true; fail "puppetserver start" "not running after 180 s"; }
row "puppetserver start (JVM, $(echo "$JAVA_ARGS" | grep -o -- '-Xmx[^ ]*'))" "https://127.0.0.1:$PS_PORT/status/v1/simple: running"

# --- 2. the second master: a decoy that logs what it gets ---------------------------------------
step_start
cat >"$W/decoy.py" <<'EOF'
import http.server, json, ssl, sys
port, cert, key, logf = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with open(logf, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                                "headers": {k.lower(): v for k, v in self.headers.items()}}) + "\n")
        body = b"decoy master2\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
EOF
python3 "$W/decoy.py" "$DECOY_PORT" "$SSL/certs/puppet.pem" "$SSL/private_keys/puppet.pem" "$W/decoy.log" 2>"$W/decoy.err" &
PIDS+=("$!")
wait_port "127.0.0.1:$DECOY_PORT" || fail "decoy master2" "did not listen"
row "decoy master2 (python HTTPS)" "127.0.0.1:$DECOY_PORT"

# --- 3. floodgate ------------------------------------------------------------------------------
step_start
mkdir -p "$W/fg/maps"
cat >"$W/fg/maps/node-master.map" <<EOF
# X-Node-Name -> master (server of upstream "puppet")
$NODE master1
node2.example.com master2
EOF
FG_CERT=$SSL/certs/floodgate.example.com.pem
FG_KEY=$SSL/private_keys/floodgate.example.com.pem
cat >"$W/fg/floodgate.yaml" <<EOF
# Derived from conf/puppet.yaml: scratch paths and ports, no PuppetDB source.
server: { threads: 2, upgrade_sock: $W/fg/upgrade.sock }
listeners:
  - name: puppet
    bind: "127.0.0.1:$FG_PORT"
    tls:
      cert: $FG_CERT
      key: $FG_KEY
      client_ca: $SSL/certs/ca.pem
      client_auth: optional
    client_cert_headers: puppet
admin:
  bind: "127.0.0.1:$ADMIN_PORT"
  runtime_socket: $W/fg/runtime.sock
upstreams:
  puppet:
    balance: least_conn
    servers:
      - { name: master1, addr: "127.0.0.1:$PS_PORT", max_inflight: 32 }
      - { name: master2, addr: "127.0.0.1:$DECOY_PORT", max_inflight: 32 }
    tls:
      ca: $SSL/certs/ca.pem
      sni: puppet
      cert: $FG_CERT
      key: $FG_KEY
    timeouts: { read: 120s }
    queue: { max: 2000, timeout: 60s }
    health: { path: /status/v1/simple, interval: 2s, rise: 1, fall: 2, expect: 2xx }
  ca:
    servers:
      - { name: master1, addr: "127.0.0.1:$PS_PORT", max_inflight: 32 }
    tls: { ca: $SSL/certs/ca.pem, sni: puppet, cert: $FG_CERT, key: $FG_KEY }
    timeouts: { read: 120s }
    health: { path: /status/v1/simple, interval: 2s, rise: 1, fall: 2, expect: 2xx }
maps:
  node_master:
    file: maps/node-master.map
routes:
  # the CA is one server (master1), whatever X-Node-Name says; so is what carries no X-Node-Name
  - { name: ca, match: { path_prefix: /puppet-ca/ }, upstream: ca }
  - name: puppet
    match: { header: { name: X-Node-Name } }
    upstream: puppet
    pick_server: { map: node_master, key: "header:X-Node-Name", on_miss: balance, redispatch: false }
  - { name: other, match: { path_prefix: / }, upstream: ca }
EOF
"$BIN" check --config "$W/fg/floodgate.yaml" >"$W/fg/check.log" 2>&1 || { cat "$W/fg/check.log" >&2; fail "floodgate check" "config refused"; }
RUST_LOG=info "$BIN" run --config "$W/fg/floodgate.yaml" >"$W/fg/floodgate.log" 2>&1 &
FG_PID=$!
PIDS+=("$FG_PID")
wait_for 30 curl -sf "http://127.0.0.1:$ADMIN_PORT/readyz" || { tail -20 "$W/fg/floodgate.log" >&2; fail "floodgate start" "not ready"; }
up=$(grep -c "server master1 (127.0.0.1:$PS_PORT) is UP: answered 200" "$W/fg/floodgate.log" || true)
[ "$up" -ge 1 ] || { grep health "$W/fg/floodgate.log" >&2; fail "floodgate start" "master1's health check did not answer 200"; }
row "floodgate start" "https://localhost:$FG_PORT; master1 health check 200"

# --- 4. the agent -------------------------------------------------------------------------------
A=$W/agent
mkdir -p "$A/etc"
cat >"$A/etc/puppet.conf" <<EOF
[main]
certname = $NODE
server = localhost
masterport = $FG_PORT
ca_port = $FG_PORT
ssldir = $A/ssl
vardir = $A/var
rundir = $A/run
logdir = $A/log
publicdir = $A/public
[agent]
http_extra_headers = X-Node-Name:$NODE
report = true
EOF
agent() { puppet agent -t --confdir "$A/etc" --codedir "$A/code" --color false "$@"; }

step_start
set +e
agent --waitforcert 0 >"$A/run1.log" 2>&1
rc=$?
set -e
grep -q "certificate_request\|Certificate Request" "$A/run1.log" || { cat "$A/run1.log" >&2; fail "agent run 1 (CSR)" "exit $rc, no CSR sent"; }
wait_for 10 test -s "$S/ca/requests/$NODE.pem" || { cat "$A/run1.log" >&2; fail "agent run 1 (CSR)" "exit $rc, no CSR at the CA"; }
row "agent run 1: CSR through floodgate" "exit $rc; CSR for $NODE at the CA"

step_start
set +e
"$CA_CLI" sign --config "$S/etc/puppet.conf" --certname "$NODE" >"$W/ca-sign.log" 2>&1
rc=$?
set -e
[ "$rc" = 0 ] && [ -s "$S/ca/signed/$NODE.pem" ] || { cat "$W/ca-sign.log" >&2; fail "puppetserver ca sign (through floodgate)" "exit $rc"; }
row "puppetserver ca sign (through floodgate)" "signed $NODE (pp_cli_auth via X-Client-Cert)"

step_start
set +e
agent >"$A/run2.log" 2>&1
rc=$?
set -e
case $rc in 0 | 2) ;; *) cat "$A/run2.log" >&2; fail "agent run 2: catalog" "exit $rc" ;; esac
applied=$(cat "$A/applied" 2>/dev/null || true)
[ "$applied" = "certname=$NODE authenticated=remote" ] || { cat "$A/run2.log" >&2; fail "agent run 2: catalog" "exit $rc, applied file: '$applied'"; }
row "agent run 2: catalog applied" "exit $rc; trusted: $applied"

# --- 5. the map's other master --------------------------------------------------------------------
step_start
out=$(curl -s --cacert "$SSL/certs/ca.pem" --cert "$A/ssl/certs/$NODE.pem" --key "$A/ssl/private_keys/$NODE.pem" \
  -H "X-Node-Name: node2.example.com" -H "X-Client-DN: CN=forged" \
  "https://localhost:$FG_PORT/puppet/v3/environments" || true)
[ "$out" = "decoy master2" ] || fail "X-Node-Name node2 -> master2" "answer: $out"
dn=$(python3 -c 'import json,sys
l=[json.loads(x) for x in open(sys.argv[1]) if "/puppet/v3/environments" in x]
print(l[-1]["headers"].get("x-client-dn","") if l else "")' "$W/decoy.log")
[ "$dn" = "CN=$NODE" ] || fail "X-Node-Name node2 -> master2" "decoy saw X-Client-DN '$dn'"
row "X-Node-Name node2 -> master2 (decoy)" "200; decoy saw X-Client-DN: $dn (forgery stripped)"

# --- 6. a forged identity: floodgate replaces it, puppetserver alone would believe it ----------------
step_start
forge=(-H "X-Client-Verify: SUCCESS" -H "X-Client-DN: CN=$NODE" -H "X-Node-Name: $NODE")
via=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$SSL/certs/ca.pem" "${forge[@]}" \
  "https://localhost:$FG_PORT/puppet/v3/node/$NODE?environment=production" || true)
direct=$(curl -sk -o /dev/null -w '%{http_code}' "${forge[@]}" \
  "https://127.0.0.1:$PS_PORT/puppet/v3/node/$NODE?environment=production" || true)
[ "$via" = 403 ] || fail "forged X-Client-* without a certificate" "through floodgate: $via (want 403)"
row "forged X-Client-* without a certificate" "through floodgate $via; straight to puppetserver $direct"

# --- 7. logs --------------------------------------------------------------------------------------
step_start
fg_cat=$(grep -c "/puppet/v3/catalog/$NODE.*server=master1" "$W/fg/floodgate.log" || true)
fg_m2=$(grep -c "server=master2" "$W/fg/floodgate.log" | tr -d ' ' || true)
ps_cat=$(grep -c "/puppet/v3/catalog/$NODE[^\"]*\" 200" "$S/log/access.log" || true)
[ "$fg_cat" -ge 1 ] && [ "$ps_cat" -ge 1 ] || fail "access logs" "floodgate catalog->master1: $fg_cat, puppetserver catalog 200: $ps_cat"
row "access logs" "floodgate: catalog->master1 x$fg_cat, ->master2 x$fg_m2; puppetserver: catalog 200 x$ps_cat"

report
log "floodgate access lines of the agent's second run:"
grep "server=master" "$W/fg/floodgate.log" | grep -v "/status/v1/simple" | tail -8 >&2 || true
