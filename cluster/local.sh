#!/usr/bin/env bash
# A multi-node Ray cluster plus an MLflow tracking server on ONE machine, for
# trying the cluster code path (--address, a remote MLflow URI, trials on
# several raylets) without a cloud account. See cluster/local.md.
#
#   cluster/local.sh start [N_WORKERS]  head + N worker nodes (default 2) + mlflow server
#   eval "$(cluster/local.sh env)"      RAY_ADDRESS, token auth, MLFLOW_TRACKING_URI
#   cluster/local.sh status             what is running
#   cluster/local.sh stop               stop exactly the processes `start` recorded
#
# MLflow and the Ray dashboard listen on 127.0.0.1 only. Ray's GCS and raylets
# listen on all interfaces (Ray has no option against it), so Ray token
# authentication is on, with a token kept in the state directory. `stop` kills
# only the PIDs recorded at start, never `ray stop` (which would also stop every
# other Ray instance on the machine).
#
# Settings (environment variables, defaults in brackets):
#   METAXL_LOCAL_DIR       state: PIDs, logs, token, mlflow.db   [<repo>/outputs/local-cluster]
#   METAXL_RAY_PORT        GCS port of the head                  [6380]
#   METAXL_DASHBOARD_PORT  Ray dashboard (127.0.0.1)             [8265]
#   METAXL_MLFLOW_PORT     MLflow server (127.0.0.1)             [5000]
#   METAXL_HEAD_CPUS       logical CPUs of the head node         [1]
#   METAXL_WORKER_CPUS     logical CPUs of each worker node      [1]
#   METAXL_WORKER_GPUS     GPUs of each worker node              [0]
#   METAXL_OBJECT_STORE_MB object store per node, MB             [Ray's default]
#   METAXL_RAY_TEMP_DIR    Ray's temp dir, kept short (socket paths) and apart from
#                          /tmp/ray so a plain ray.init() elsewhere does not attach
#                          to this cluster                        [/tmp/ray-metaxl-$UID]
#   METAXL_START_TIMEOUT   seconds to wait for each service       [120]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${METAXL_LOCAL_DIR:-$ROOT/outputs/local-cluster}"
RAY_PORT="${METAXL_RAY_PORT:-6380}"
DASHBOARD_PORT="${METAXL_DASHBOARD_PORT:-8265}"
MLFLOW_PORT="${METAXL_MLFLOW_PORT:-5000}"
HEAD_CPUS="${METAXL_HEAD_CPUS:-1}"
WORKER_CPUS="${METAXL_WORKER_CPUS:-1}"
WORKER_GPUS="${METAXL_WORKER_GPUS:-0}"
RAY_TMP="${METAXL_RAY_TEMP_DIR:-/tmp/ray-metaxl-$(id -u)}"
TIMEOUT="${METAXL_START_TIMEOUT:-120}"
ADDRESS="127.0.0.1:$RAY_PORT"
TOKEN="$STATE/auth_token"
PIDS="$STATE/pids"

die() { echo "local.sh: $*" >&2; exit 1; }
say() { echo "local.sh: $*" >&2; }

need() {
  command -v "$1" >/dev/null 2>&1 ||
    die "'$1' not found on PATH: activate the project's virtualenv (pip install -e \".[dev]\")"
}

ray_env() {
  # Ray token authentication (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH): every node,
  # driver and CLI call must see the same mode and token.
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$TOKEN"
  export RAY_USAGE_STATS_ENABLED=0
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# launch NAME CMD...: start CMD in the background in its own session (so a
# Ctrl-C in this terminal does not reach it and `stop` can signal its process
# group), log to $STATE/NAME.log, record "NAME PID" in $PIDS.
launch() {
  local name="$1"; shift
  if command -v setsid >/dev/null 2>&1; then
    nohup setsid "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  else
    nohup "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  fi
  echo "$name $!" >>"$PIDS"
  say "started $name (pid $!), log: $STATE/$name.log"
}

wait_for() {  # wait_for WHAT PID CHECK...: poll CHECK until it succeeds; fail if PID dies
  local what="$1" pid="$2"; shift 2
  local deadline=$((SECONDS + TIMEOUT))
  until "$@" >/dev/null 2>&1; do
    alive "$pid" || die "$what exited during startup; see its log in $STATE, then: $0 stop"
    [ "$SECONDS" -lt "$deadline" ] || die "$what not ready after ${TIMEOUT}s (then: $0 stop)"
    sleep 2
  done
}

alive_nodes() {  # number of alive Ray nodes, asked of the GCS by a short-lived driver
  python - "$ADDRESS" <<'EOF'
import sys
import ray

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(bool(node["Alive"]) for node in ray.nodes()))
EOF
}

nodes_at_least() { [ "$(alive_nodes 2>/dev/null)" -ge "$1" ]; }

http_ok() {
  python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)" "$1"
}

