# Shared by the cluster/local scripts (sourced, not run).
#
# PYTHON picks the interpreter (default: python3 on PATH); every Ray command runs as
# "$PYTHON -m ray.scripts.scripts", the `ray` CLI of exactly that environment, so the
# cluster, the job drivers and the submitting client all use the same Ray.
set -euo pipefail

PYTHON=${PYTHON:-python3}

ray_cli() {
    "$PYTHON" -m ray.scripts.scripts "$@"
}

# load_cluster_env DIR: the variables start.sh wrote (ports, PIDs, addresses).
load_cluster_env() {
    local env_file="$1/cluster.env"
    if [[ ! -f "$env_file" ]]; then
        echo "error: $env_file not found: start the cluster with cluster/local/start.sh $1" >&2
        exit 2
    fi
    # shellcheck disable=SC1090
    source "$env_file"
    # The cluster's own token (Ray 2.60 authenticates every client of a cluster).
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$AUTH_TOKEN_PATH"
}

# cluster_pids MARKER: PIDs of every process whose environment carries
# RAY_REWARDS_LOCAL_CLUSTER=MARKER (all processes of one cluster, and only those).
cluster_pids() {
    local marker="RAY_REWARDS_LOCAL_CLUSTER=$1" proc pid
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
        if { tr '\0' '\n' < "$proc/environ"; } 2>/dev/null | grep -qxF "$marker"; then
            echo "$pid"
        fi
    done
}
