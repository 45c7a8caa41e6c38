#!/usr/bin/env bash
# Creates the environments the end-to-end tests run in (idempotent): one Python virtual
# environment per SDK generation (tests/e2e/requirements-*.txt), one for the web UI's browser
# tests (tests/ui/requirements.txt) and the Node SDKs (tests/e2e/node/package.json).
set -euo pipefail
cd "$(dirname "$0")/.."
for generation in current older ui; do
    venv="target/e2e/$generation"
    req="tests/e2e/requirements-$generation.txt"
    # The web UI's browser tests (Playwright driving the system's Chromium).
    [[ $generation == ui ]] && req="tests/ui/requirements.txt"
    stamp="$venv/.installed"
    if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$req" "$stamp"; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
        cp "$req" "$stamp"
    fi
done
if [[ -f tests/e2e/node/package.json ]]; then
    if ! command -v npm >/dev/null; then
        apt-get update && apt-get install -y nodejs npm
    fi
    (cd tests/e2e/node && npm install --no-audit --no-fund --silent)
fi
