#!/usr/bin/env bash
# `make bench`: edgepin, HAProxy and nginx side by side on the same machine, cores and
# backends, in one run. See benches/README.md for what each scenario measures.
#
# Layout: the proxy runs alone on PROXY_CPUS; wrk, bench-client and the four backends
# share LOAD_CPUS. Each scenario starts a fresh proxy, runs, and stops it. Within a
# repetition the proxies take turns scenario by scenario, so the runs compared with each
# other are seconds apart, not minutes, and a slow spell of the machine hits them alike;
# each repetition starts the turns at the next proxy, so none always runs first. The
# fixed-schedule scenarios (rest_rate_*, ws_echo) go further: every proxy is up at once,
# on ports of its own, and one schedule is handed to each in turn, SLICE_MS at a time
# (`run_together`), so they meet the same seconds of the machine.
# Every process started here is stopped by pid on exit (trap), every run is bounded by
# `timeout`, and all traffic stays on 127.0.0.1.
#
# Knobs (environment): QUICK=1 (one repetition of 5 s), REPS, DURATION (seconds),
# THREADS (proxy threads/workers), PROXY_CPUS, LOAD_CPUS, TARGETS, SCENARIOS,
# CONNECTIONS (wrk -c), H2_CONNECTIONS and H2_STREAMS (h2load -c and -m),
# WS_IDLE (idle WebSockets, and idle HTTP/2 connections), KEEPALIVE_IDLE (idle keep-alive
# connections), WS_ECHO (echo connections),
# WS_ECHO_INTERVAL_MS, UPGRADE_WS (WebSockets held across the upgrades), UPGRADES (upgrades
# in a row), UPGRADE_GAP (seconds between two), BASE_PORT, NEIGHBOUR=1 (a CPU-bound loop pinned to PROXY_CPUS for
# the whole run: the proxy then shares its core, as on a busy host), IDLE=poll (idle CPUs
# poll instead of halting for the whole run; needs root: see benches/README.md),
# PAIRED=0 (the fixed-schedule scenarios one proxy at a time, as the others), SLICE_MS
# (their turns with PAIRED=1, the default).
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
SCENARIOS=${SCENARIOS:-"rest_plain rest_tls rest_rate_plain rest_rate_tls rest_h2 tls_handshake tls_resume sticky ws_echo ws_idle wss_idle keepalive_idle h2_idle ws_h2_idle reload upgrade"}
CONNECTIONS=${CONNECTIONS:-64}
H2_CONNECTIONS=${H2_CONNECTIONS:-8}
H2_STREAMS=${H2_STREAMS:-16}
WS_IDLE=${WS_IDLE:-5000}
KEEPALIVE_IDLE=${KEEPALIVE_IDLE:-5000}
WS_ECHO=${WS_ECHO:-100}
WS_ECHO_INTERVAL_MS=${WS_ECHO_INTERVAL_MS:-10}
UPGRADE_WS=${UPGRADE_WS:-1000}
UPGRADES=${UPGRADES:-3}
UPGRADE_GAP=${UPGRADE_GAP:-3}
BASE_PORT=${BASE_PORT:-18100}
NEIGHBOUR=${NEIGHBOUR:-0}
IDLE=${IDLE:-halt}
PAIRED=${PAIRED:-1}
SLICE_MS=${SLICE_MS:-500}
# ~50-60 % of the slowest proxy's closed-loop capacity on one core (HAProxy: ~65k plain,
# ~45-50k TLS); a neighbour takes half the core, so half the rate.
if [ "$NEIGHBOUR" = 1 ]; then
  RATE_PLAIN=${RATE_PLAIN:-15000} RATE_TLS=${RATE_TLS:-10000}
fi
RATE_PLAIN=${RATE_PLAIN:-30000}
RATE_TLS=${RATE_TLS:-20000}
WARMUP=1 # seconds of load before each measured wrk run

HTTP_PORT=$BASE_PORT
HTTPS_PORT=$((BASE_PORT + 1))
STATS_PORT=$((BASE_PORT + 2))
BACKEND_PORTS=($((BASE_PORT + 11)) $((BASE_PORT + 12)) $((BASE_PORT + 13)) $((BASE_PORT + 14)))
EXAMPLES=${EXAMPLES:-$ROOT/target/bench-tools/examples}
EDGEPIN=${EDGEPIN:-$ROOT/target/release/edgepin}
# By absolute path: nginx's binary upgrade re-executes the path it was started by.
NGINX=$(command -v nginx || echo nginx)
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT=$ROOT/target/bench
RUN=$OUT/run-$STAMP
RESULTS=$RUN/results.tsv

STARTED=()     # pids to stop on exit
PROXY_PIDS=""  # the running proxy's processes, comma-separated
PROXY_TARGET=""
VARIANT=""     # "-upgrade": start the proxy from its upgrade config (render_upgrade_configs);
               # "-slotN": from its config on the N-th ports of a run together (run_together)
declare -A PIDS_OF=() PORT_OF=() # in a run together: each target's processes and port

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

