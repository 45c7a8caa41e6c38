#!/usr/bin/env python3
"""Perplexity of GGUF files on the same text, to see what a `[local] weights` conversion costs
in quality (llama-cpp-python, which compiles llama.cpp from PyPI; needs numpy).

    pip install llama-cpp-python numpy
    scripts/weights-perplexity.py models/SmolLM2-135M-Instruct.Q4_1*.gguf [--text FILE] [--tokens 1024]

Lower is better; a conversion that keeps quality stays within a fraction of a percent of
its source. The text defaults to this repository's README.
"""
import argparse, math, os

import llama_cpp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def perplexity(path, text, max_tokens):
    llm = llama_cpp.Llama(path, n_ctx=max_tokens + 16, logits_all=True, verbose=False,
                          n_threads=os.cpu_count() or 1)
    tokens = llm.tokenize(text.encode())[:max_tokens]
    llm.reset()
    llm.eval(tokens)
    logits = np.array(llm.scores[:len(tokens)], dtype=np.float64)
    nll = 0.0
    for i in range(len(tokens) - 1):
        row = logits[i]
        top = row.max()
        nll += top + math.log(np.exp(row - top).sum()) - row[tokens[i + 1]]
    return len(tokens), math.exp(nll / (len(tokens) - 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", help="GGUF files (e.g. a model and its conversions)")
    ap.add_argument("--text", default=os.path.join(ROOT, "README.md"))
    ap.add_argument("--tokens", type=int, default=1024)
    args = ap.parse_args()
    text = open(args.text, encoding="utf-8").read()
    for path in args.files:
        n, ppl = perplexity(path, text, args.tokens)
        print(f"{os.path.basename(path)}: perplexity {ppl:.3f} over {n} tokens")


if __name__ == "__main__":
    main()
