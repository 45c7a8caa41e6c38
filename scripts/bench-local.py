#!/usr/bin/env python3
"""Benchmark the embedded models through `fungible serve` (stdlib only).

Prints prompt and generation tokens/s and time to first token for local/smollm2-135m-instruct,
4 concurrent streams against one, and embedding sentences/s at batch 1 and 64. When
`llama_cpp` (llama-cpp-python) is importable it measures llama.cpp itself on the same file.

    scripts/setup-models.sh
    cargo build --release -p fungible && cargo build --release -p fungible-local --example llama_baseline
    scripts/bench-local.py
"""
import http.client, json, os, socket, statistics, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("FUNGIBLE_MODELS_DIR", os.path.join(ROOT, "models"))
BIN = os.environ.get("FUNGIBLE_BIN") or next(
    (p for p in (os.path.join(ROOT, "target", d, "fungible") for d in ("release", "debug")) if os.path.exists(p)), None)
CHAT = "local/smollm2-135m-instruct"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    return conn, conn.getresponse()


def stream(port, messages, max_tokens):
    """(ttft, total, completion_tokens, prompt_tokens) of one streamed greedy answer."""
    body = {"model": CHAT, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    conn, res = post(port, "/v1/chat/completions", body)
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
    return first, total, usage["completion_tokens"], usage["prompt_tokens"]


def main():
    if not BIN:
        sys.exit("build fungible first: cargo build --release -p fungible")
    port = free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f'[local]\nmodels_dir = {json.dumps(MODELS)}\npreload = true\n')
    cfg.close()
    env = dict(os.environ, FUNGIBLE_LOG="warn")
    proc = subprocess.Popen([BIN, "serve", "--config", cfg.name, "--port", str(port)], env=env)
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        print(f"fungible: {BIN}, {os.cpu_count()} cores")
        short = [{"role": "user", "content": "Name three colours of the rainbow, please, in one short sentence."}]
        stream(port, short, 8)  # warm-up
        ttfts, prompt_lens = [], []
        for _ in range(5):
            ttft, _, _, p = stream(port, short, 1)
            ttfts.append(ttft)
            prompt_lens.append(p)
        print(f"TTFT, {prompt_lens[0]}-token prompt: median {statistics.median(ttfts) * 1000:.1f} ms")
        long = [{"role": "user", "content": "Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 40}]
        ttft, _, _, p = stream(port, long, 1)
        print(f"prompt processing: {p} tokens in {ttft * 1000:.0f} ms = {p / ttft:.0f} tok/s")
        gen = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
        rates = []
        for _ in range(3):
            ttft, total, n, _ = stream(port, gen, 256)
            rates.append((n - 1) / (total - ttft))
        one_time = total
        print(f"generation: {n} tokens, median {statistics.median(rates):.1f} tok/s")
        results = []
        def worker():
            results.append(stream(port, gen, 256))
        threads = [threading.Thread(target=worker) for _ in range(4)]
        start = time.perf_counter()
        for t in threads: t.start()
        for t in threads: t.join()
        four = time.perf_counter() - start
        tokens = sum(r[2] for r in results)
        print(f"4 concurrent streams: {four:.2f} s vs one stream {one_time:.2f} s ({four / one_time:.2f}x), "
              f"{tokens / four:.1f} tok/s in total")
        sentences = [f"Sentence number {i} about embeddings and search." for i in range(64)]
        start = time.perf_counter()
        for s in sentences[:32]:
            conn, res = post(port, "/v1/embeddings", {"model": "local/all-minilm-l6-v2", "input": s}); res.read(); conn.close()
        print(f"embeddings batch 1: {32 / (time.perf_counter() - start):.0f} sentences/s")
        start = time.perf_counter()
        for _ in range(3):
            conn, res = post(port, "/v1/embeddings", {"model": "local/all-minilm-l6-v2", "input": sentences}); res.read(); conn.close()
        print(f"embeddings batch 64: {3 * 64 / (time.perf_counter() - start):.0f} sentences/s")
    finally:
        proc.terminate()
        proc.wait()
        os.unlink(cfg.name)
    baseline = os.path.join(os.path.dirname(BIN), "examples", "llama_baseline")
    if os.path.exists(baseline):
        print("-- llama.cpp alone (same build, crates/fungible-local/examples/llama_baseline.rs):")
        subprocess.run([baseline, os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf")], check=False)
    else:
        print(f"no {baseline}: cargo build -p fungible-local --example llama_baseline for the llama.cpp baseline")
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python not installed: no direct llama.cpp comparison (pip install llama-cpp-python)")
        return
    llm = llama_cpp.Llama(os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf"), n_ctx=4096, verbose=False)
    start = time.perf_counter()
    first, n = None, 0
    for chunk in llm.create_chat_completion(gen, max_tokens=256, temperature=0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            n += 1
            first = first or time.perf_counter() - start
    total = time.perf_counter() - start
    print(f"llama-cpp-python: {n} chunks, {(n - 1) / (total - first):.1f} tok/s, TTFT {first * 1000:.1f} ms")


if __name__ == "__main__":
    main()
