#!/usr/bin/env bash
# Submit the MA-V job to a running Ray cluster.
#   jobs/submit.sh --split sav_train --data-root s3://bucket/sa-v --out s3://bucket/ma-v \
#       --checkpoint /models/videomama --base-model /models/svd-img2vid-xt
# RAY_ADDRESS (default http://127.0.0.1:8265) selects the cluster's dashboard/job server.
# Every argument is passed to `python -m pipeline.run` (see `python -m pipeline.run --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
exec ray job submit \
  --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --runtime-env jobs/runtime_env.yaml \
  ${SUBMIT_ID:+--submission-id "$SUBMIT_ID"} \
  -- python -m pipeline.run "$@"
