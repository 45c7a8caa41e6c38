#!/usr/bin/env bash
# Creates the Python environments the end-to-end tests run in (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A PINS=([3]="openai==3.57.0" [1]="openai==1.109.1")
for sdk in 3 1; do
    venv="target/e2e/openai-$sdk"
    if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import openai, pytest, pydantic" 2>/dev/null; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check "${PINS[$sdk]}" "pytest==8.4.2" "pydantic>=2,<3"
    fi
done
