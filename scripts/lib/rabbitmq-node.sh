# shellcheck shell=bash
# Sourced by scripts/rabbitmq-cluster and scripts/rabbitmq-private: running a
# RabbitMQ 3.10 node of their own beside the machine's (rabbit@localhost on
# 5672), from the machine's package, as the rabbitmq user, with its own node
# name, ports, configuration and data directory; finding its Erlang VM, waiting
# for it, stopping it.
#
# A node lives in one directory DIR: DIR/rabbitmq.conf and DIR/enabled_plugins
# (the caller writes them before each start), DIR/mnesia (data), DIR/log (the
# node's log), DIR/start.log (rabbitmq-server's own output).
#
# The caller sets `me` (its name, for messages) before sourcing. Failures of a
# node go through rmq_node_failed, which exits; with QUIET_FAILURE set it says
# only the reason (a caller that will retry from scratch).

# The package's scripts themselves, not the /usr/sbin wrappers: those cd to
# /var/lib/rabbitmq and send rabbitmq-server's output to
# /var/log/rabbitmq/startup_log, which belongs to the machine's own node.
RMQ_BIN=/usr/lib/rabbitmq/bin
RMQ_RUN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RMQ_HOME=/var/lib/rabbitmq
export PATH=/usr/local/sbin:/usr/sbin:/sbin:$PATH

die() {
  echo "$me: $*" >&2
  exit 1
}
note() { echo "$me: $*" >&2; }

# --- running things as the rabbitmq user ---------------------------------------------

# A clean environment: nothing of the caller's RABBITMQ_*/ERL_* variables leaks
# in. RABBITMQ_CONF_ENV_FILE=/dev/null: /etc/rabbitmq/rabbitmq-env.conf names
# the machine's own node (NODENAME=rabbit@localhost) and must not apply. As the
# rabbitmq user with HOME=/var/lib/rabbitmq, the nodes and the CLI share that
# Erlang cookie.
rmq_as_rabbitmq() { # SECONDS (0: no limit) CMD...
  local secs=$1
  shift
  timeout -k 5 "$secs" runuser -u rabbitmq -- /usr/bin/env -i PATH="$RMQ_RUN_PATH" HOME="$RMQ_HOME" \
    LANG=C.UTF-8 LC_ALL=C.UTF-8 RABBITMQ_CONF_ENV_FILE=/dev/null ERL_EPMD_ADDRESS=127.0.0.1 "$@"
}

# rabbitmqctl against one node, always named with -n. The CLI's own
# distribution listener stays on loopback too (what /etc/rabbitmq's ERL_FLAGS
# does for the machine's CLI).
rmq_ctl() { # NODENAME SECONDS ARGS...
  local node=$1 secs=$2
  shift 2
  rmq_as_rabbitmq "$secs" RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    "$RMQ_BIN/rabbitmqctl" -n "$node" "$@"
}

# --- processes ---------------------------------------------------------------------

