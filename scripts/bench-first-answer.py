#!/usr/bin/env python3
"""What a newcomer's first requests to the embedded model get: answer time and sensibility.

Starts `fungible serve` once per variant (a config each, on its own port), then sends
  - the README's first request ("What is the capital of France?", no parameters) --reps times,
  - 50 short factual questions with no parameters, and again at temperature 0,
and prints, per variant and set: answer time p50/p95/max, completion tokens p50/max, how many
answers contain the expected answer, and how many ended by themselves (finish_reason "stop").

Variants: "defaults" (the model's recommended sampling, repetition penalty, output cap and loop
stop: what fungible does now) and "plain" (temperature 1, top_p 1, no penalty, no cap but the
context, no loop stop: what it did before); "+WEIGHTS" after either sets `[local] weights`
(q8_0, the default, f16, q4_0, keep). Standard library only.

    scripts/bench-first-answer.py --binary target/release/fungible [--reps 10] [--variants defaults,plain]
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

MODEL = "local/smollm2-135m-instruct"
FIRST = "What is the capital of France?"

# (question, accepted answers): a sensible answer names one of them.
QUESTIONS = [
    ("What is the capital of France?", ["Paris"]),
    ("What is the capital of Japan?", ["Tokyo"]),
    ("What is the capital of Italy?", ["Rome"]),
    ("What is the capital of Germany?", ["Berlin"]),
    ("What is the capital of Spain?", ["Madrid"]),
    ("What is the capital of the United Kingdom?", ["London"]),
    ("What is the capital of Canada?", ["Ottawa"]),
    ("What is the capital of Australia?", ["Canberra"]),
    ("What is the capital of Russia?", ["Moscow"]),
    ("What is the capital of China?", ["Beijing"]),
    ("What is the capital of Egypt?", ["Cairo"]),
    ("What is the capital of Greece?", ["Athens"]),
    ("How many days are in a week?", ["7", "seven"]),
    ("How many legs does a spider have?", ["8", "eight"]),
    ("How many continents are there?", ["7", "seven"]),
    ("What is 2 + 2?", ["4", "four"]),
    ("What is 10 times 10?", ["100", "hundred"]),
    ("What color is the sky on a clear day?", ["blue"]),
    ("What color is a ripe banana?", ["yellow"]),
    ("What is the largest planet in the solar system?", ["Jupiter"]),
    ("Which planet is known as the Red Planet?", ["Mars"]),
    ("What is the star at the center of our solar system?", ["Sun"]),
    ("Which gas do plants absorb from the air?", ["carbon dioxide", "CO2"]),
    ("What is the chemical formula of water?", ["H2O"]),
    ("At what temperature in Celsius does water freeze?", ["0", "zero"]),
    ("At what temperature in Celsius does water boil?", ["100"]),
    ("Who wrote Romeo and Juliet?", ["Shakespeare"]),
    ("Who painted the Mona Lisa?", ["Leonardo", "da Vinci"]),
    ("Who was the first President of the United States?", ["Washington"]),
    ("What is the largest ocean on Earth?", ["Pacific"]),
    ("What is the longest river in Africa?", ["Nile"]),
    ("What is the tallest mountain in the world?", ["Everest"]),
    ("How many hours are in a day?", ["24", "twenty-four"]),
    ("How many minutes are in an hour?", ["60", "sixty"]),
    ("What language is spoken in Brazil?", ["Portuguese"]),
    ("What is the currency of Japan?", ["yen"]),
    ("What is the currency of the United States?", ["dollar"]),
    ("Which animal is called the king of the jungle?", ["lion"]),
    ("What do bees make?", ["honey"]),
    ("What is the opposite of hot?", ["cold"]),
    ("How many sides does a triangle have?", ["3", "three"]),
    ("What is the square root of 9?", ["3", "three"]),
    ("What is the main language spoken in Mexico?", ["Spanish"]),
    ("In which country are the pyramids of Giza?", ["Egypt"]),
    ("What is the largest mammal on Earth?", ["whale"]),
    ("What is the hardest natural substance?", ["diamond"]),
    ("What is frozen water called?", ["ice"]),
    ("Which month comes after January?", ["February"]),
    ("How many months are in a year?", ["12", "twelve"]),
    ("What is the capital of the United States?", ["Washington"]),
]

VARIANTS = {
    "defaults": "",
    "plain": (
        "[local.defaults.smollm2-135m-instruct]\n"
        "temperature = 1.0\ntop_p = 1.0\ntop_k = 0\nmin_p = 0.0\nrepetition_penalty = 1.0\n"
        "max_tokens = 4096\nstop_loops = false\n"
    ),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, body, timeout):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            answer = json.load(res)
    except (urllib.error.URLError, TimeoutError, socket.timeout) as e:
        return {"seconds": time.perf_counter() - started, "error": str(e)}
    choice = answer["choices"][0]
    return {
        "seconds": time.perf_counter() - started,
        "text": choice["message"].get("content") or "",
        "finish": choice["finish_reason"],
        "tokens": answer["usage"]["completion_tokens"],
    }


def sensible(text, accepted):
    return any(re.search(r"(?<![A-Za-z0-9])" + re.escape(a) + r"(?![A-Za-z0-9])", text, re.I) for a in accepted)


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * len(values) + 0.5) - 1))]


def summary(name, results):
    done = [r for r in results if "error" not in r]
    secs = [r["seconds"] for r in results]
    toks = [r["tokens"] for r in done] or [0]
    right = sum(1 for r in done if r["right"])
    stopped = sum(1 for r in done if r["finish"] == "stop")
    print(
        f"  {name:<26} n={len(results):>3}  time p50 {pct(secs, 0.5):6.2f} s  p95 {pct(secs, 0.95):6.2f} s  "
        f"max {max(secs):6.2f} s  tokens p50 {statistics.median(toks):5.0f} max {max(toks):5d}  "
        f"sensible {right}/{len(results)}  ended by itself {stopped}/{len(results)}  errors {len(results) - len(done)}"
    )


def run_variant(args, name):
    base, _, weights = name.partition("+")
    if base not in VARIANTS:
        sys.exit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}, each with an optional +WEIGHTS")
    extra = VARIANTS[base]
    weights = f'weights = "{weights}"\n' if weights else ""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "fungible.toml")
        with open(config, "w") as f:
            f.write(f"[server]\nport = {port}\n[store]\nenabled = false\n[local]\nslots = 1\n{weights}{extra}")
        env = dict(os.environ, RUST_LOG="warn")
        server = subprocess.Popen([args.binary, "serve", "--config", config], env=env)
        try:
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            # Load the model before timing anything.
            post(port, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}, 300)
            print(f"{name}:")
            sets = {
                "README request, no params": [(FIRST, ["Paris"], {})] * args.reps,
                "50 questions, no params": [(q, a, {}) for q, a in QUESTIONS],
                "50 questions, temperature 0": [(q, a, {"temperature": 0}) for q, a in QUESTIONS],
            }
            chosen = [list(sets)[int(i)] for i in args.sets.split(",")]
            sets = {k: v for k, v in sets.items() if k in chosen}
            out = {}
            for label, items in sets.items():
                results = []
                for question, accepted, params in items:
                    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], **params}
                    r = post(port, body, args.timeout)
                    r["right"] = "text" in r and sensible(r["text"], accepted)
                    r["question"] = question
                    results.append(r)
                summary(label, results)
                out[label] = results
            return out
        finally:
            server.terminate()
            server.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="target/release/fungible")
    parser.add_argument("--reps", type=int, default=10, help="times the README request is sent")
    parser.add_argument("--variants", default="defaults,plain")
    parser.add_argument("--timeout", type=float, default=180, help="client timeout per request, seconds")
    parser.add_argument("--json", help="write every answer to this file")
    parser.add_argument("--sets", default="0,1,2", help="which sets: 0 README request, 1 questions, 2 questions at temperature 0")
    args = parser.parse_args()
    everything = {}
    for name in args.variants.split(","):
        everything[name] = run_variant(args, name)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(everything, f, indent=1)


if __name__ == "__main__":
    main()
