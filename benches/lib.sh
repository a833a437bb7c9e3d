# Helpers shared by the benchmark scripts (sourced; each script defines its own `log`).
# Every process a script starts is stopped by PID through `stop_pid`.

stop_pid() { # pid [signal]: signal (default TERM), wait up to 5 s, then KILL
  local pid=$1 sig=${2:-TERM}
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

wait_port() { # addr: until something listens there (10 s)
  local host=${1%:*} port=${1##*:}
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  log "port $1 did not open"
  return 1
}

wait_port_free() { # addr: until nothing listens there (10 s)
  local port=${1##*:}
  for _ in $(seq 1 100); do
    ss -Hltn "sport = :$port" 2>/dev/null | grep -q . || return 0
    sleep 0.1
  done
  log "port $1 still in use"
  return 1
}

nginx_http_basics() { # dir: the lines every bench nginx puts in http {}: no access log,
  # long keep-alive, temp files in dir (indented for the block)
  cat <<EOF
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path $1;
  proxy_temp_path $1;
  fastcgi_temp_path $1;
  uwsgi_temp_path $1;
  scgi_temp_path $1;
EOF
}

need() { command -v "$1" >/dev/null || { log "missing $1"; exit 1; }; }
