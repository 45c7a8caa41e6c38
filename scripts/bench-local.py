#!/usr/bin/env python3
"""Benchmark the embedded models through `fungible serve` (stdlib only), and llama.cpp itself
(llama-cpp-python) on the same GGUF file in the same run.

Measures, for local/smollm2-135m-instruct (greedy, streamed):
- time to first token (TTFT) for a ~30-token prompt, cold (no prefix shared with an earlier
  request) and warm (a system prompt shared with earlier requests: the prompt cache), median
  and p90 over --reps requests;
- prompt processing tokens/s (a ~450-token prompt) and generation tokens/s (256 tokens);
- 4 concurrent streams against one;
- embedding sentences/s at batch 1 and 64.
Each `--weights` setting (`[local] weights`: the type the GGUF is converted to at load; a
`+nocache` suffix turns `[local] cache_prompt` off) gets its
own `fungible serve` in the same run. Then the same measurements with llama-cpp-python on each
file fungible served, when `llama_cpp` is importable (it serves one sequence at a time, so it has
no concurrent figure), with as many threads as fungible uses.

    scripts/setup-models.sh
    cargo build -p fungible            # debug is fine: llama.cpp is optimised in debug builds
    pip install llama-cpp-python       # optional, for the side-by-side numbers
    scripts/bench-local.py [--reps 15] [--weights q8_0,q8_0+nocache,keep]
"""
import argparse, http.client, json, os, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("FUNGIBLE_MODELS_DIR", os.path.join(ROOT, "models"))
GGUF = os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf")
BIN = os.environ.get("FUNGIBLE_BIN") or next(
    (p for p in (os.path.join(ROOT, "target", d, "fungible") for d in ("release", "debug")) if os.path.exists(p)), None)
CHAT = "local/smollm2-135m-instruct"
THREADS = os.cpu_count() or 1

SYSTEM = "You are a helpful assistant. Answer briefly."
QUESTIONS = ["Name three colours of the rainbow.", "What is the capital of Italy?", "How many legs does a spider have?",
             "Which planet is the largest?", "What do bees make?", "Name a fruit that is yellow.",
             "What is two plus three?", "Which animal says moo?", "What colour is the sky?", "Name a big ocean."]
WORDS = ["Amber", "Birch", "Cedar", "Delta", "Ember", "Fjord", "Grove", "Harbor", "Indigo", "Juniper", "Kestrel",
         "Lagoon", "Meadow", "Nimbus", "Orchid", "Prairie", "Quartz", "Raven", "Sierra", "Tundra", "Umber", "Violet",
         "Willow", "Xenon", "Yarrow", "Zephyr"]
def long_messages(i):
    """~450 tokens; a different first word each time, so no cache holds any of it."""
    return [{"role": "user", "content": f"{WORDS[i % len(WORDS)]}: summarise this. " +
             "The quick brown fox jumps over the lazy dog. " * 40}]
GEN = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


