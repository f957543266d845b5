#!/usr/bin/env bash
# `make bench`: edgepin, HAProxy and nginx side by side on the same machine, cores and
# backends, in one run. See benches/README.md for what each scenario measures.
#
# Layout: the proxy runs alone on PROXY_CPUS; wrk, bench-client and the four backends
# share LOAD_CPUS. Each scenario starts a fresh proxy, runs, and stops it; the
# repetitions interleave the proxies so a disturbance of the machine hits all alike.
# Every process started here is stopped by pid on exit (trap), every run is bounded by
# `timeout`, and all traffic stays on 127.0.0.1.
#
# Knobs (environment): QUICK=1 (one repetition of 5 s), REPS, DURATION (seconds),
# THREADS (proxy threads/workers), PROXY_CPUS, LOAD_CPUS, TARGETS, SCENARIOS,
# CONNECTIONS (wrk -c), H2_CONNECTIONS and H2_STREAMS (h2load -c and -m),
# WS_IDLE (idle WebSockets), WS_ECHO (echo connections),
# WS_ECHO_INTERVAL_MS, BASE_PORT, NEIGHBOUR=1 (a CPU-bound loop pinned to PROXY_CPUS for
# the whole run: the proxy then shares its core, as on a busy host).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${QUICK:-}" ]; then
  REPS=${REPS:-1} DURATION=${DURATION:-5}
fi
REPS=${REPS:-3}
DURATION=${DURATION:-10}
THREADS=${THREADS:-1}
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1}
TARGETS=${TARGETS:-"direct edgepin haproxy nginx"}
SCENARIOS=${SCENARIOS:-"rest_plain rest_tls rest_h2 tls_handshake tls_resume sticky ws_echo ws_idle wss_idle reload"}
CONNECTIONS=${CONNECTIONS:-64}
H2_CONNECTIONS=${H2_CONNECTIONS:-8}
H2_STREAMS=${H2_STREAMS:-16}
WS_IDLE=${WS_IDLE:-5000}
WS_ECHO=${WS_ECHO:-100}
WS_ECHO_INTERVAL_MS=${WS_ECHO_INTERVAL_MS:-10}
BASE_PORT=${BASE_PORT:-18100}
NEIGHBOUR=${NEIGHBOUR:-0}
WARMUP=1 # seconds of load before each measured wrk run

HTTP_PORT=$BASE_PORT
HTTPS_PORT=$((BASE_PORT + 1))
STATS_PORT=$((BASE_PORT + 2))
BACKEND_PORTS=($((BASE_PORT + 11)) $((BASE_PORT + 12)) $((BASE_PORT + 13)) $((BASE_PORT + 14)))
EXAMPLES=$ROOT/target/bench-tools/examples
EDGEPIN=${EDGEPIN:-$ROOT/target/release/edgepin}
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=$ROOT/target/bench
RUN=$OUT/run-$STAMP
RESULTS=$RUN/results.tsv

STARTED=()     # pids to stop on exit
PROXY_PIDS=""  # the running proxy's processes, comma-separated
PROXY_TARGET=""

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

alive() { # PID: running (not gone, not a zombie waiting to be reaped)
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat:0:1}" != Z ]
}

