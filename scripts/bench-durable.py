#!/usr/bin/env python3
"""What `[store] durable = true` costs: the same requests through two `fungible serve`
processes recording to SQLite, batched (the default) and durable, side by side in one run.

Starts the mock upstream (`fungible-mock`, serving tests/fixtures) and the two gateways, then
sends --requests sequential requests (JSON, and 20-chunk streams) to each in alternating
rounds, and prints latency p50/p99 per mode. Standard library only.

    scripts/bench-durable.py --binary target/release/fungible --mock target/release/fungible-mock
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(port):
    for _ in range(600):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"nothing answered on port {port}")


def one(conn, stream):
    body = json.dumps({"model": "openai/gpt-5", "stream": stream, "messages": [{"role": "user", "content": "Hi"}]})
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    response = conn.getresponse()
    response_body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"status {response.status}: {response_body[:200]!r}")
    return elapsed * 1000


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * len(values) + 0.5) - 1))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="target/release/fungible")
    parser.add_argument("--mock", default="target/release/fungible-mock")
    parser.add_argument("--requests", type=int, default=400, help="per mode and kind")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            mock_port = free_port()
            fixtures = os.path.join(ROOT, "tests/fixtures/openai")
            mock = [args.mock, "--addr", f"127.0.0.1:{mock_port}", "--fixed-json", f"{fixtures}/plain.response.json", "--fixed-sse", f"{fixtures}/stream.response.sse"]
            procs.append(subprocess.Popen(mock, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            modes = {}
            for mode, durable in [("batched", "false"), ("durable", "true")]:
                port = free_port()
                config = os.path.join(tmp, f"{mode}.toml")
                with open(config, "w") as f:
                    f.write(f"[providers.openai]\nbase_url = \"http://127.0.0.1:{mock_port}/v1\"\n[store]\npath = \"{tmp}/{mode}.db\"\ndurable = {durable}\n[local]\nenabled = false\n")
                env = dict(os.environ, OPENAI_API_KEY="sk-bench-0123456789")
                procs.append(subprocess.Popen([args.binary, "serve", "--config", config, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                modes[mode] = port
            for port in modes.values():
                wait(port)
            for port in modes.values():
                warm = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                for _ in range(20):
                    one(warm, False)
            times = {(m, s): [] for m in modes for s in (False, True)}
            per_round = max(1, args.requests // args.rounds)
            for _ in range(args.rounds):
                for mode, port in modes.items():
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    for stream in (False, True):
                        for _ in range(per_round):
                            times[(mode, stream)].append(one(conn, stream))
                    conn.close()
            print(f"{'':<22} {'p50 ms':>8} {'p99 ms':>8}  ({per_round * args.rounds} sequential requests each)")
            for (mode, stream), values in times.items():
                kind = "stream" if stream else "JSON"
                print(f"{mode + ', ' + kind:<22} {statistics.median(values):8.3f} {pct(values, 0.99):8.3f}")
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)


if __name__ == "__main__":
    main()
