#!/usr/bin/env bash
# A dask cluster on this machine, in the background: one `dask scheduler` and N `dask worker`s.
#
#   scripts/cluster.sh start [WORKERS] [PORT]   # PORT 0: any free port (the address is printed)
#   scripts/cluster.sh stop                     # stops only the processes `start` recorded
#   scripts/cluster.sh status
#
# Everything lives in $CLUSTER_DIR (default .cluster/): scheduler.json (its address), one
# <name>.pid and <name>.log per process, and each worker's scratch folder. Every process listens
# on 127.0.0.1 only: the scheduler and its dashboard, each worker, its nanny and its dashboard.
# Workers are plain `dask worker`s (pvtbuild sets up what it needs in them at run time) with
# pvtbuild's own local cluster's thread count (`python -m pvtbuild.engine.processes env THREADS`:
# torch / OpenMP threads = cores / workers) and run one task at a time (--nthreads 1).
# $WORKER_RESOURCES (e.g. "GPU=1") is passed to every worker as --resources.
# See docs/cluster.md.
set -euo pipefail

DIR=${CLUSTER_DIR:-.cluster}
PY=${PY:-.venv/bin/python}
DASK=${DASK:-$(dirname "$PY")/dask}

die() { echo "cluster.sh: $*" >&2; exit 1; }

alive() {  # alive PIDFILE: the recorded process still runs and is a dask process (not a reused pid)
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q dask
}

spawn() {  # spawn NAME CMD...: start CMD in its own session, logs and pid under $DIR
  local name=$1; shift
  setsid "$@" > "$DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/$name.pid"
}

address() {
  "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$DIR/scheduler.json"
}

dashboard() {
  "$PY" - "$DIR/scheduler.json" <<'EOF'
import json, sys
info = json.load(open(sys.argv[1]))
port = info.get("services", {}).get("dashboard")
try:
    import bokeh  # noqa: F401
    print(f"http://127.0.0.1:{port}/status" if port else "none")
except ImportError:
    print("not served (needs `pip install bokeh`)")
EOF
}

start() {
  local workers=${1:-2} port=${2:-8786}
  [[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a positive integer, got '$workers'"
  [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
  [[ -x "$DASK" ]] || die "$DASK not found; run make setup first"
  if alive "$DIR/scheduler.pid"; then
    die "a cluster is already running at $(address) (scheduler pid $(cat "$DIR/scheduler.pid")); scripts/cluster.sh stop first"
  fi
  mkdir -p "$DIR"
  rm -f "$DIR"/*.pid "$DIR/scheduler.json"

  local cores threads dash_port=0
  cores=$("$PY" -c 'from pvtbuild.engine.processes import cores; print(cores())')
  threads=$(( cores / workers > 0 ? cores / workers : 1 ))
  [[ "$port" != 0 ]] && dash_port=$((port + 1))
  eval "$("$PY" -m pvtbuild.engine.processes env "$threads")"
  export DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=2

  spawn scheduler "$DASK" scheduler --host 127.0.0.1 --port "$port" \
    --dashboard-address "127.0.0.1:$dash_port" --scheduler-file "$DIR/scheduler.json"
  for _ in $(seq 300); do
    [[ -s "$DIR/scheduler.json" ]] && break
    alive "$DIR/scheduler.pid" || die "the scheduler did not start; see $DIR/scheduler.log"
    sleep 0.1
  done
  [[ -s "$DIR/scheduler.json" ]] || die "the scheduler did not start within 30 s; see $DIR/scheduler.log"

  local addr i
  addr=$(address)
  for i in $(seq "$workers"); do
    spawn "worker-$i" "$DASK" worker "$addr" --host 127.0.0.1 --dashboard-address 127.0.0.1:0 \
      --nthreads 1 --name "worker-$i" \
      --local-directory "$DIR/worker-$i" ${WORKER_RESOURCES:+--resources "$WORKER_RESOURCES"}
  done
  "$PY" -c 'import sys; from distributed import Client
with Client(sys.argv[1], timeout="30s") as c:
    c.wait_for_workers(int(sys.argv[2]), timeout=60)' "$addr" "$workers" \
    || die "the workers did not connect within 60 s; see $DIR/worker-*.log"

  echo "dask scheduler: $addr"
  echo "dashboard:      $(dashboard)"
  echo "workers:        $workers x 1 task, $threads torch thread(s) each${WORKER_RESOURCES:+, resources $WORKER_RESOURCES}"
  echo "logs, pids:     $DIR/"
  echo "use it:         pvtbuild run pipelines/demo.yaml --out demo-out --scheduler $addr"
  echo "stop it:        make cluster-stop"
}

stop() {
  local f pids=()
  for f in "$DIR"/worker-*.pid "$DIR"/scheduler.pid; do  # workers first: they leave cleanly
    [[ -e "$f" ]] || continue
    if alive "$f"; then
      kill -TERM "$(cat "$f")" 2>/dev/null || true
      pids+=("$(cat "$f")")
    fi
    rm -f "$f"
  done
  for _ in $(seq 100); do
    local left=()
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left+=("$p"); done
    [[ ${#left[@]} -eq 0 ]] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -f "$DIR/scheduler.json"
  echo "stopped ${#pids[@]} process(es) recorded in $DIR/"
}

status() {
  local f
  for f in "$DIR"/*.pid; do
    [[ -e "$f" ]] || { echo "no cluster recorded in $DIR/"; return; }
    if alive "$f"; then echo "$(basename "$f" .pid): running (pid $(cat "$f"))"; else echo "$(basename "$f" .pid): gone"; fi
  done
  [[ -s "$DIR/scheduler.json" ]] && echo "scheduler address: $(address)"
  return 0
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: scripts/cluster.sh start [WORKERS] [PORT] | stop | status" ;;
esac