def cold_messages(i):
    """~30 tokens whose first words differ from every other request's: nothing to reuse."""
    word = f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7 + 3) % len(WORDS)]} {i}"
    return [{"role": "system", "content": f"{word}: you are a helpful assistant. Answer briefly."},
            {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


def warm_messages(i):
    """~30 tokens sharing the system turn with the requests before: only the question is new."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summary(values):
    return f"median {statistics.median(values) * 1000:.1f} ms, p90 {pct(values, 90) * 1000:.1f} ms"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    return conn, conn.getresponse()


class Fungible:
    name = "fungible serve"

    def __init__(self, port):
        self.port = port

    def stream(self, messages, max_tokens):
        """(ttft, total, completion_tokens, prompt_tokens, cached_tokens) of one greedy stream."""
        body = {"model": CHAT, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        conn, res = post(self.port, "/v1/chat/completions", body)
        first, usage = None, None
        for raw in res:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if first is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                first = time.perf_counter() - start
        total = time.perf_counter() - start
        conn.close()
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        return first, total, usage["completion_tokens"], usage["prompt_tokens"], cached


class LlamaCppPython:
    name = "llama-cpp-python"

    def __init__(self):
        import llama_cpp
        self.llm = llama_cpp.Llama(GGUF, n_ctx=4096, n_threads=THREADS, n_threads_batch=THREADS, verbose=False)

    def stream(self, messages, max_tokens):
        start = time.perf_counter()
        first, n = None, 0
        for chunk in self.llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                n += 1
                first = first or time.perf_counter() - start
        total = time.perf_counter() - start
        return first, total, n, None, None

    def prompt_tokens(self, messages):
        return self.llm.create_chat_completion(messages, max_tokens=1, temperature=0)["usage"]["prompt_tokens"]


def measure(engine, reps, concurrent=True):
    print(f"-- {engine.name}")
    engine.stream(warm_messages(0), 8)  # warm-up
    for label, make in (("cold", cold_messages), ("warm", warm_messages)):
        ttfts, lens, cached = [], [], []
        for i in range(1, reps + 1):
            ttft, _, _, p, c = engine.stream(make(i + (1000 if label == "cold" else 0)), 1)
            ttfts.append(ttft)
            lens.append(p)
            cached.append(c)
        size = f"{min(lens)}-{max(lens)}-token prompts" if lens[0] else "~30-token prompts"
        extra = f", {statistics.median(cached):.0f} tokens from the cache (median)" if cached[0] is not None else ""
        print(f"TTFT {label}, {size}: {summary(ttfts)} over {reps}{extra}")
    times, counts = [], []
    for i in range(3):
        ttft, _, _, p, c = engine.stream(long_messages(i), 1)
        times.append(ttft)
        counts.append((p, c or 0))
    total = counts[0][0] or engine.prompt_tokens(long_messages(0))
    # The template's default system prompt can come from the cache: count only the rest.
    fresh = statistics.median(total - c for _, c in counts)
    print(f"prompt processing: {fresh:.0f} tokens decoded, median TTFT {statistics.median(times) * 1000:.0f} ms = "
          f"{fresh / statistics.median(times):.0f} tok/s")
    rates, one_time = [], None
    for _ in range(3):
        ttft, total, n, _, _ = engine.stream(GEN, 256)
        rates.append((n - 1) / (total - ttft))
        one_time = total
    print(f"generation: {n} tokens, median {statistics.median(rates):.1f} tok/s")
    if not concurrent:
        return
    results = []

    def worker():
        results.append(engine.stream(GEN, 256))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    four = time.perf_counter() - start
    tokens = sum(r[2] for r in results)
    print(f"4 concurrent streams: {four:.2f} s vs one stream {one_time:.2f} s ({four / one_time:.2f}x), "
          f"{tokens / four:.1f} tok/s in total vs {n / one_time:.1f} for one")


def embeddings(port):
    sentences = [f"Sentence number {i} about embeddings and search." for i in range(64)]
    start = time.perf_counter()
    for s in sentences[:32]:
        conn, res = post(port, "/v1/embeddings", {"model": "local/all-minilm-l6-v2", "input": s}); res.read(); conn.close()
    print(f"embeddings batch 1: {32 / (time.perf_counter() - start):.0f} sentences/s")
    start = time.perf_counter()
    for _ in range(3):
        conn, res = post(port, "/v1/embeddings", {"model": "local/all-minilm-l6-v2", "input": sentences}); res.read(); conn.close()
    print(f"embeddings batch 64: {3 * 64 / (time.perf_counter() - start):.0f} sentences/s")


def serve(weights, reps, embed):
    """Start `fungible serve` with `[local] weights = WEIGHTS`, measure it, stop it."""
    port = free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    setting, _, cache = weights.partition("+")
    cfg.write(f'[local]\nmodels_dir = {json.dumps(MODELS)}\npreload = true\nweights = "{setting}"\n'
              f'cache_prompt = {"false" if cache == "nocache" else "true"}\n')
    cfg.close()
    env = dict(os.environ, FUNGIBLE_LOG=os.environ.get("FUNGIBLE_LOG", "warn"))
    proc = subprocess.Popen([BIN, "serve", "--config", cfg.name, "--port", str(port)], env=env)
    try:
        for _ in range(1200):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        engine = Fungible(port)
        engine.name = f"fungible serve, weights = {weights}"
        measure(engine, reps)
        if embed:
            embeddings(port)
    finally:
        proc.terminate()
        proc.wait()
        os.unlink(cfg.name)


def main():
    global GGUF
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--weights", default="q8_0,keep",
                    help="comma-separated [local] weights settings to measure fungible with, in one run "
                         "(q8_0, q4_0, f16, keep; a +nocache suffix turns cache_prompt off); llama-cpp-python "
                         "then runs on each file they load")
    ap.add_argument("--skip-python", action="store_true", help="only fungible")
    args = ap.parse_args()
    if not BIN:
        sys.exit("build fungible first: cargo build -p fungible")
    print(f"{BIN}, {THREADS} cores, load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    weights = [w.strip() for w in args.weights.split(",") if w.strip()]
    for i, w in enumerate(weights):
        serve(w, args.reps, embed=i == 0)
    if args.skip_python:
        return
    source = GGUF
    for w in dict.fromkeys(w.partition("+")[0] for w in weights):
        # The file fungible served: the source, or its conversion kept beside it.
        GGUF = source if w == "keep" else source[: -len(".gguf")] + f".{w}.gguf"
        if not os.path.exists(GGUF):
            GGUF = source
        try:
            engine = LlamaCppPython()
        except ImportError:
            print("llama-cpp-python not installed: no side-by-side numbers (pip install llama-cpp-python)")
            return
        engine.name = f"llama-cpp-python, {os.path.basename(GGUF)}"
        measure(engine, args.reps, concurrent=False)
        del engine
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
