#!/usr/bin/env bash
# Submit one ray_rewards job to the local cluster with `ray job submit`, wait for it
# to finish and exit 0 only if it SUCCEEDED.
#
#   cluster/local/submit.sh CLUSTER_DIR JOB CONFIG [JOB OPTIONS...]
#
# JOB is pipeline, train, rllib, relabel, record or adversarial; CONFIG its YAML
# file; JOB OPTIONS go to `python -m ray_rewards.jobs` (e.g. --storage-path DIR). The
# job's output streams here and is kept in CLUSTER_DIR/jobs/<submission id>.log.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

if [[ $# -lt 3 ]]; then
    echo "usage: $0 CLUSTER_DIR JOB CONFIG [JOB OPTIONS...]" >&2
    exit 2
fi
CLUSTER_DIR=$(cd "$1" && pwd)
JOB=$2
CONFIG=$(cd "$(dirname "$3")" && pwd)/$(basename "$3")
shift 3
load_cluster_env "$CLUSTER_DIR"

SUBMISSION_ID=ray_rewards_${JOB}_$(date +%Y%m%d_%H%M%S)_$$
mkdir -p "$CLUSTER_DIR/jobs"
LOG=$CLUSTER_DIR/jobs/$SUBMISSION_ID.log

set +e
ray_cli job submit --address "$DASHBOARD_URL" --submission-id "$SUBMISSION_ID" \
    -- "$PYTHON" -m ray_rewards.jobs "$JOB" --config "$CONFIG" "$@" 2>&1 | tee "$LOG"
set -e

STATUS=$("$PYTHON" - "$DASHBOARD_URL" "$SUBMISSION_ID" <<'PY'
import sys

from ray.job_submission import JobSubmissionClient

print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)
PY
)
echo "job $SUBMISSION_ID: $STATUS (log: $LOG)"
[[ "$STATUS" == "SUCCEEDED" ]]
