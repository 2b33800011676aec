#!/usr/bin/env bash
# Start a real two-node Ray cluster on 127.0.0.1 and wait until both nodes are up.
#
#   cluster/local/start.sh CLUSTER_DIR
#
# - head node: --num-cpus=${HEAD_CPUS:-0} (as on a cloud cluster, it runs the job
#   drivers, the GCS and the dashboard with its job server; tasks and actors go to
#   workers), the dashboard on 127.0.0.1:<free port> for `ray job submit`;
# - worker node: `ray start --address=127.0.0.1:<gcs port>` with
#   --num-cpus=${WORKER_CPUS:-4}, --num-gpus=${WORKER_GPUS:-0} (the machine's GPUs, if
#   any, for the GPU settings of the jobs) and the custom resource {"cpu_worker":
#   WORKER_CPUS} that jobs use to place work there (custom_resources_per_env_runner).
#
# Every port is a free one, and the cluster has its own --temp-dir, so it never
# meets another Ray instance on the machine (ray.init() elsewhere does not find it).
# Each node is a `ray start --block` process in the background; all Ray processes
# of the cluster carry RAY_REWARDS_LOCAL_CLUSTER=CLUSTER_DIR in their environment,
# which is how stop.sh finds them (and only them). Writes CLUSTER_DIR/cluster.env.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 CLUSTER_DIR" >&2
    exit 2
fi
mkdir -p "$1"
CLUSTER_DIR=$(cd "$1" && pwd)
if [[ -f "$CLUSTER_DIR/cluster.env" ]]; then
    echo "error: $CLUSTER_DIR/cluster.env exists: a cluster was started there;" \
        "stop it with cluster/local/stop.sh $CLUSTER_DIR first" >&2
    exit 2
fi
# An absolute interpreter path: job drivers run it from the cluster's environment.
PYTHON=$(command -v "$PYTHON")
HEAD_CPUS=${HEAD_CPUS:-0}
WORKER_CPUS=${WORKER_CPUS:-4}
WORKER_GPUS=${WORKER_GPUS:-0}
START_TIMEOUT_S=${START_TIMEOUT_S:-180}

# The dashboard needs Ray's "default" extra (aiohttp & co.): fail now, not in ray start.
if ! "$PYTHON" -c "import aiohttp, ray.dashboard.modules.job.job_head" 2>/dev/null; then
    echo "error: $PYTHON cannot run Ray's dashboard/job server; install it with" \
        "pip install 'ray_rewards[cluster]' (that is, ray[default])" >&2
    exit 2
fi

