#!/usr/bin/env python3
"""What big request bodies cost `fungible serve` in memory: peak RSS and RSS after the burst.

Starts a mock OpenAI upstream (in this process) and `fungible serve` pointed at it, with the
store on (SQLite in a temporary directory, as `serve` records by default) and the config
otherwise default, then per attack:
  - "big": ten concurrent 31 MB bodies (one user message of 31 MB of text each);
  - "many": one 30.6 MB body of 900,000 one-character messages;
  - "many100k": one 3.4 MB body of 100,000 one-character messages (over the message limit);
  - "records": 25 bodies of 3.4 MB (the store's record cap at work; also reports what the
    recorder wrote and dropped).
Each attack runs against a fresh gateway, so its peak is its own. It prints the HTTP statuses,
the peak RSS (VmHWM) during the attack and the RSS (VmRSS) once the answers are in and the
recorder's queue is empty. Linux only (reads /proc). Standard library only.

    scripts/bench-memory.py --binary target/debug/fungible [--attacks big,many] [--config extra.toml]
"""

import argparse
import http.client
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

COMPLETION = json.dumps({
    "id": "chatcmpl-mem", "object": "chat.completion", "created": 1764460800, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}).encode()


class Upstream(http.server.BaseHTTPRequestHandler):
    """Reads and discards the request body, answers a fixed completion."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        left = int(self.headers.get("content-length", "0"))
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(COMPLETION)))
        self.end_headers()
        self.wfile.write(COMPLETION)

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def request(port, path, body, timeout=300):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"content-type": "application/json", "host": "localhost"})
        response = conn.getresponse()
        text = response.read()
        return response.status, text
    except OSError as e:
        return f"error: {e}", b""
    finally:
        conn.close()


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"host": "localhost"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def metric(text, name):
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


class Gateway:
    def __init__(self, binary, upstream_port, extra_config):
        self.dir = tempfile.TemporaryDirectory(prefix="fungible-bench-memory-")
        self.port = free_port()
        config = os.path.join(self.dir.name, "fungible.toml")
        with open(config, "w") as f:
            f.write(f'[store]\npath = "{self.dir.name}/fungible.db"\n[local]\nenabled = false\n')
            if extra_config:
                with open(extra_config) as extra:
                    f.write(extra.read())
        env = {k: v for k, v in os.environ.items() if not (k.endswith("_API_KEY") or k.endswith("_BASE_URL"))}
        env.update({
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
            "FUNGIBLE_LOG": "warn",
        })
        env.pop("FUNGIBLE_CONFIG", None)
        self.process = subprocess.Popen(
            [binary, "serve", "--port", str(self.port), "--config", config],
            env=env, cwd=self.dir.name, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                sys.exit(f"fungible serve exited with {self.process.returncode}")
            try:
                if get(self.port, "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit("fungible serve did not start within 60 s")
            time.sleep(0.05)

    def wait_recorded(self, timeout=120):
        """Polls /metrics until the recorder's queue is empty; returns (written, dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            text = get(self.port, "/metrics")[1]
            queued = metric(text, "fungible_store_queued_bytes")
            if (queued == 0 and metric(text, "fungible_store_queued") == 0) or time.monotonic() > deadline:
                return metric(text, "fungible_store_written_total"), metric(text, "fungible_store_dropped_total")
            time.sleep(0.1)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.dir.cleanup()


def big_body(size):
    head = b'{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"'
    tail = b'"}]}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


def many_body(count):
    # As json.dumps writes it: 34 bytes a message, 30.6 MB for 900,000.
    one = b'{"role": "user", "content": "a"}, '
    return b'{"model": "openai/gpt-4o-mini", "messages": [' + one * (count - 1) + one[:-2] + b"]}"


def concurrently(port, bodies):
    results = [None] * len(bodies)

    def send(i):
        results[i] = request(port, "/v1/chat/completions", bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def summary(results):
    counts = {}
    for status, text in results:
        key = str(status)
        if status != 200:
            try:
                key += " " + json.loads(text)["error"]["message"][:80]
            except (ValueError, KeyError, TypeError):
                pass
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} x {k}" for k, n in sorted(counts.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--binary", default="target/debug/fungible")
    parser.add_argument("--attacks", default="big,many,records")
    parser.add_argument("--config", help="TOML appended to the gateway's config ([server], [store] settings)")
    args = parser.parse_args()

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    upstream_port = upstream.server_address[1]

    attacks = {
        "big": ("10 concurrent 31 MB bodies", lambda: [big_body(31_000_000)] * 10),
        "many": ("1 body of 900k one-character messages", lambda: [many_body(900_000)]),
        "many100k": ("1 body of 100k one-character messages", lambda: [many_body(100_000)]),
        "records": ("25 concurrent 3.4 MB bodies", lambda: [big_body(3_400_000)] * 25),
    }
    print(f"binary: {args.binary}")
    print("| attack | body MB | statuses | baseline RSS MiB | peak RSS MiB | RSS after MiB | records written/dropped |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name in args.attacks.split(","):
        label, make = attacks[name]
        bodies = make()
        gateway = Gateway(args.binary, upstream_port, args.config)
        try:
            pid = gateway.process.pid
            baseline = proc_kib(pid, "VmRSS")
            results = concurrently(gateway.port, bodies)
            written, dropped = gateway.wait_recorded()
            # The peak over the attack and the recorder's writes.
            peak = proc_kib(pid, "VmHWM")
            after = proc_kib(pid, "VmRSS")
            mb = sum(len(b) for b in bodies) / 1e6
            print(
                f"| {label} | {mb:.1f} | {summary(results)} | {baseline / 1024:.0f} | {peak / 1024:.0f} | "
                f"{after / 1024:.0f} | {written:.0f}/{dropped:.0f} |",
                flush=True,
            )
        finally:
            gateway.stop()
    upstream.shutdown()


if __name__ == "__main__":
    main()
