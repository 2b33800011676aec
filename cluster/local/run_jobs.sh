#!/usr/bin/env bash
# Start the local two-node cluster, run every job on it with `ray job submit`, stop it.
#
#   cluster/local/run_jobs.sh [CLUSTER_DIR]
#
# CLUSTER_DIR (default results/local_cluster/<timestamp>) receives a copy of the
# configs in cluster/local/jobs/, so each job's results land in
# CLUSTER_DIR/results/<job>/ (results.json, reward_net.pt, ...), plus the cluster's
# logs. JOBS (default "pipeline train rllib record relabel offline adversarial
# preferences") picks which jobs run, in that order: train and rllib use what the
# pipeline wrote, record the rllib job's checkpoint, relabel the record job's
# demonstrations (with the pipeline's net), offline the relabeled transitions,
# adversarial the record job's demonstrations; preferences needs nothing before it.
# The cluster is stopped (no process left behind) however the jobs end.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CLUSTER_DIR=${1:-results/local_cluster/$(date +%Y%m%d-%H%M%S)}
JOBS=${JOBS:-pipeline train rllib record relabel offline adversarial preferences}

mkdir -p "$CLUSTER_DIR"
CLUSTER_DIR=$(cd "$CLUSTER_DIR" && pwd)
cp "$HERE"/jobs/*.yaml "$CLUSTER_DIR/"

"$HERE/start.sh" "$CLUSTER_DIR"
trap '"$HERE/stop.sh" "$CLUSTER_DIR"' EXIT

for job in $JOBS; do
    echo "=== $job ==="
    "$HERE/submit.sh" "$CLUSTER_DIR" "$job" "$CLUSTER_DIR/$job.yaml"
done
echo "all jobs succeeded; results in $CLUSTER_DIR/results/"