cmd_start() {
  local workers="${1:-2}"
  need ray; need mlflow; need python
  [ -s "$PIDS" ] && die "already started (see $PIDS); run '$0 stop' first"
  mkdir -p "$STATE" "$RAY_TMP"
  : >"$PIDS"
  if [ ! -s "$TOKEN" ]; then
    (umask 077 && python -c "import secrets; print(secrets.token_hex(32))" >"$TOKEN")
  fi
  ray_env
  local store=()
  if [ -n "${METAXL_OBJECT_STORE_MB:-}" ]; then
    store=(--object-store-memory $((METAXL_OBJECT_STORE_MB * 1024 * 1024)))
  fi

  # Head node. --block keeps `ray start` running as its own process, whose PID
  # is recorded: on SIGTERM it stops the raylet, GCS, dashboard etc. it started.
  launch ray-head ray start --head --block --port "$RAY_PORT" \
    --num-cpus "$HEAD_CPUS" --num-gpus 0 \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --temp-dir "$RAY_TMP" --disable-usage-stats ${store[@]+"${store[@]}"}
  wait_for "Ray head" "$(pid_of ray-head)" nodes_at_least 1

  # Worker nodes: same machine, each with its own raylet and its own resources.
  # One at a time: a node that cannot register within Ray's startup deadline
  # gives up, which simultaneous starts on a small machine can cause.
  local i
  for ((i = 1; i <= workers; i++)); do
    launch "ray-worker-$i" ray start --block --address "$ADDRESS" \
      --num-cpus "$WORKER_CPUS" --num-gpus "$WORKER_GPUS" --temp-dir "$RAY_TMP" \
      --disable-usage-stats ${store[@]+"${store[@]}"}
    wait_for "Ray worker $i" "$(pid_of "ray-worker-$i")" nodes_at_least $((i + 1))
  done

  # MLflow tracking server: sqlite backend, artifacts proxied by the server
  # into $STATE/mlartifacts, so trials on any node log over HTTP only.
  launch mlflow mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$STATE/mlflow.db" --artifacts-destination "$STATE/mlartifacts"
  wait_for "MLflow server" "$(pid_of mlflow)" http_ok "http://127.0.0.1:$MLFLOW_PORT/health"

  cat >&2 <<EOF

local.sh: cluster up: $((workers + 1)) Ray nodes at $ADDRESS, MLflow at http://127.0.0.1:$MLFLOW_PORT
  eval "\$($0 env)"
  python sweeps/pairs.py --address auto --mlflow-uri http://127.0.0.1:$MLFLOW_PORT \\
    [--config SWEEP.yaml]
  browse: http://127.0.0.1:$MLFLOW_PORT (MLflow)
          http://127.0.0.1:$DASHBOARD_PORT (Ray dashboard, needs ray[default]; token: $TOKEN)
  stop:   $0 stop
EOF
}

pid_of() { [ -f "$PIDS" ] && awk -v n="$1" '$1 == n {print $2}' "$PIDS" | tail -n 1; }

stop_one() {  # stop_one NAME PID: SIGTERM, wait, then SIGKILL its process group
  local name="$1" pid="$2" i
  if ! alive "$pid"; then say "$name (pid $pid) already gone"; return; fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do alive "$pid" || break; sleep 1; done
  if alive "$pid"; then
    say "$name (pid $pid) ignored SIGTERM; sending SIGKILL to its process group"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  # Children left in the process group (mlflow's uvicorn workers): end them too.
  kill -TERM -- "-$pid" 2>/dev/null || true
  say "stopped $name (pid $pid)"
}

cmd_stop() {
  [ -s "$PIDS" ] || { say "nothing recorded in $PIDS"; return 0; }
  # MLflow and workers first, the head last.
  local name pid
  while read -r name pid; do
    [ "$name" = ray-head ] || stop_one "$name" "$pid"
  done < <(awk '{line[NR] = $0} END {for (i = NR; i > 0; i--) print line[i]}' "$PIDS")
  pid="$(pid_of ray-head)"
  [ -n "$pid" ] && stop_one ray-head "$pid"
  rm -f "$PIDS"
}

cmd_status() {
  [ -s "$PIDS" ] || { say "not running (no $PIDS)"; return 1; }
  local name pid ok=0
  while read -r name pid; do
    if alive "$pid"; then echo "$name pid $pid running"; else echo "$name pid $pid DEAD"; ok=1; fi
  done <"$PIDS"
  ray_env
  echo "ray nodes alive: $(alive_nodes 2>/dev/null || echo '?')"
  if http_ok "http://127.0.0.1:$MLFLOW_PORT/health" 2>/dev/null; then
    echo "mlflow: http://127.0.0.1:$MLFLOW_PORT ok"
  else
    echo "mlflow: http://127.0.0.1:$MLFLOW_PORT NOT answering"; ok=1
  fi
  return $ok
}

cmd_env() {
  cat <<EOF
export RAY_ADDRESS=$ADDRESS
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$TOKEN
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
EOF
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
