#!/usr/bin/env python3
"""LoRA training speed with PyTorch + PEFT on this CPU: the baseline for `fungible bench --lora`.

Same model (SmolLM2-135M-Instruct, read from the same GGUF and dequantized, as fungible does),
same adapters (rank 8, alpha 16, all seven projections), the same micro-batches (one sequence
of 128 tokens, and of 1,024), AdamW, loss on every position. Prints seconds per optimizer
step (median of the steps after the first) and tokens per second for each size.

Run once, by hand (not in CI): it needs PyTorch, Transformers, PEFT and gguf from PyPI:

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch transformers peft gguf accelerate
    /tmp/torchenv/bin/python scripts/bench-lora-torch.py [--steps 20] [--threads 2]
"""

import argparse
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--models", default=os.environ.get("FUNGIBLE_MODELS_DIR", "models"))
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(
        args.models, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", torch_dtype=torch.float32
    )
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    vocab = model.config.vocab_size
    print(f"PyTorch {torch.__version__}, {args.threads} threads; trainable parameters: "
          f"{sum(p.numel() for p in model.parameters() if p.requires_grad)}")
    print()
    print("| micro-batch | steps | s/step (median) | tokens/s |")
    print("|---:|---:|---:|---:|")
    for tokens in (128, 1024):
        times = []
        for _ in range(args.steps):
            ids = torch.randint(0, vocab, (1, tokens))
            started = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            optimizer.zero_grad()
            times.append(time.perf_counter() - started)
        step = statistics.median(times[1:])
        print(f"| {tokens} tokens | {args.steps} | {step:.2f} | {tokens / step:.0f} |")


if __name__ == "__main__":
    main()