# The pid of the node's Erlang VM, from /proc, so it works for a node that no
# longer answers: the beam.smp whose environment names DIR/mnesia as its data
# (rabbitmq-server passes its environment on to the VM; the CLI's VMs are
# never given RABBITMQ_MNESIA_BASE).
rmq_node_pid() { # DIR -> pid; 1 if none
  local want=RABBITMQ_MNESIA_BASE=$1/mnesia p state
  for p in /proc/[0-9]*; do
    [ "$(cat "$p/comm" 2>/dev/null)" = beam.smp ] || continue
    # A zombie (waiting for its reaper) is as good as gone.
    state=$(awk '{ print $3 }' "$p/stat" 2>/dev/null) || continue
    [ "$state" != Z ] || continue
    { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF -- "$want" || continue
    echo "${p#/proc/}"
    return 0
  done
  return 1
}

rmq_process_gone() { # PID
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 0
  [ "$state" = Z ]
}

rmq_wait_gone() { # PID SECONDS
  local deadline=$((SECONDS + $2))
  until rmq_process_gone "$1"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

rmq_port_open() { timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# --- failures ----------------------------------------------------------------------------

# One line of reason, then the tail of the node's logs; exits.
rmq_node_failed() { # DIR NODENAME REASON
  local d=$1 log=$1/log/$2.log
  if [ -n "${QUIET_FAILURE:-}" ]; then
    note "$3"
    exit 1
  fi
  echo "$me: $3; last lines of its logs ($d/start.log, $log):" >&2
  tail -n 5 "$d/start.log" 2>/dev/null | sed 's/^/  /' >&2 || true
  tail -n 20 "$log" 2>/dev/null | sed 's/^/  /' >&2 || true
  exit 1
}

# --- start / wait / stop -------------------------------------------------------------------

rmq_has_data() { [ -d "$1/mnesia/$2" ]; } # DIR NODENAME

# Starts the node detached, from DIR's configuration; the caller checked that
# it is down and its ports are free. ERL_ARGS: extra flags for its Erlang VM.
rmq_start_node() { # DIR NODENAME AMQP_PORT DIST_PORT [ERL_ARGS]
  local d=$1 node=$2 amqp=$3 dist=$4 erl_args=${5:-}
  note "starting $node"
  # setsid and no inherited descriptors: the daemon never holds the calling
  # script's lock nor the caller's terminal or pipes (CI reads the output to
  # its end).
  (
    cd "$d"
    exec </dev/null >>"$d/start.log" 2>&1
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      [ "$fd" -le 2 ] || eval "exec $fd>&-" 2>/dev/null || true
    done
    exec setsid runuser -u rabbitmq -- /usr/bin/env -i PATH="$RMQ_RUN_PATH" HOME="$RMQ_HOME" \
      LANG=C.UTF-8 LC_ALL=C.UTF-8 RABBITMQ_CONF_ENV_FILE=/dev/null ERL_EPMD_ADDRESS=127.0.0.1 \
      RABBITMQ_NODENAME="$node" \
      RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
      RABBITMQ_NODE_PORT="$amqp" \
      RABBITMQ_DIST_PORT="$dist" \
      RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
      RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config" \
      RABBITMQ_MNESIA_BASE="$d/mnesia" \
      RABBITMQ_LOG_BASE="$d/log" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
      RABBITMQ_PID_FILE="$d/pid" \
      ERL_CRASH_DUMP="$d/log/erl_crash.dump" \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$erl_args" \
      "$RMQ_BIN/rabbitmq-server" -detached
  ) || rmq_node_failed "$d" "$node" "rabbitmq-server -detached failed for $node"
}

# Booted: the VM answers and the rabbit application has started.
rmq_wait_booted() { # DIR NODENAME DEADLINE TIMEOUT(for messages)
  local d=$1 node=$2 deadline=$3 pid left
  until rmq_ctl "$node" 10 -q ping >/dev/null 2>&1; do
    pid=$(rmq_node_pid "$d") || rmq_node_failed "$d" "$node" "$node exited while starting"
    [ "$SECONDS" -lt "$deadline" ] || rmq_node_failed "$d" "$node" "$node (pid $pid) did not answer within $4 s"
    sleep 1
  done
  left=$((deadline - SECONDS))
  [ "$left" -gt 5 ] || left=5
  rmq_ctl "$node" $((left + 10)) -q await_startup --timeout "$left" >/dev/null 2>&1 ||
    rmq_node_failed "$d" "$node" "$node did not finish booting within $4 s"
}

rmq_wait_port() { # DIR NODENAME PORT DEADLINE
  until rmq_port_open "$3"; do
    [ "$SECONDS" -lt "$4" ] || rmq_node_failed "$1" "$2" "$2 booted but 127.0.0.1:$3 does not accept connections"
    sleep 0.5
  done
}

rmq_stop_gracefully() { # DIR NODENAME
  local pid
  pid=$(rmq_node_pid "$1") || return 0
  rmq_ctl "$2" 120 -q stop >/dev/null 2>&1 || rmq_node_pid "$1" >/dev/null ||
    return 0 # it went down while being asked
  rmq_wait_gone "$pid" 60 || rmq_node_failed "$1" "$2" "$2 (pid $pid) still runs 60 s after rabbitmqctl stop"
}

rmq_kill_node() { # DIR NODENAME
  local pid
  pid=$(rmq_node_pid "$1") || return 0
  kill -KILL "$pid" 2>/dev/null || true
  rmq_wait_gone "$pid" 30 || die "$2 (pid $pid) survived SIGKILL for 30 s"
}

# Stops the nodes in DIRs (alive, hung or half-started: SIGTERM, so RabbitMQ
# shuts down cleanly, all at once; SIGKILL after 20 s) and removes the DIRs.
rmq_down_and_remove() { # DIR...
  local d pid pids=()
  for d in "$@"; do
    if pid=$(rmq_node_pid "$d"); then
      pids+=("$pid")
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    rmq_wait_gone "$pid" 20 || kill -KILL "$pid" 2>/dev/null || true
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    rmq_wait_gone "$pid" 30 || die "pid $pid (a node of $me) survived SIGKILL for 30 s"
  done
  for d in "$@"; do
    ! rmq_node_pid "$d" >/dev/null || die "the node in $d started again while being stopped"
    rm -rf --one-file-system -- "$d" || die "cannot remove $d"
  done
}

# --- checks before starting -------------------------------------------------------------------

rmq_need() { # COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  note "installing $2 with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1 ||
    die "$1 not found and apt-get install $2 failed"
}

rmq_preflight() {
  { [ -x "$RMQ_BIN/rabbitmq-server" ] && [ -x "$RMQ_BIN/rabbitmqctl" ]; } ||
    die "RabbitMQ is not installed ($RMQ_BIN/rabbitmq-server missing; Debian: apt-get install rabbitmq-server)"
  getent passwd rabbitmq >/dev/null || die "there is no rabbitmq user (is rabbitmq-server installed?)"
  [ -r "$RMQ_HOME/.erlang.cookie" ] || die "no Erlang cookie at $RMQ_HOME/.erlang.cookie"
  rmq_need curl curl
  rmq_need jq jq
}

# A root directory for state must be absolute and plain (it goes into
# configuration files and rm -rf).
rmq_check_root() { # VARIABLE-NAME VALUE
  case "$2" in
    /*) ;;
    *) die "$1 must be an absolute path (got '$2')" ;;
  esac
  case "$2" in
    / | */ | *[[:space:]]* | *..* | *%* | *,*) die "$1 '$2' is not usable (no '/', trailing '/', '..', spaces, '%' or ',')" ;;
  esac
}