descendants() { # PID…: these and all their descendants, parents first (found by pid, not name)
  local pid
  for pid in "$@"; do
    alive "$pid" || continue
    echo "$pid"
    # shellcheck disable=SC2046
    descendants $(children_of "$pid")
  done
}

cleanup() {
  local pid all
  # Children too: a proxy an upgrade started, nginx workers, the tools under `timeout`.
  all=$(descendants "${STARTED[@]}")
  for pid in "${STARTED[@]}" $all; do stop_pid "$pid"; done
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
      RUST_LOG=warn,edgepin::upgrade=info taskset -c "$PROXY_CPUS" "$EDGEPIN" run -c "$RUN/edgepin$VARIANT.yaml" >>"$RUN/edgepin.log" 2>&1 &
      pid=$! ;;
    haproxy)
      taskset -c "$PROXY_CPUS" haproxy -db -f "$RUN/haproxy$VARIANT.cfg" >>"$RUN/haproxy.log" 2>&1 &
      pid=$! ;;
    nginx)
      rm -f "$RUN/nginx$VARIANT.pid" "$RUN/nginx$VARIANT.pid.oldbin"
      taskset -c "$PROXY_CPUS" "$NGINX" -p "$RUN" -e "$RUN/nginx-error.log" -c "$RUN/nginx$VARIANT.conf" >>"$RUN/nginx.log" 2>&1 &
      pid=$! ;;
    *) die "unknown target $target" ;;
  esac
  STARTED+=("$pid")
  PROXY_PIDS=$pid PROXY_TARGET=$target
  wait_port "$HTTP_PORT" && wait_port "$HTTPS_PORT" || die "$target did not open its ports (see $RUN/$target.log)"
  if [ "$target" = nginx ] && [ "$VARIANT" = -upgrade ]; then
    # Daemonised (a binary upgrade needs it): the master is the one in the pidfile.
    wait "$pid" || die "nginx did not start (see $RUN/nginx-error.log)"
    for _ in $(seq 50); do [ -s "$RUN/nginx$VARIANT.pid" ] && break; sleep 0.1; done
    pid=$(cat "$RUN/nginx$VARIANT.pid") || die "nginx wrote no pidfile"
    STARTED+=("$pid")
    PROXY_PIDS=$pid
  fi
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
  timeout $((180 + 4 * (DURATION + WARMUP))) taskset -c "$LOAD_CPUS" "$EXAMPLES/bench-client" "$@"
}

value() { sed -n "s/^$1=//p"; } # KEY: the value of KEY=… lines on stdin

turn_targets() { # LABEL…: "LABEL=127.0.0.1:PORT,…", the targets of a run together (PORT_OF)
  local label list=""
  for label in "$@"; do list+="${list:+,}$label=127.0.0.1:${PORT_OF[$label]}"; done
  echo "$list"
}

lines_of() { sed -n "s/^$1 //p"; } # LABEL: that target's lines of bench-client's output on stdin

