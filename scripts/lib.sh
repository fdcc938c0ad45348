# scripts/lib.sh — helpers the scripts share. Source it; set `me` first (the prefix of messages).

say() { printf '%s: %s\n' "$me" "$*" >&2; }
die() { printf '%s: error: %s\n' "$me" "$*" >&2; exit 1; }

# Where downloads, builds and runtime state live, outside the repository.
cache="${SAGASHOP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sagashop}"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port [TAKEN...]: a port nothing listens on, other than TAKEN. It is picked below the
# kernel's ephemeral range (outgoing connections take their local ports from there, and a port
# one of them holds cannot be bound even though nothing listens on it).
free_port() {
  local port low=20000 high=32767 ephemeral
  if read -r ephemeral _ 2>/dev/null </proc/sys/net/ipv4/ip_local_port_range &&
    ((ephemeral > low + 1000)); then
    high=$((ephemeral - 1))
  fi
  for _ in $(seq 1 50); do
    port=$((low + RANDOM % (high - low + 1)))
    [[ " $* " == *" $port "* ]] && continue
    port_open "$port" || { printf '%s\n' "$port"; return 0; }
  done
  die "found no free port on 127.0.0.1 after 50 tries"
}

# pid_alive PIDFILE PATTERN: print the PID in PIDFILE if that process still runs and its command
# line matches PATTERN (PIDs get reused, so a live PID alone proves nothing).
pid_alive() {
  local pid
  [[ -f "$1" ]] || return 1
  pid=$(<"$1")
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
  printf '%s\n' "$pid"
}

# started_alive PIDFILE: whether the process we just started still runs. Right after the fork its
# command line is still this script's, so only liveness counts here, not pid_alive's pattern.
started_alive() { [[ -f "$1" ]] && kill -0 "$(<"$1")" 2>/dev/null; }

# stop_pid PID NAME SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL.
stop_pid() {
  local pid=$1 name=$2 seconds=$3
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 $((seconds * 4))); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.25
  done
  say "$name ignored SIGTERM for ${seconds}s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# start_detached PIDFILE LOGFILE COMMAND...: run COMMAND in its own session (it outlives this
# shell and signals sent to our process group), appending its output to LOGFILE.
start_detached() {
  local pidfile=$1 logfile=$2
  shift 2
  setsid nohup "$@" >>"$logfile" 2>&1 </dev/null &
  printf '%s\n' "$!" >"$pidfile"
}