stop_pid() { # PID [SIGNAL]: stop one process, wait up to 5 s, then kill it
  local pid=$1 sig=${2:-TERM}
  if alive "$pid"; then
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      alive "$pid" || break
      sleep 0.05
    done
  fi
  if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
  STARTED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- helpers

children_of() { # PID: pids of its direct children (nginx workers)
  local parent=$1 f fields ppid
  for f in /proc/[0-9]*/stat; do
    fields=$(cat "$f" 2>/dev/null) || continue
    fields=${fields##*) }
    read -r _ ppid _ <<<"$fields"
    [ "$ppid" = "$parent" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
  done
  return 0
}

cpu_ticks() { # PIDS (comma-separated): user + system clock ticks of these processes
  local pid stat total=0
  for pid in ${1//,/ }; do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    set -- $stat
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}

ctx_switches() { # PIDS (comma-separated) FIELD: FIELD (voluntary_ctxt_switches or
  # nonvoluntary_ctxt_switches) summed over every thread of these processes
  local pid total=0 n
  for pid in ${1//,/ }; do
    for n in $(sed -n "s/^$2:[[:space:]]*//p" /proc/"$pid"/task/*/status 2>/dev/null); do
      total=$((total + n))
    done
  done
  echo "$total"
}

wait_port() { # PORT: until something accepts on 127.0.0.1:PORT (10 s)
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

http_ok() ( # PORT PATH: one GET answered 200 (bash's /dev/tcp; no curl needed)
  exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
  IFS= read -r -t 2 line <&3 || true
  [[ $line == "HTTP/1."?" 200"* ]]
) 2>/dev/null

record() { # TARGET SCENARIO METRIC VALUE (an empty value is a failed measurement: logged, not recorded)
  [ -n "$4" ] || { log "$1 $2: no value for $3"; return 0; }
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
}

render() { # TEMPLATE OUTPUT: fill in the placeholders of a benches/configs file
  sed -e "s|@HTTP_PORT@|$HTTP_PORT|g" -e "s|@HTTPS_PORT@|$HTTPS_PORT|g" \
    -e "s|@W1@|${BACKEND_PORTS[0]}|g" -e "s|@W2@|${BACKEND_PORTS[1]}|g" \
    -e "s|@W3@|${BACKEND_PORTS[2]}|g" -e "s|@W4@|${BACKEND_PORTS[3]}|g" \
    -e "s|@THREADS@|$THREADS|g" -e "s|@RUN_DIR@|$RUN|g" -e "s|@STATS_PORT@|$STATS_PORT|g" \
    -e "s|@CERT@|$RUN/certs/edge.crt|g" -e "s|@KEY@|$RUN/certs/edge.key|g" \
    -e "s|@PEM@|$RUN/certs/edge.pem|g" "$1" >"$2"
}

# ------------------------------------------------------------------------ the proxies

start_proxy() { # TARGET: start it pinned on PROXY_CPUS, wait until it proxies
  local target=$1 pid
  case $target in
    direct) PROXY_PIDS=""; return 0 ;;
    edgepin)
      RUST_LOG=warn taskset -c "$PROXY_CPUS" "$EDGEPIN" run -c "$RUN/edgepin.yaml" >"$RUN/edgepin.log" 2>&1 &
      pid=$! ;;
    haproxy)
      taskset -c "$PROXY_CPUS" haproxy -db -f "$RUN/haproxy.cfg" >"$RUN/haproxy.log" 2>&1 &
      pid=$! ;;
    nginx)
      taskset -c "$PROXY_CPUS" nginx -p "$RUN" -e "$RUN/nginx-error.log" -c "$RUN/nginx.conf" >"$RUN/nginx.log" 2>&1 &
      pid=$! ;;
    *) die "unknown target $target" ;;
  esac
  STARTED+=("$pid")
  PROXY_PIDS=$pid PROXY_TARGET=$target
  wait_port "$HTTP_PORT" && wait_port "$HTTPS_PORT" || die "$target did not open its ports (see $RUN/$target.log)"
  for _ in $(seq 50); do
    http_ok "$HTTP_PORT" / && break
    sleep 0.1
  done
  http_ok "$HTTP_PORT" / || die "$target does not answer 200 on / (see $RUN/$target.log)"
  if [ "$target" = nginx ]; then
    local w
    for w in $(children_of "$pid"); do STARTED+=("$w"); PROXY_PIDS+=",$w"; done
  fi
}

stop_proxy() {
  [ -n "$PROXY_PIDS" ] || return 0
  local pid master=${PROXY_PIDS%%,*} signal=TERM
  # edgepin: SIGINT is the fast stop (SIGTERM drains). HAProxy and nginx: SIGTERM is the
  # fast stop (and a background job of a script ignores SIGINT, which HAProxy keeps).
  [ "$PROXY_TARGET" = edgepin ] && signal=INT
  stop_pid "$master" "$signal"
  for pid in ${PROXY_PIDS//,/ }; do stop_pid "$pid"; done
  local keep=() p
  for p in "${STARTED[@]}"; do [[ ",$PROXY_PIDS," == *",$p,"* ]] || keep+=("$p"); done
  STARTED=("${keep[@]}")
  PROXY_PIDS=""
  # Let the ports be free again before the next proxy binds them.
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$HTTP_PORT") 2>/dev/null || break; sleep 0.1; done
}

# ------------------------------------------------------------------------- load tools

wrk_run() { # NAME URL [wrk args]: run wrk on LOAD_CPUS; output in $RUN/NAME.wrk
  local name=$1 url=$2
  shift 2
  timeout $((DURATION + 30)) taskset -c "$LOAD_CPUS" \
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$url" >"$RUN/$name.wrk" 2>&1 ||
    log "wrk $name exited with $?"
}

wrk_warmup() { # URL [wrk args]
  local url=$1
  shift
  timeout $((WARMUP + 30)) taskset -c "$LOAD_CPUS" \
    wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$@" "$url" >/dev/null 2>&1 || true
}

wrk_numbers() { # FILE: "req/s p50_ms p99_ms errors requests" from wrk --latency output
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0;
      if (v ~ /s$/) return v * 1000; return v + 0 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    / requests in / { req = $1 }
    /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
    /Non-2xx or 3xx responses:/ { err += $5 }
    END { printf "%.1f %.3f %.3f %d %d\n", rps, p50, p99, err, req }' "$1"
}

client() { # bench-client args…, on LOAD_CPUS, bounded
  timeout 180 taskset -c "$LOAD_CPUS" "$EXAMPLES/bench-client" "$@"
}

value() { sed -n "s/^$1=//p"; } # KEY: the value of KEY=… lines on stdin

record_output() { # TARGET SCENARIO OUTPUT KEY[:METRIC]…: record bench-client's KEY=value lines
  local target=$1 scenario=$2 out=$3 key
  shift 3
  for key in "$@"; do
    record "$target" "$scenario" "${key#*:}" "$(value "${key%%:*}" <<<"$out")"
  done
}

# -------------------------------------------------------------------------- scenarios
# Each takes TARGET REP and records its figures. The proxy is running.

# The proxy's CPU time over a measured run: start before it, stop right after it, record.
# Also the involuntary context switches of its threads (preempted while runnable: by
# the neighbour, by its own other threads, by wrk when cores are shared).
proxy_cpu_start() {
  CPU_TICKS=$(cpu_ticks "$PROXY_PIDS")
  NVCSW=$(ctx_switches "$PROXY_PIDS" nonvoluntary_ctxt_switches)
}
proxy_cpu_stop() {
  CPU_TICKS=$(($(cpu_ticks "$PROXY_PIDS") - CPU_TICKS))
  NVCSW=$(($(ctx_switches "$PROXY_PIDS" nonvoluntary_ctxt_switches) - NVCSW))
}

proxy_cpu_record() { # TARGET SCENARIO REQUESTS: proxy CPU use and requests per proxy CPU-second
  [ -n "$PROXY_PIDS" ] || return 0
  local cpu_s
  cpu_s=$(awk -v t="$CPU_TICKS" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", t / hz }')
  record "$1" "$2" proxy_cpu_pct "$(awk -v c="$cpu_s" -v d="$DURATION" 'BEGIN { printf "%.1f", 100 * c / d }')"
  record "$1" "$2" per_proxy_cpu_s "$(awk -v r="$3" -v c="$cpu_s" 'BEGIN { printf "%.0f", (c > 0 ? r / c : 0) }')"
  record "$1" "$2" nvcsw_per_10k "$(awk -v n="$NVCSW" -v r="$3" 'BEGIN { if (r > 0) printf "%.1f", 10000 * n / r }')"
}

# No traffic at all for DURATION seconds: how often each proxy thread wakes up
# (voluntary context switches: it slept, something woke it). Timers and background
# services show here; an idle proxy should wake rarely. Per-thread counts go to
# $RUN/idle-TARGET-REP.threads ("switches thread-name"), the total is recorded.
scenario_idle() {
  local target=$1 file="$RUN/idle-$1-$REP.threads" pid task before after total=0
  [ "$target" = direct ] && return 0
  sleep 1
  declare -A start=()
  for pid in ${PROXY_PIDS//,/ }; do
    for task in /proc/"$pid"/task/*; do
      start[$task]=$(sed -n 's/^voluntary_ctxt_switches:[[:space:]]*//p' "$task/status" 2>/dev/null || echo 0)
    done
  done
  sleep "$DURATION"
  : >"$file"
  for task in "${!start[@]}"; do
    before=${start[$task]:-0}
    after=$(sed -n 's/^voluntary_ctxt_switches:[[:space:]]*//p' "$task/status" 2>/dev/null) || continue
    [ -n "$after" ] || continue
    printf '%s %s\n' "$((after - before))" "$(cat "$task/comm" 2>/dev/null)" >>"$file"
    total=$((total + after - before))
  done
  sort -rn -o "$file" "$file"
  record "$target" idle wakeups_per_s "$(awk -v n="$total" -v d="$DURATION" 'BEGIN { printf "%.1f", n / d }')"
}

# wrk with proxy CPU accounting: TARGET SCENARIO URL [wrk args]
measure_wrk() {
  local target=$1 scenario=$2 url=$3
  shift 3
  local name="$scenario-$target-$REP" rps p50 p99 err req
  wrk_warmup "$url" "$@"
  proxy_cpu_start
  wrk_run "$name" "$url" "$@"
  proxy_cpu_stop
  read -r rps p50 p99 err req < <(wrk_numbers "$RUN/$name.wrk")
  record "$target" "$scenario" rps "$rps"
  record "$target" "$scenario" p50_ms "$p50"
  record "$target" "$scenario" p99_ms "$p99"
  record "$target" "$scenario" errors "$err"
  proxy_cpu_record "$target" "$scenario" "$req"
}

port_of() { # TARGET: where the load goes (the proxy, or backend w1 for `direct`)
  if [ "$1" = direct ]; then echo "${BACKEND_PORTS[0]}"; else echo "$HTTP_PORT"; fi
}

scenario_rest_plain() {
  measure_wrk "$1" rest_plain "http://127.0.0.1:$(port_of "$1")/api/items"
}

scenario_rest_tls() {
  measure_wrk "$1" rest_tls "https://127.0.0.1:$HTTPS_PORT/api/items"
}

h2load_numbers() { # FILE: "req/s mean_ms errors requests" from h2load output
  awk '
    function ms(v) {
      if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0;
      if (v ~ /s$/) return v * 1000; return v + 0 }
    /^finished in/ { rps = $4 }
    /^requests:/ { req = $8; err = $10 + $12 + $14 }
    /^status codes:/ { gsub(",", ""); err += $7 + $9 }
    /^time for request:/ { mean = ms($6) }
    END { printf "%.1f %.3f %d %d\n", rps, mean, err, req }' "$1"
}

# REST over HTTP/2 (h2load: H2_CONNECTIONS connections × H2_STREAMS concurrent streams,
# as browsers multiplex), proxied to the HTTP/1.1 backends. edgepin and HAProxy only.
scenario_rest_h2() {
  local target=$1 name="rest_h2-$1-$REP" url="https://127.0.0.1:$HTTPS_PORT/api/items" rps mean err req
  timeout $((WARMUP + 30)) taskset -c "$LOAD_CPUS" \
    h2load -c "$H2_CONNECTIONS" -m "$H2_STREAMS" -D "$WARMUP" "$url" >/dev/null 2>&1 || true
  proxy_cpu_start
  timeout $((DURATION + 30)) taskset -c "$LOAD_CPUS" \
    h2load -c "$H2_CONNECTIONS" -m "$H2_STREAMS" -D "$DURATION" "$url" >"$RUN/$name.h2load" 2>&1 ||
    log "h2load $name exited with $?"
  proxy_cpu_stop
  read -r rps mean err req < <(h2load_numbers "$RUN/$name.h2load")
  record "$target" rest_h2 rps "$rps"
  record "$target" rest_h2 mean_ms "$mean"
  record "$target" rest_h2 errors "$err"
  proxy_cpu_record "$target" rest_h2 "$req"
}

# Every request on a new connection with a full TLS handshake (bench-client, resumption
# off): what a proxy pays for each new visitor.
scenario_tls_handshake() {
  local out
  proxy_cpu_start
  out=$(client tls-handshake "127.0.0.1:$HTTPS_PORT" /api/items "$CONNECTIONS" "$DURATION") ||
    { log "$1 tls_handshake failed"; return 0; }
  proxy_cpu_stop
  record_output "$1" tls_handshake "$out" per_second:rps p50_ms p99_ms errors
  proxy_cpu_record "$1" tls_handshake "$(value handshakes <<<"$out")"
}

# Every request on a new connection, resuming the previous TLS session (wrk keeps its
# session across reconnects): what returning visitors cost.
scenario_tls_resume() {
  measure_wrk "$1" tls_resume "https://127.0.0.1:$HTTPS_PORT/api/items" -H "Connection: close"
}

# Requests of one Engine.IO session: sid in the query, the proxy's cookie if it set one.
scenario_sticky() {
  local out sid cookie header
  out=$(client handshake "127.0.0.1:$HTTP_PORT" "/socket.io/?EIO=4&transport=polling") ||
    die "$1: Engine.IO handshake failed"
  sid=$(value sid <<<"$out")
  cookie=$(value cookie <<<"$out")
  header="io=$sid${cookie:+; $cookie}"
  measure_wrk "$1" sticky "http://127.0.0.1:$HTTP_PORT/socket.io/?EIO=4&transport=polling&sid=$sid" \
    -H "Cookie: $header"
}

scenario_ws_echo() {
  local out
  out=$(client ws-echo "127.0.0.1:$(port_of "$1")" "/socket.io/?EIO=4&transport=websocket" \
    "$WS_ECHO" "$DURATION" "$WS_ECHO_INTERVAL_MS") || { log "$1 ws_echo failed"; return 0; }
  record_output "$1" ws_echo "$out" p50_ms p99_ms messages
}

scenario_ws_idle() {
  local out
  out=$(client ws-idle "127.0.0.1:$HTTP_PORT" "/socket.io/?EIO=4&transport=websocket" "$WS_IDLE" "$PROXY_PIDS") ||
    { log "$1 ws_idle failed"; return 0; }
  record_output "$1" ws_idle "$out" kib_per_conn open_seconds
}

scenario_wss_idle() {
  local out
  out=$(client wss-idle "127.0.0.1:$HTTPS_PORT" "/socket.io/?EIO=4&transport=websocket" "$WS_IDLE" "$PROXY_PIDS") ||
    { log "$1 wss_idle failed"; return 0; }
  record_output "$1" wss_idle "$out" kib_per_conn open_seconds
}

http_body() ( # PORT PATH: the body of one GET (bash's /dev/tcp)
  exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
  printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
  timeout 2 cat <&3 | sed '1,/^\r$/d'
) 2>/dev/null

now_ms() { echo $(($(date +%s%N) / 1000000)); }

edgepin_generation() { http_body "$STATS_PORT" /health | sed -n 's/.*"generation":\([0-9]*\).*/\1/p'; }

# Each reload_TARGET reloads the running proxy and sets RELOAD_MS: milliseconds from the
# signal until the new configuration serves. They run in this shell (not in `$(…)`), so
# the pids they change stay known to the cleanup.
reload_edgepin() { # SIGHUP; done when /health shows the next generation
  local before t0 g
  RELOAD_MS=""
  before=$(edgepin_generation)
  t0=$(now_ms)
  kill -HUP "${PROXY_PIDS%%,*}"
  for _ in $(seq 500); do
    g=$(edgepin_generation)
    if [ -n "$g" ] && [ "$g" != "$before" ]; then RELOAD_MS=$(($(now_ms) - t0)); return; fi
    sleep 0.005
  done
}

reload_haproxy() { # a new process with `-sf` takes the ports over; done when it listens
  local old=${PROXY_PIDS%%,*} new t0
  RELOAD_MS=""
  t0=$(now_ms)
  taskset -c "$PROXY_CPUS" haproxy -db -f "$RUN/haproxy.cfg" -sf "$old" >>"$RUN/haproxy.log" 2>&1 &
  new=$!
  STARTED+=("$new")
  PROXY_PIDS=$new
  RETIRED+=("$old")
  for _ in $(seq 500); do
    if ss -ltnpH "sport = :$HTTP_PORT" 2>/dev/null | grep -q "pid=$new,"; then RELOAD_MS=$(($(now_ms) - t0)); return; fi
    sleep 0.005
  done
}

reload_nginx() { # SIGHUP to the master; done when a new worker runs
  local master=${PROXY_PIDS%%,*} before t0 now w
  RELOAD_MS=""
  before=" $(children_of "$master" | tr '\n' ' ')"
  t0=$(now_ms)
  kill -HUP "$master"
  for _ in $(seq 500); do
    now=$(children_of "$master" | tr '\n' ' ')
    for w in $now; do
      if [[ $before != *" $w "* ]]; then
        RELOAD_MS=$(($(now_ms) - t0))
        for w in $now; do STARTED+=("$w"); done
        return
      fi
    done
    sleep 0.005
  done
}

# Reload storm during load: wrk keep-alive for DURATION while the proxy reloads once a
# second (edgepin: SIGHUP; HAProxy: a new process with `-sf`; nginx: SIGHUP). Records the
# median reload time (signal to the new config serving), and errors and p99 of the run,
# beside the same figures of a quiet run (rest_plain).
scenario_reload() {
  local target=$1 name="reload-$1-$REP" times=() t rps p50 p99 err req load
  [ "$target" = direct ] && return 0
  wrk_warmup "http://127.0.0.1:$HTTP_PORT/api/items"
  wrk_run "$name" "http://127.0.0.1:$HTTP_PORT/api/items" &
  load=$!
  sleep 1
  RETIRED=()
  for _ in $(seq $((DURATION - 2))); do
    "reload_$target"
    [ -n "$RELOAD_MS" ] && times+=("$RELOAD_MS")
    sleep 1
  done
  wait "$load"
  # Old HAProxy processes finish their connections and exit; make sure they did.
  for t in "${RETIRED[@]}"; do stop_pid "$t"; done
  read -r rps p50 p99 err req < <(wrk_numbers "$RUN/$name.wrk")
  record "$target" reload reloads "${#times[@]}"
  record "$target" reload reload_ms "$(printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }')"
  record "$target" reload rps "$rps"
  record "$target" reload p99_ms "$p99"
  record "$target" reload errors "$err"
}

supports() { # TARGET SCENARIO: the direct baseline only has plain HTTP and echo; h2 is edgepin vs HAProxy
  [ "$2" != rest_h2 ] || [[ $1 == edgepin || $1 == haproxy ]] || return 1
  [ "$1" != direct ] || [[ $2 == rest_plain || $2 == ws_echo ]]
}

# ------------------------------------------------------------------------------- main

preflight() {
  local t
  for t in $SCENARIOS; do declare -F "scenario_$t" >/dev/null || die "unknown scenario $t"; done
  for t in wrk taskset timeout getconf; do command -v "$t" >/dev/null || die "$t is missing (make bench installs it)"; done
  [[ " $SCENARIOS " == *" rest_h2 "* ]] && { command -v h2load >/dev/null || die "h2load is missing (make bench installs nghttp2-client)"; }
  [[ " $TARGETS " == *" haproxy "* ]] && { command -v haproxy >/dev/null || die "haproxy is missing"; }
  [[ " $TARGETS " == *" nginx "* ]] && { command -v nginx >/dev/null || die "nginx is missing"; }
  for t in "$EDGEPIN" "$EXAMPLES/bench-backend" "$EXAMPLES/bench-client" "$EXAMPLES/bench-report"; do
    [ -x "$t" ] || die "$t is missing: run \`make bench\` (it builds them)"
  done
  for t in "$HTTP_PORT" "$HTTPS_PORT" "${BACKEND_PORTS[@]}"; do
    (exec 3<>"/dev/tcp/127.0.0.1/$t") 2>/dev/null && die "port $t is taken: set BASE_PORT"
  done
  # Idle WebSockets need file descriptors: two per connection in the proxy.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  local files
  files=$(ulimit -n)
  [ "$files" = unlimited ] || [ "$files" -gt $((2 * WS_IDLE + 500)) ] ||
    die "open-file limit $files too low for WS_IDLE=$WS_IDLE"
}

main() {
  preflight
  mkdir -p "$RUN/nginx-tmp"
  : >"$RESULTS"
  "$EDGEPIN" certs --out "$RUN/certs" >/dev/null
  cat "$RUN/certs/edge.crt" "$RUN/certs/edge.key" >"$RUN/certs/edge.pem"
  render "$ROOT/benches/configs/edgepin.yaml" "$RUN/edgepin.yaml"
  render "$ROOT/benches/configs/haproxy.cfg" "$RUN/haproxy.cfg"
  render "$ROOT/benches/configs/nginx.conf" "$RUN/nginx.conf"

  {
    printf 'meta\tdate\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'meta\trepetitions\t%s x %s s (medians)\n' "$REPS" "$DURATION"
    printf 'meta\tpinning\tproxy on CPU %s (%s threads/workers); wrk, bench-client and backends on CPU %s\n' \
      "$PROXY_CPUS" "$THREADS" "$LOAD_CPUS"
    printf 'meta\tload\twrk -t1 -c%s; %s idle WebSockets; echo: %s WebSockets, one message each every %s ms\n' \
      "$CONNECTIONS" "$WS_IDLE" "$WS_ECHO" "$WS_ECHO_INTERVAL_MS"
    printf 'meta\tversions\t%s; %s; %s; %s\n' "edgepin $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
      "$(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3)" "$(nginx -v 2>&1 | cut -d' ' -f3)" "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
    printf 'meta\tmachine\t%s CPUs, %s\n' "$(nproc)" "$(uname -r)"
    if [ "$NEIGHBOUR" = 1 ]; then
      printf 'meta\tneighbour\ta CPU-bound loop pinned to CPU %s\n' "$PROXY_CPUS"
    fi
  } >>"$RESULTS"

  if [ "$NEIGHBOUR" = 1 ]; then
    taskset -c "$PROXY_CPUS" bash -c 'while :; do :; done' &
    STARTED+=("$!")
  fi

  local servers=() i
  for i in 0 1 2 3; do servers+=("w$((i + 1))=127.0.0.1:${BACKEND_PORTS[$i]}"); done
  taskset -c "$LOAD_CPUS" "$EXAMPLES/bench-backend" "${servers[@]}" >"$RUN/backend.log" 2>&1 &
  STARTED+=("$!")
  for i in "${BACKEND_PORTS[@]}"; do wait_port "$i" || die "backend on $i did not start"; done

  local started=$SECONDS target scenario
  for REP in $(seq "$REPS"); do
    for target in $TARGETS; do
      for scenario in $SCENARIOS; do
        supports "$target" "$scenario" || continue
        log "rep $REP/$REPS: $target $scenario"
        start_proxy "$target"
        "scenario_$scenario" "$target"
        stop_proxy
      done
    done
  done
  log "measured in $((SECONDS - started)) s; raw output in $RUN"

  "$EXAMPLES/bench-report" "$RESULTS" "$OUT/bench-$STAMP.json"
  cp "$OUT/bench-$STAMP.json" "$OUT/latest.json"
}

main "$@"
