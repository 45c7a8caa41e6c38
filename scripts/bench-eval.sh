#!/usr/bin/env bash
# Eval throughput against the fast mock upstream: `fungible eval run` over N items
# (default 2,000) at concurrency 64 (default), one model, the numeric scorer, no report.
# Prints items/s. The harness must never be the bottleneck.
#   scripts/bench-eval.sh [ITEMS] [CONCURRENCY]        (PROFILE=release for a release build)
set -euo pipefail
cd "$(dirname "$0")/.."

items="${1:-2000}"
concurrency="${2:-64}"
profile="${PROFILE:-debug}"
# The whole workspace, as the tests build it: `-p` would resolve other features and rebuild.
if [[ "$profile" == release ]]; then
    cargo build --release --workspace --bins
else
    cargo build --workspace --tests --bins
fi
bin="target/$profile"

work="$(mktemp -d)"
trap 'kill "$mock_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$items" "$work/dataset.jsonl" <<'PY'
import json, sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"q{i}", "prompt": f"What is {i} + {i}?", "reference": str(2 * i)}) + "\n")
PY
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$bin/fungible-mock" --addr "127.0.0.1:$port" \
    --fixed-json tests/fixtures/openai/plain.response.json \
    --fixed-sse tests/fixtures/openai/stream.response.sse 2>"$work/mock.log" &
mock_pid=$!
for _ in $(seq 100); do grep -q listening "$work/mock.log" 2>/dev/null && break; sleep 0.05; done
grep -q listening "$work/mock.log" || { echo "error: fungible-mock did not start:" >&2; cat "$work/mock.log" >&2; exit 1; }

cd "$work"
OPENAI_API_KEY=sk-bench OPENAI_BASE_URL="http://127.0.0.1:$port/v1" FUNGIBLE_MODELS_DIR=/nonexistent FUNGIBLE_LOG=warn \
    "$OLDPWD/$bin/fungible" eval run --quiet --no-report --dataset dataset.jsonl \
    --models openai/gpt-5 --concurrency "$concurrency" --out run 2>&1 | grep '^eval:' | tee summary.txt
# A failed request is fast: items/s means nothing unless every request was answered.
grep -q ' 0 errors' summary.txt || { echo "error: requests failed (see $work/run/results.jsonl)" >&2; trap - EXIT; kill "$mock_pid"; exit 1; }
echo "($profile build, $items items, concurrency $concurrency, $(nproc) cores)"