median() { # NUMBER…: the middle one (the lower middle of an even count); nothing for none
  [ "$#" -gt 0 ] || return 0
  printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

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
  THREAD_START=$(thread_switches "$PROXY_PIDS")
  KTHREAD_TICKS=$(kthread_ticks)
  STEAL_TICKS=$(steal_ticks)
}
proxy_cpu_stop() {
  CPU_TICKS=$(($(cpu_ticks "$PROXY_PIDS") - CPU_TICKS))
  NVCSW=$(($(ctx_switches "$PROXY_PIDS" nonvoluntary_ctxt_switches) - NVCSW))
  KTHREAD_TICKS=$(($(kthread_ticks) - KTHREAD_TICKS))
  STEAL_TICKS=$(($(steal_ticks) - STEAL_TICKS))
  # Which thread was preempted, which woke, and how long each waited runnable for a CPU:
  # "nonvoluntary voluntary cpu_ticks runqueue_ms name" per thread over the run, in
  # $RUN/NAME.threads (NAME: scenario-target-rep), then the machine's kernel threads' CPU
  # time meanwhile (DAMON's kdamond, RCU, kworkers: they take a core for milliseconds) and
  # the time the host stole from this VM's CPUs.
  local threads
  threads=$(join <(sort <<<"$THREAD_START") <(thread_switches "$PROXY_PIDS" | sort) |
    awk '{ printf "%d %d %d %.1f %s\n", $7 - $2, $8 - $3, $9 - $4, ($10 - $5) / 1e6, $6 }' | sort -rn) || true
  # The serving threads' wait only (those with at least 1 % of the CPU time): a background
  # thread under SCHED_BATCH waiting for a busy proxy thread delays no request.
  RUNQ_MS=$(awk '{ cpu[NR] = $3; q[NR] = $4; all += $3 }
    END { for (i in cpu) if (cpu[i] > 0 && cpu[i] >= all / 100) t += q[i]; printf "%.1f", t }' <<<"$threads")
  {
    echo "$threads"
    # (Unknown when a kernel thread ended meanwhile: its ticks leave the sum.)
    if [ "$KTHREAD_TICKS" -ge 0 ]; then
      printf 'kernel threads: %s ms of CPU\n' "$((KTHREAD_TICKS * 1000 / CLK_TCK))"
    else
      echo 'kernel threads: unknown (one ended during the run)'
    fi
    # Time the hypervisor ran something else while a CPU of this VM wanted to run.
    printf 'host steal: %s ms\n' "$((STEAL_TICKS * 1000 / CLK_TCK))"
  } >"$RUN/$CURRENT.threads"
}

thread_switches() { # PIDS: "tid nonvoluntary voluntary cpu_ticks runqueue_ns name" per thread
  local pid task stat sched
  for pid in ${1//,/ }; do
    for task in /proc/"$pid"/task/*; do
      stat=$(cat "$task/stat" 2>/dev/null) || continue
      sched=$(cat "$task/schedstat" 2>/dev/null) || continue
      stat=${stat##*) }
      set -- $stat
      printf '%s %s %s %s %s %s\n' "${task##*/}" \
        "$(sed -n 's/^nonvoluntary_ctxt_switches:[[:space:]]*//p' "$task/status" 2>/dev/null)" \
        "$(sed -n 's/^voluntary_ctxt_switches:[[:space:]]*//p' "$task/status" 2>/dev/null)" \
        "$((${12} + ${13}))" "$(cut -d' ' -f2 <<<"$sched")" "$(tr ' ' _ <"$task/comm" 2>/dev/null)"
    done
  done
}

steal_ticks() { # ticks the host stole from this VM's CPUs (/proc/stat, every CPU)
  awk '$1 == "cpu" { print $9 + 0 }' /proc/stat
}

kthread_ticks() { # user + system clock ticks of every kernel thread (children of kthreadd)
  # A process may end between the glob and its read: cat goes on past it (mawk, given the
  # files itself, would stop there with status 2, and `set -e` would end the run).
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
    awk '{ sub(/^.*\) /, ""); if ($2 == 2) t += $12 + $13 } END { print t + 0 }'
}

proxy_cpu_record() { # TARGET SCENARIO REQUESTS: proxy CPU use and requests per proxy CPU-second
  [ -n "$PROXY_PIDS" ] || return 0
  local cpu_s
  cpu_s=$(awk -v t="$CPU_TICKS" -v hz="$CLK_TCK" 'BEGIN { printf "%.3f", t / hz }')
  record "$1" "$2" proxy_cpu_pct "$(awk -v c="$cpu_s" -v d="$DURATION" 'BEGIN { printf "%.1f", 100 * c / d }')"
  record "$1" "$2" per_proxy_cpu_s "$(awk -v r="$3" -v c="$cpu_s" 'BEGIN { printf "%.0f", (c > 0 ? r / c : 0) }')"
  record "$1" "$2" nvcsw_per_10k "$(awk -v n="$NVCSW" -v r="$3" 'BEGIN { if (r > 0) printf "%.1f", 10000 * n / r }')"
  # How long its serving threads waited runnable for a CPU, per 1,000 requests: what
  # preemptions cost the requests, whoever took the core.
  record "$1" "$2" runq_per_1k_ms "$(awk -v n="$RUNQ_MS" -v r="$3" 'BEGIN { if (r > 0) printf "%.3f", 1000 * n / r }')"
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

# Open loop at a fixed rate (bench-client rate): the same offered load for every proxy,
# each latency from its request's due time, so a stall counts for every request it
# delays (no coordinated omission). The WARMUP is inside the run, on the same
# connections, not recorded; the proxy's CPU figures count it too. The targets are all
# running (`run_together`) and share one schedule in slices of SLICE_MS: each gets the
# whole rate for its slice, then idles while the others have theirs (one target: the
# whole schedule).
measure_rate() { # SCENARIO RPS plain|tls LABEL… (a target, or TARGET.N for its N-th copy)
  local scenario=$1 rps=$2 mode=$3 name="$1-$REP" target label out all
  shift 3
  local -A cpu=() nvcsw=() threads=() kthreads=() steal=()
  for label in "$@"; do
    PROXY_PIDS=${PIDS_OF[$label]}
    proxy_cpu_start
    cpu[$label]=$CPU_TICKS nvcsw[$label]=$NVCSW threads[$label]=$THREAD_START
    kthreads[$label]=$KTHREAD_TICKS steal[$label]=$STEAL_TICKS
  done
  client rate "$(turn_targets "$@")" /api/items "$rps" "$DURATION" "$CONNECTIONS" "$WARMUP" "$mode" "$SLICE_MS" \
    >"$RUN/$name.rate" 2>"$RUN/$name.err" || { log "$scenario failed (see $RUN/$name.err)"; PROXY_PIDS=""; return 0; }
  for label in "$@"; do
    target=${label%.*}
    PROXY_PIDS=${PIDS_OF[$label]} CURRENT=$scenario-$label-$REP
    CPU_TICKS=${cpu[$label]} NVCSW=${nvcsw[$label]} THREAD_START=${threads[$label]}
    KTHREAD_TICKS=${kthreads[$label]} STEAL_TICKS=${steal[$label]}
    proxy_cpu_stop
    out=$(lines_of "$label" <"$RUN/$name.rate")
    record_output "$target" "$scenario" "$out" p50_ms p99_ms p999_ms errors achieved_rps client_cpu_pct \
      pacer_late_max_ms:client_late_max_ms
    # Below the offered rate the proxy (or the machine) did not keep up: the latencies are
    # then queueing that grows with the run, not a tail. Say so; the figures are recorded.
    awk -v a="$(value achieved_rps <<<"$out")" -v r="$rps" 'BEGIN { exit !(a < 0.98 * r) }' &&
      log "$target $scenario: achieved $(value achieved_rps <<<"$out") of $rps requests/s: the rate is too high for this machine (lower RATE_PLAIN/RATE_TLS)"
    # The proxy's CPU at this fixed load (its cost per request when not saturated), over
    # its warm-up and its slices, per every answered request. (The idle time between its
    # slices counts too: timers and health checks, a few ticks.)
    all=$(value requests_all <<<"$out")
    [ "${all:-0}" -gt 0 ] && DURATION=$((DURATION + WARMUP)) proxy_cpu_record "$target" "$scenario" "$all"
  done
  PROXY_PIDS=""
  return 0
}

scenario_rest_rate_plain() { # TARGET…
  measure_rate rest_rate_plain "$RATE_PLAIN" plain "$@"
}

scenario_rest_rate_tls() { # TARGET…
  measure_rate rest_rate_tls "$RATE_TLS" tls "$@"
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

scenario_ws_echo() { # LABEL… (running together, as measure_rate's)
  local out label
  out=$(client ws-echo "$(turn_targets "$@")" "/socket.io/?EIO=4&transport=websocket" \
    "$WS_ECHO" "$DURATION" "$WS_ECHO_INTERVAL_MS" "$SLICE_MS") || { log "ws_echo $* failed"; return 0; }
  for label in "$@"; do
    record_output "${label%.*}" ws_echo "$(lines_of "$label" <<<"$out")" p50_ms p99_ms messages
  done
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

# Idle keep-alive HTTP/1.1 connections after one request each: the growth of the proxy's
# RSS per connection, plain, then TLS on a proxy started afresh (so the TLS figure does
# not reuse memory the plain connections left).
scenario_keepalive_idle() {
  local out
  out=$(client keepalive-idle "127.0.0.1:$HTTP_PORT" /api/items "$KEEPALIVE_IDLE" "$PROXY_PIDS") ||
    { log "$1 keepalive_idle failed"; return 0; }
  record_output "$1" keepalive_idle "$out" kib_per_conn open_seconds
  stop_proxy
  start_proxy "$1"
  out=$(client keepalive-idle-tls "127.0.0.1:$HTTPS_PORT" /api/items "$KEEPALIVE_IDLE" "$PROXY_PIDS") ||
    { log "$1 keepalive_idle (TLS) failed"; return 0; }
  record_output "$1" keepalive_idle "$out" kib_per_conn:kib_per_conn_tls open_seconds:open_seconds_tls
}

# Idle HTTP/2 connections, each after one request (h2load's GET), and idle WebSockets over
# HTTP/2 (RFC 8441), one per connection as wss_idle has one per TLS connection. edgepin
# and HAProxy (nginx has no WebSockets over HTTP/2, and no h2 in this config).
scenario_h2_idle() {
  local out
  out=$(client h2-idle "127.0.0.1:$HTTPS_PORT" /api/items "$WS_IDLE" "$PROXY_PIDS") ||
    { log "$1 h2_idle failed"; return 0; }
  record_output "$1" h2_idle "$out" kib_per_conn open_seconds
}

scenario_ws_h2_idle() {
  local out
  out=$(client ws-h2-idle "127.0.0.1:$HTTPS_PORT" "/socket.io/?EIO=4&transport=websocket" "$WS_IDLE" "$PROXY_PIDS") ||
    { log "$1 ws_h2_idle failed"; return 0; }
  record_output "$1" ws_h2_idle "$out" kib_per_conn open_seconds
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
  record "$target" reload reload_ms "$(median "${times[@]}")"
  record "$target" reload rps "$rps"
  record "$target" reload p99_ms "$p99"
  record "$target" reload errors "$err"
}

# ------------------------------------------------------------------------------ upgrade
# Binary upgrades under load, each proxy its own documented way, with the same binary.
# The upgrade configs add what that needs and a way to tell which process answered:
# edgepin a pidfile (its upgrade socket is beside it; `/health` on the stats listener
# gives the pid); HAProxy a stats socket with `expose-fd listeners` (the new process
# takes the listeners with `-x`) and an `X-Proxy-Pid: %pid` header; nginx daemonised
# (it ignores USR2 while its parent is the one that started it) and `X-Proxy-Pid: $pid`.
render_upgrade_configs() {
  { cat "$RUN/edgepin.yaml"; printf '\nreload: { pidfile: %s/edgepin.pid }\n' "$RUN"; } >"$RUN/edgepin-upgrade.yaml"
  sed -e "/^global/a\\    stats socket $RUN/haproxy.sock mode 600 level admin expose-fd listeners" \
    -e '/^frontend edge/a\    http-after-response set-header X-Proxy-Pid %pid' \
    "$RUN/haproxy.cfg" >"$RUN/haproxy-upgrade.cfg"
  sed -e 's/^daemon off;/daemon on;/' -e "s|^pid .*|pid $RUN/nginx-upgrade.pid;|" \
    -e '/^    server {/a\        add_header X-Proxy-Pid $pid always;' \
    "$RUN/nginx.conf" >"$RUN/nginx-upgrade.conf"
}

# Each upgrade_TARGET upgrades the running proxy and sets UPGRADE_MS: milliseconds from
# the command until a new connection is answered by a new process (bench-client
# first-new), or "" if none was. The processes it replaced go to RETIRED (the main one
# also to RETIRED_MAIN), the new ones to PROXY_PIDS and STARTED, so the cleanup finds
# them all by pid. PROBE_FAILURES adds the probes that got no answer (refused, reset),
# from the command until 1 s after the new process answered (the old one stops accepting
# in that second).
first_new() { # T0 PORT PATH: wait for the first answer from a process not in PROXY_PIDS
  # (PORT PATH: where the proxy names itself); the http listener is probed too
  local out
  out=$(client first-new "127.0.0.1:$2" "$3" "$PROXY_PIDS" 20 1000 "127.0.0.1:$HTTP_PORT" /api/items) || return 1
  NEW_PID=$(value new_pid <<<"$out")
  UPGRADE_MS=$(($(value ready_unix_ms <<<"$out") - $1))
  PROBE_FAILURES=$((PROBE_FAILURES + $(value probe_failures <<<"$out")))
}

retire() { # the serving processes become old ones
  local p
  RETIRED_MAIN+=("${PROXY_PIDS%%,*}")
  for p in ${PROXY_PIDS//,/ }; do RETIRED+=("$p"); done
}

upgrade_edgepin() { # `edgepin upgrade`: the running process starts the new binary itself
  local t0 cmd
  UPGRADE_MS=""
  t0=$(now_ms)
  timeout 90 taskset -c "$LOAD_CPUS" "$EDGEPIN" upgrade -c "$RUN/edgepin-upgrade.yaml" --timeout 60s \
    >>"$RUN/edgepin-upgrade.out" 2>&1 &
  cmd=$!
  first_new "$t0" "$STATS_PORT" /health || log "edgepin: no new process answered"
  if wait "$cmd" && [ -n "$UPGRADE_MS" ]; then
    STARTED+=("$NEW_PID")
    retire
    PROXY_PIDS=$NEW_PID
  else
    log "edgepin upgrade failed (see $RUN/edgepin-upgrade.out)"
    UPGRADE_MS=""
  fi
}

upgrade_haproxy() { # a new process takes the listeners over the stats socket (-x), then tells the old one to finish (-sf)
  local t0 new
  UPGRADE_MS=""
  t0=$(now_ms)
  taskset -c "$PROXY_CPUS" haproxy -db -f "$RUN/haproxy-upgrade.cfg" -x "$RUN/haproxy.sock" -sf "${PROXY_PIDS%%,*}" \
    >>"$RUN/haproxy.log" 2>&1 &
  new=$!
  STARTED+=("$new")
  if first_new "$t0" "$HTTP_PORT" /api/items && [ "$NEW_PID" = "$new" ]; then
    retire
    PROXY_PIDS=$new
  else
    log "haproxy: the new process $new did not serve (see $RUN/haproxy.log)"
    UPGRADE_MS=""
  fi
}

upgrade_nginx() { # USR2 (a new master and workers on the inherited sockets), WINCH and QUIT to the old master
  local master=${PROXY_PIDS%%,*} t0 new w ignored
  UPGRADE_MS=""
  ignored=$(grep -c 'changing binary signal is ignored' "$RUN/nginx-error.log" || true)
  t0=$(now_ms)
  kill -USR2 "$master"
  # A new master writes the pidfile at once; a refused USR2 is logged at once.
  for _ in $(seq 200); do
    new=$(cat "$RUN/nginx-upgrade.pid" 2>/dev/null || true)
    [[ $new =~ ^[0-9]+$ && $new != "$master" ]] && break
    if [ "$(grep -c 'changing binary signal is ignored' "$RUN/nginx-error.log" || true)" != "$ignored" ]; then
      log "nginx ignored USR2: an old master is still draining (\"the changing binary signal is ignored\")"
      return
    fi
    sleep 0.005
  done
  [[ $new =~ ^[0-9]+$ && $new != "$master" ]] && STARTED+=("$new")
  first_new "$t0" "$HTTP_PORT" /api/items || { log "nginx: no new worker answered after USR2"; return; }
  new=$(cat "$RUN/nginx-upgrade.pid" 2>/dev/null || true)
  [[ $new =~ ^[0-9]+$ && $new != "$master" ]] || { log "nginx: no new master in the pidfile"; UPGRADE_MS=""; return; }
  kill -WINCH "$master"
  kill -QUIT "$master"
  retire
  PROXY_PIDS=$new
  for w in $(children_of "$new"); do STARTED+=("$w"); PROXY_PIDS+=",$w"; done
}

alive_count() { # PID…: how many are still running
  local n=0 p
  for p in "$@"; do alive "$p" && n=$((n + 1)); done
  echo "$n"
}

hold_batch() { # NAME N: N more WebSockets held until HOLD_END (bench-client ws-hold); returns once they are open
  local file="$RUN/$1.hold" pid
  client ws-hold "127.0.0.1:$HTTP_PORT" "/socket.io/?EIO=4&transport=websocket" "$2" \
    "$((HOLD_END > SECONDS + 1 ? HOLD_END - SECONDS : 1))" 1000 >"$file" 2>"$file.err" &
  pid=$!
  STARTED+=("$pid") HOLDS+=("$pid") HOLD_FILES+=("$file")
  for _ in $(seq 600); do
    grep -q '^opened=' "$file" 2>/dev/null && return 0
    alive "$pid" || break
    sleep 0.05
  done
  log "$PROXY_TARGET: the WebSockets of $1 did not open (see $file.err)"
}

hold_totals() { # FILE…: the figures of every ws-hold: dropped and messages summed, the
  # slowest echo; no ws_dropped at all if a ws-hold gave no figures (it failed)
  awk -F= '$1 == "ws_dropped" { reported++ } $1 == "ws_dropped" || $1 == "messages" { sum[$1] += $2 }
    $1 == "echo_max_ms" && $2 > max { max = $2 }
    END { if (reported == ARGC - 1) printf "ws_dropped=%d\n", sum["ws_dropped"]
      printf "messages=%d\necho_max_ms=%.1f\n", sum["messages"], max }' "$@"
}

# UPGRADE_WS WebSockets held open, each echoing a numbered message every second (70 %
# before the first upgrade, the rest in equal batches before the next ones, so every old
# process drains tunnels of its own), and wrk keep-alive, while the proxy is upgraded
# UPGRADES times, UPGRADE_GAP s apart, with the same binary. Records the WebSockets
# dropped, wrk's errors, the median time from the command to the new process serving, the
# old processes still draining at the end of the window, how long after the WebSockets
# closed they were all gone, and how many were still alive 5 s after; then stops them all
# by pid.
scenario_upgrade() {
  local target=$1 name="upgrade-$1-$REP" times=() rps p50 p99 err req load window out i later=0 t0 gone
  [ "$target" = direct ] && return 0
  window=$((2 + UPGRADES * UPGRADE_GAP + 2))
  [ "$window" -ge "$DURATION" ] || window=$DURATION
  [ "$UPGRADES" -gt 1 ] && later=$((UPGRADE_WS * 3 / (10 * (UPGRADES - 1))))
  RETIRED=() RETIRED_MAIN=() PROBE_FAILURES=0 HOLDS=() HOLD_FILES=()
  HOLD_END=$((SECONDS + window + 3)) # past wrk's end: old_at_end is counted while they are open
  hold_batch "$name-0" $((UPGRADE_WS - later * (UPGRADES - 1)))
  DURATION=$window wrk_run "$name" "http://127.0.0.1:$HTTP_PORT/api/items" &
  load=$!
  sleep 2
  for i in $(seq "$UPGRADES"); do
    [ "$i" -gt 1 ] && hold_batch "$name-$((i - 1))" "$later"
    "upgrade_$target"
    [ -n "$UPGRADE_MS" ] && times+=("$UPGRADE_MS")
    if [ -n "$UPGRADE_MS" ]; then
      log "$target upgrade $i: a new process served after $UPGRADE_MS ms; serving: $PROXY_PIDS"
    else
      log "$target upgrade $i: no new process; serving: $PROXY_PIDS"
    fi
    [ "$i" = "$UPGRADES" ] || sleep "$UPGRADE_GAP"
  done
  wait "$load" || true
  record "$target" upgrade old_at_end "$(alive_count "${RETIRED_MAIN[@]}")"
  for i in "${HOLDS[@]}"; do wait "$i" || log "$target: a ws-hold exited with $? (see $RUN/$name-*.hold.err)"; done
  # The WebSockets are closed: how long until every old process is gone (5 s at most).
  t0=$(now_ms) gone=""
  for _ in $(seq 250); do
    [ "$(alive_count "${RETIRED[@]}")" = 0 ] && { gone=$(($(now_ms) - t0)); break; }
    sleep 0.02
  done
  record "$target" upgrade old_gone_ms "$gone"
  record "$target" upgrade old_after_close "$(alive_count "${RETIRED_MAIN[@]}")"
  for i in "${RETIRED[@]}"; do stop_pid "$i"; done
  out=$(hold_totals "${HOLD_FILES[@]}")
  read -r rps p50 p99 err req < <(wrk_numbers "$RUN/$name.wrk")
  record "$target" upgrade upgrades "${#times[@]}"
  record "$target" upgrade ready_ms "$(median "${times[@]}")"
  record_output "$target" upgrade "$out" ws_dropped
  record "$target" upgrade rest_errors "$err"
  record "$target" upgrade probe_errors "$PROBE_FAILURES"
  record "$target" upgrade rps "$rps"
  record "$target" upgrade p99_ms "$p99"
  record_output "$target" upgrade "$out" echo_max_ms
}

# `run_together SCENARIO TARGET…`: start every target that runs SCENARIO, each on ports of
# its own (the N-th on HTTP_PORT, HTTPS_PORT and STATS_PORT moved up by 20 × N) and all
# pinned to PROXY_CPUS, run the scenario once for all of them, and stop them. A target
# named twice (TARGETS="haproxy edgepin haproxy edgepin": each against itself) runs twice,
# its second copy labelled TARGET.SLOT and recorded as TARGET.
run_together() {
  local scenario=$1 target label slot=0 http https stats ran=()
  shift
  PIDS_OF=() PORT_OF=()
  for target in "$@"; do
    supports "$target" "$scenario" || continue
    label=$target
    [ -n "${PORT_OF[$target]+set}" ] && label=$target.$slot
    http=$((HTTP_PORT + 20 * slot)) https=$((HTTPS_PORT + 20 * slot)) stats=$((STATS_PORT + 20 * slot))
    if [ "$target" = direct ]; then
      PIDS_OF[$label]="" PORT_OF[$label]=${BACKEND_PORTS[0]}
    else
      [ "$slot" = 0 ] || HTTP_PORT=$http HTTPS_PORT=$https STATS_PORT=$stats render_slot "$target" "$slot"
      HTTP_PORT=$http HTTPS_PORT=$https VARIANT=$([ "$slot" = 0 ] || echo "-slot$slot") start_proxy "$target"
      PIDS_OF[$label]=$PROXY_PIDS
      PORT_OF[$label]=$http
      [[ $scenario == *_tls ]] && PORT_OF[$label]=$https
      slot=$((slot + 1))
    fi
    ran+=("$label")
  done
  [ "${#ran[@]}" -gt 0 ] || return 0
  if [ "${#ran[@]}" -gt 1 ]; then
    log "rep $REP/$REPS: $scenario ${ran[*]} (together, in turns of $SLICE_MS ms)"
  else
    log "rep $REP/$REPS: $scenario ${ran[*]}"
  fi
  "scenario_$scenario" "${ran[@]}"
  slot=0
  for label in "${ran[@]}"; do
    [ "${label%.*}" = direct ] && continue
    HTTP_PORT=$((HTTP_PORT + 20 * slot)) PROXY_PIDS=${PIDS_OF[$label]} PROXY_TARGET=${label%.*} stop_proxy
    slot=$((slot + 1))
  done
}

render_slot() { # TARGET SLOT: its config on this slot's ports (HTTP_PORT… set by the caller)
  case $1 in
    edgepin) render "$ROOT/benches/configs/edgepin.yaml" "$RUN/edgepin-slot$2.yaml" ;;
    haproxy) render "$ROOT/benches/configs/haproxy.cfg" "$RUN/haproxy-slot$2.cfg" ;;
    nginx) render "$ROOT/benches/configs/nginx.conf" "$RUN/nginx-slot$2.conf" ;;
  esac
}

# The fixed-schedule scenarios (rest_rate_*, ws_echo): their targets run together, all of
# them at once (PAIRED=1) or one at a time.
sliced() { [[ $1 == rest_rate_plain || $1 == rest_rate_tls || $1 == ws_echo ]]; }

supports() { # TARGET SCENARIO: the direct baseline only has plain HTTP and echo; h2 is edgepin vs HAProxy
  [[ $2 != rest_h2 && $2 != h2_idle && $2 != ws_h2_idle ]] || [[ $1 == edgepin || $1 == haproxy ]] || return 1
  [ "$1" != direct ] || [[ $2 == rest_plain || $2 == rest_rate_plain || $2 == ws_echo ]]
}

# ------------------------------------------------------------------------------- main

preflight() {
  local t
  for t in $SCENARIOS; do declare -F "scenario_$t" >/dev/null || die "unknown scenario $t"; done
  [[ "$IDLE" == halt || "$IDLE" == poll ]] || die "IDLE is halt or poll, not $IDLE"
  [[ "$PAIRED" == 0 || "$PAIRED" == 1 ]] || die "PAIRED is 0 or 1, not $PAIRED"
  for t in wrk taskset timeout getconf; do command -v "$t" >/dev/null || die "$t is missing (make bench installs it)"; done
  [[ " $SCENARIOS " == *" rest_h2 "* ]] && { command -v h2load >/dev/null || die "h2load is missing (make bench installs nghttp2-client)"; }
  [[ " $TARGETS " == *" haproxy "* ]] && { command -v haproxy >/dev/null || die "haproxy is missing"; }
  [[ " $TARGETS " == *" nginx "* ]] && { command -v nginx >/dev/null || die "nginx is missing"; }
  for t in "$EDGEPIN" "$EXAMPLES/bench-backend" "$EXAMPLES/bench-client" "$EXAMPLES/bench-report"; do
    [ -x "$t" ] || die "$t is missing: run \`make bench\` (it builds them)"
  done
  for t in "$HTTP_PORT" "$HTTPS_PORT" "${BACKEND_PORTS[@]}" $((HTTP_PORT + 20)) $((HTTPS_PORT + 20)) \
    $((HTTP_PORT + 40)) $((HTTPS_PORT + 40)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$t") 2>/dev/null && die "port $t is taken: set BASE_PORT"
  done
  # Idle WebSockets need file descriptors: two per connection in the proxy.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  local files
  files=$(ulimit -n)
  [ "$files" = unlimited ] || [ "$files" -gt $((2 * WS_IDLE + 500)) ] ||
    die "open-file limit $files too low for WS_IDLE=$WS_IDLE"
  [ "$files" = unlimited ] || [ "$files" -gt $((2 * KEEPALIVE_IDLE + 500)) ] ||
    die "open-file limit $files too low for KEEPALIVE_IDLE=$KEEPALIVE_IDLE"
  [ "$files" = unlimited ] || [ "$files" -gt $((2 * UPGRADE_WS + 500)) ] ||
    die "open-file limit $files too low for UPGRADE_WS=$UPGRADE_WS"
}

# `rotate N A B C...`: the words, the first N moved to the end (N modulo their count).
rotate() {
  local n=$1
  shift
  local words=("$@")
  n=$((n % ${#words[@]}))
  echo "${words[@]:n}" "${words[@]:0:n}"
}

# IDLE=poll: a CPU latency request of 0 µs (PM QoS), held open until the script exits, so
# the kernel's idle loop polls instead of halting the CPU. In a VM a halted vCPU runs again
# only when the host schedules it: 1-5 ms late at times here, for every proxy alike.
hold_idle_poll() {
  [ "$IDLE" = poll ] || return 0
  exec {IDLE_FD}>/dev/cpu_dma_latency || die "IDLE=poll needs to write /dev/cpu_dma_latency (root)"
  printf 0 >&"$IDLE_FD"
}

main() {
  preflight
  CLK_TCK=$(getconf CLK_TCK) # clock ticks per second, for the /proc tick counts
  hold_idle_poll
  mkdir -p "$RUN/nginx-tmp"
  : >"$RESULTS"
  "$EDGEPIN" certs --out "$RUN/certs" >/dev/null
  cat "$RUN/certs/edge.crt" "$RUN/certs/edge.key" >"$RUN/certs/edge.pem"
  render "$ROOT/benches/configs/edgepin.yaml" "$RUN/edgepin.yaml"
  render "$ROOT/benches/configs/haproxy.cfg" "$RUN/haproxy.cfg"
  render "$ROOT/benches/configs/nginx.conf" "$RUN/nginx.conf"
  render_upgrade_configs

  {
    printf 'meta\tdate\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'meta\trepetitions\t%s x %s s (medians)\n' "$REPS" "$DURATION"
    printf 'meta\tpinning\tproxy on CPU %s (%s threads/workers); wrk, bench-client and backends on CPU %s\n' \
      "$PROXY_CPUS" "$THREADS" "$LOAD_CPUS"
    printf 'meta\tload\twrk -t1 -c%s; %s idle WebSockets; %s idle keep-alive connections; echo: %s WebSockets, one message each every %s ms; upgrade: %s WebSockets, %s upgrades %s s apart\n' \
      "$CONNECTIONS" "$WS_IDLE" "$KEEPALIVE_IDLE" "$WS_ECHO" "$WS_ECHO_INTERVAL_MS" "$UPGRADE_WS" "$UPGRADES" "$UPGRADE_GAP"
    printf 'meta\trate\trest_rate_plain %s requests/s, rest_rate_tls %s requests/s, over %s connections, open loop\n' \
      "$RATE_PLAIN" "$RATE_TLS" "$CONNECTIONS"
    printf 'meta\tversions\t%s; %s; %s; %s\n' "edgepin $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
      "$(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3)" "$(nginx -v 2>&1 | cut -d' ' -f3)" "$(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
    printf 'meta\tmachine\t%s CPUs, %s\n' "$(nproc)" "$(uname -r)"
    if [ "$IDLE" = poll ]; then
      printf 'meta\tidle\tCPUs poll when idle (0 us CPU latency request on /dev/cpu_dma_latency)\n'
    fi
    if [ "$PAIRED" = 1 ]; then
      printf 'meta\tpaired\trest_rate_*, ws_echo: every target at once, in turns of %s ms\n' "$SLICE_MS"
    fi
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

  local started=$SECONDS target scenario order
  for REP in $(seq "$REPS"); do
    order=$(rotate $((REP - 1)) $TARGETS)
    for scenario in $SCENARIOS; do
      if sliced "$scenario" && [ "$PAIRED" = 1 ]; then
        run_together "$scenario" $order
        continue
      elif sliced "$scenario"; then
        for target in $order; do run_together "$scenario" "$target"; done
        continue
      fi
      for target in $order; do
        supports "$target" "$scenario" || continue
        log "rep $REP/$REPS: $scenario $target"
        VARIANT=""
        [ "$scenario" = upgrade ] && VARIANT=-upgrade
        start_proxy "$target"
        CURRENT=$scenario-$target-$REP
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
