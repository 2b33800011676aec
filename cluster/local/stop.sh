#!/usr/bin/env bash
# Stop the local cluster started by start.sh in CLUSTER_DIR, leaving no process behind.
#
#   cluster/local/stop.sh CLUSTER_DIR
#
# Never `ray stop`: that kills every Ray process on the machine, other people's
# included. Instead:
#   1. SIGTERM each node's `ray start --block` process: Ray then shuts down what it
#      started on that node (raylet, GCS, dashboard, workers) in order;
#   2. after STOP_TIMEOUT_S (default 30 s), SIGKILL whatever is left of *this*
#      cluster: the processes whose environment holds RAY_REWARDS_LOCAL_CLUSTER=
#      CLUSTER_DIR (job drivers included, which Ray runs in sessions of their own);
#   3. check that none is left (exit 1, listing them, otherwise).
# The Ray logs are copied to CLUSTER_DIR/ray_logs and the cluster's temp dir removed.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 CLUSTER_DIR" >&2
    exit 2
fi
CLUSTER_DIR=$(cd "$1" && pwd)
load_cluster_env "$CLUSTER_DIR"
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-30}

alive() {
    local pid
    for pid in "$@"; do
        kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}

node_pids=("$HEAD_PID")
[[ -n "${WORKER_PID:-}" ]] && node_pids=("$WORKER_PID" "$HEAD_PID")
for pid in "${node_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
done
for _ in $(seq "$STOP_TIMEOUT_S"); do
    alive "${node_pids[@]}" || break
    sleep 1
done

left=$(cluster_pids "$CLUSTER_DIR")
if [[ -n "$left" ]]; then
    # Stragglers (a job driver, a worker the raylet did not reach): TERM, then KILL.
    kill -TERM $left 2>/dev/null || true
    sleep 3
    left=$(cluster_pids "$CLUSTER_DIR")
    [[ -n "$left" ]] && { kill -KILL $left 2>/dev/null || true; sleep 1; }
fi

left=$(cluster_pids "$CLUSTER_DIR")
if [[ -n "$left" ]]; then
    echo "error: processes of the cluster in $CLUSTER_DIR are still running:" >&2
    ps -o pid,stat,args -p "$(echo $left | tr ' ' ',')" >&2 || true
    exit 1
fi

rm -rf "$CLUSTER_DIR/ray_logs"
for node in head worker; do
    if [[ -d "$RAY_TMP/$node/session_latest/logs" ]]; then
        mkdir -p "$CLUSTER_DIR/ray_logs"
        cp -rL "$RAY_TMP/$node/session_latest/logs" "$CLUSTER_DIR/ray_logs/$node" 2>/dev/null || true
    fi
done
rm -rf "$RAY_TMP"
mv "$CLUSTER_DIR/cluster.env" "$CLUSTER_DIR/cluster.env.stopped"
echo "local cluster in $CLUSTER_DIR stopped; no process of it is left"
