#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the end-to-end tests that
# drive `fungible serve` with the official OpenAI Python SDK (a current 3.x and an older
# 1.x) against the mock upstream. Needs network access to PyPI the first time only.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace --locked
cargo build --locked -p fungible -p fungible-mock

scripts/setup-e2e.sh
status=0
for sdk in 3 1; do
    venv="target/e2e/openai-$sdk"
    echo "== end-to-end with $("$venv/bin/python" -c 'import openai; print("openai", openai.__version__)')"
    "$venv/bin/python" -m pytest -q tests/e2e -p no:cacheprovider || status=$?
done
exit $status