# Unix socket paths must stay under ~100 characters: a short temp dir of our own, with
# one subdirectory per node (each node's log monitor then reads only its own logs).
RAY_TMP=$(mktemp -d /tmp/rrc.XXXXXX)
read -r GCS_PORT DASHBOARD_PORT CLIENT_PORT \
    HEAD_AGENT_PORT HEAD_AGENT_GRPC_PORT HEAD_METRICS_PORT HEAD_RUNTIME_ENV_PORT \
    WORKER_AGENT_PORT WORKER_AGENT_GRPC_PORT WORKER_METRICS_PORT WORKER_RUNTIME_ENV_PORT \
    < <("$PYTHON" - <<'EOF'
import socket

socks = [socket.socket() for _ in range(11)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
EOF
)
# Ray authenticates every client with a token: this cluster gets its own (not the
# user's ~/.ray/auth_token); submit.sh and stop.sh read it from cluster.env.
AUTH_TOKEN_PATH=$CLUSTER_DIR/auth_token
(umask 077 && "$PYTHON" -c "import secrets; print(secrets.token_hex(32))" > "$AUTH_TOKEN_PATH")
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$AUTH_TOKEN_PATH"
GCS_ADDRESS=127.0.0.1:$GCS_PORT
DASHBOARD_URL=http://127.0.0.1:$DASHBOARD_PORT

# The environment of both nodes' processes (and so of every worker and job driver):
# the cluster marker, RAY_ADDRESS so that Ray code inside the cluster that looks the
# cluster up (the state API) finds this one among the machine's Ray instances, and
# no drain delay on SIGTERM (it serves Ray Serve, which these jobs do not use).
NODE_ENV=(
    "RAY_REWARDS_LOCAL_CLUSTER=$CLUSTER_DIR" "RAY_ADDRESS=$GCS_ADDRESS"
    RAY_USAGE_STATS_ENABLED=0 RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0
)

env "${NODE_ENV[@]}" "$PYTHON" -m ray.scripts.scripts start --head --block \
    --node-ip-address=127.0.0.1 --port="$GCS_PORT" --temp-dir="$RAY_TMP/head" \
    --num-cpus="$HEAD_CPUS" --num-gpus=0 \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --ray-client-server-port="$CLIENT_PORT" \
    --dashboard-agent-listen-port="$HEAD_AGENT_PORT" \
    --dashboard-agent-grpc-port="$HEAD_AGENT_GRPC_PORT" \
    --metrics-export-port="$HEAD_METRICS_PORT" --runtime-env-agent-port="$HEAD_RUNTIME_ENV_PORT" \
    --disable-usage-stats > "$CLUSTER_DIR/head.log" 2>&1 &
HEAD_PID=$!

cat > "$CLUSTER_DIR/cluster.env" <<EOF
PYTHON=$PYTHON
RAY_TMP=$RAY_TMP
AUTH_TOKEN_PATH=$AUTH_TOKEN_PATH
GCS_ADDRESS=$GCS_ADDRESS
DASHBOARD_URL=$DASHBOARD_URL
HEAD_PID=$HEAD_PID
EOF

# wait_for_nodes N PID...: until the dashboard lists N alive nodes; fails on a time
# out or as soon as one of the `ray start` processes PID... has exited.
wait_for_nodes() {
    "$PYTHON" - "$DASHBOARD_URL" "$START_TIMEOUT_S" "$AUTH_TOKEN_PATH" "$@" <<'EOF'
import json, os, sys, time, urllib.request

url, timeout, want = sys.argv[1], float(sys.argv[2]), int(sys.argv[4])
pids = [int(p) for p in sys.argv[5:]]
with open(sys.argv[3]) as f:
    headers = {"Authorization": f"Bearer {f.read().strip()}"}
request = urllib.request.Request(f"{url}/api/v0/nodes?limit=100", headers=headers)
deadline = time.monotonic() + timeout
while True:
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            nodes = json.load(r)["data"]["result"]["result"]
        alive = [n for n in nodes if n["state"] == "ALIVE"]
        if len(alive) >= want:
            sys.exit(0)
    except (OSError, ValueError, KeyError):
        pass
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"ray start (pid {pid}) exited")
    if time.monotonic() > deadline:
        sys.exit(f"timed out after {timeout:.0f}s waiting for {want} alive node(s) at {url}")
    time.sleep(1)
EOF
}

# fail MESSAGE: report, stop whatever was started, exit 1.
fail() {
    echo "error: $1" >&2
    "$(dirname "${BASH_SOURCE[0]}")/stop.sh" "$CLUSTER_DIR" >&2 || true
    exit 1
}

wait_for_nodes 1 "$HEAD_PID" || fail "the head node did not come up; see $CLUSTER_DIR/head.log"

env "${NODE_ENV[@]}" "$PYTHON" -m ray.scripts.scripts start --block \
    --address="$GCS_ADDRESS" --node-ip-address=127.0.0.1 --temp-dir="$RAY_TMP/worker" \
    --num-cpus="$WORKER_CPUS" --num-gpus="$WORKER_GPUS" --resources="{\"cpu_worker\": $WORKER_CPUS}" \
    --dashboard-agent-listen-port="$WORKER_AGENT_PORT" \
    --dashboard-agent-grpc-port="$WORKER_AGENT_GRPC_PORT" \
    --metrics-export-port="$WORKER_METRICS_PORT" \
    --runtime-env-agent-port="$WORKER_RUNTIME_ENV_PORT" \
    --disable-usage-stats > "$CLUSTER_DIR/worker.log" 2>&1 &
WORKER_PID=$!
echo "WORKER_PID=$WORKER_PID" >> "$CLUSTER_DIR/cluster.env"

wait_for_nodes 2 "$HEAD_PID" "$WORKER_PID" || fail "the worker node did not join; see $CLUSTER_DIR/worker.log"
echo "two-node Ray cluster up: GCS $GCS_ADDRESS, dashboard and job server $DASHBOARD_URL"
echo "submit jobs with: cluster/local/submit.sh $CLUSTER_DIR JOB CONFIG;" \
    "stop it with: cluster/local/stop.sh $CLUSTER_DIR"
