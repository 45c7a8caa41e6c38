#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the end-to-end tests that
# drive `fungible serve` with the vendors' official SDKs against the mock upstream, once per
# SDK generation. Needs PyPI / npm the first time only (scripts/setup-e2e.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked
cargo build --locked -p fungible -p fungible-mock

scripts/setup-e2e.sh
status=0
if [[ -f tests/e2e/node/package.json ]]; then
    echo "== end-to-end with the Node SDKs"
    node --test tests/e2e/node/ || status=$?
fi
for generation in older current; do
    venv="target/e2e/$generation"
    echo "== end-to-end with the $generation Python SDKs: $("$venv/bin/pip" freeze | grep -iE '^(openai|anthropic|google-genai)==' | tr '\n' ' ')"
    "$venv/bin/python" -m pytest -q tests/e2e -p no:cacheprovider || status=$?
done
exit $status
