#!/usr/bin/env bash
# Run the upstream llm-d latency predictor's own client tests, unchanged, against
# freshly started (cold) slocast servers: a training server and a 2-worker
# prediction server sharing an empty model directory, no admin token.
#
#   scripts/upstream-latency-tests.sh PATH/TO/llm-d-latency-predictor [pytest args...]
#
# LOGS=DIR keeps the servers' logs there (they are removed with the temp dir).
# TOPOLOGY=separate gives the prediction server a model directory of its own and
# only TRAINING_SERVER_URL, as upstream's deployment does: it then downloads the
# trainer's models over HTTP (docs/latency.md, "Model hand-off").
#
# The checkout is not part of slocast (fetch it yourself, e.g. a git clone at
# v0.9.0); this script only starts the servers, points TRAINING_SERVER_URL /
# PREDICTION_SERVER_URL at them and runs tests/test_dual_server_client.py.
set -euo pipefail
upstream=${1:?usage: $0 PATH/TO/llm-d-latency-predictor [pytest args...]}
shift
test_file="$upstream/tests/test_dual_server_client.py"
[[ -f "$test_file" ]] || { echo "no $test_file" >&2; exit 2; }
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
training_port=${TRAINING_PORT:-18000}
prediction_port=${PREDICTION_PORT:-18001}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -n "${LOGS:-}" ]]; then mkdir -p "$LOGS" && cp "$work"/*.log "$LOGS"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

export SLOCAST_LATENCY_HOST=127.0.0.1
export SLOCAST_LATENCY_MODEL_DIR="$work/models"
export SLOCAST_LATENCY_TRAINING_PORT=$training_port
export SLOCAST_LATENCY_PREDICTION_PORT=$prediction_port
export SLOCAST_LATENCY_WORKERS=2
unset SLOCAST_ADMIN_TOKEN
"$python" -m slocast.cli latency-trainer >"$work/trainer.log" 2>&1 &
pids+=($!)
case ${TOPOLOGY:-shared} in
  shared) predictor_env=() ;;
  separate)
    predictor_env=(SLOCAST_LATENCY_MODEL_DIR="$work/predictor-models"
      TRAINING_SERVER_URL="http://127.0.0.1:$training_port") ;;
  *) echo "TOPOLOGY must be shared or separate" >&2; exit 2 ;;
esac
env "${predictor_env[@]}" "$python" -m slocast.cli latency-predictor >"$work/predictor.log" 2>&1 &
pids+=($!)

for port in "$training_port" "$prediction_port"; do
  for _ in $(seq 100); do
    if "$python" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/healthz', timeout=1)" 2>/dev/null; then
      break
    fi
    sleep 0.2
  done
done

status=0
TRAINING_SERVER_URL="http://127.0.0.1:$training_port" \
PREDICTION_SERVER_URL="http://127.0.0.1:$prediction_port" \
  "$python" -m pytest -p no:cacheprovider -p no:xdist -rA "$test_file" "$@" || status=$?
if [[ $status -ne 0 ]]; then
  echo "--- trainer log (tail) ---"; tail -n 40 "$work/trainer.log"
  echo "--- predictor log (tail) ---"; tail -n 40 "$work/predictor.log"
fi
exit $status
