#!/usr/bin/python3
"""The Python side of bench/train_step.cpp: the same byte-level GPT (pre-LN,
fused qkv, GELU tanh, tied head, nanoGPT init) trained the same way
(AdamW lr 3e-4, weight decay 0.1, zero_grad(set_to_none=True), random byte
batches made before timing). Needs Debian's python3-torch: run with
/usr/bin/python3 (the python3 first on PATH has no torch).

  /usr/bin/python3 bench/train_step.py --size small --steps 10

--attention nanogpt (default): nanoGPT's explicit path for torch < 2.0
  (q @ k^T * scale, masked_fill(-inf), softmax, @ v), what users run;
--attention baddbmm: the C++ model's kernels (baddbmm with an additive mask).
Prints one JSON object like the C++ program (no tensor-byte peak: CPU torch
has no allocator statistics; peak RSS only)."""
import argparse
import json
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F


from gpt_reference import GPT  # bench/gpt_reference.py (this folder is on sys.path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["small", "large"], default="small")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--attention", choices=["nanogpt", "baddbmm"], default="nanogpt")
    ap.add_argument("--foreach", type=int, default=1, help="AdamW(foreach=...)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    small = a.size == "small"
    C, L, H, T, B = (256, 4, 4, 128, 16) if small else (512, 8, 8, 256, 8)
    model = GPT(L, H, C, T, a.attention)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1,
                            foreach=bool(a.foreach))
    xs, ys = [], []
    for _ in range(4):
        seq = torch.randint(0, 256, (B, T + 1))
        xs.append(seq[:, :T].contiguous())
        ys.append(seq[:, 1:].contiguous())
    ms, cpu, cpu_fwd, cpu_bwd, cpu_opt = [], [], [], [], []
    loss = None
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        c0 = time.process_time()
        opt.zero_grad(set_to_none=True)
        logits = model(xs[s % 4])
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), ys[s % 4].view(-1))
        c1 = time.process_time()
        loss.backward()
        c2 = time.process_time()
        opt.step()
        loss_value = loss.item()
        c3 = time.process_time()
        t1 = time.perf_counter()
        if s >= a.warmup:
            ms.append((t1 - t0) * 1e3)
            cpu.append((c3 - c0) * 1e3)
            cpu_fwd.append((c1 - c0) * 1e3)
            cpu_bwd.append((c2 - c1) * 1e3)
            cpu_opt.append((c3 - c2) * 1e3)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    median = med(ms)
    nparams = sum(p.numel() for p in model.parameters())
    matrix = sum(p.numel() for n, p in model.named_parameters()
                 if p.dim() == 2 and n.startswith("h.")) + model.wte.weight.numel()
    flops_per_token = 6 * matrix + 12 * L * C * T
    tokens = B * T
    print(json.dumps({
        "impl": "python", "size": a.size, "optim": "torch.optim.AdamW(foreach=%s)" % bool(a.foreach),
        "attention": a.attention, "threads": torch.get_num_threads(), "params": nparams,
        "ms_per_step": round(median, 1), "min_ms": round(min(ms), 1),
        "cpu_ms_per_step": round(med(cpu), 1), "cpu_ms_fwd": round(med(cpu_fwd), 1),
        "cpu_ms_bwd": round(med(cpu_bwd), 1), "cpu_ms_opt": round(med(cpu_opt), 1),
        "tokens_per_s": round(tokens / (median / 1e3)),
        "gflops": round(flops_per_token * tokens / (median / 1e3) / 1e9, 1),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "final_loss": round(loss_value, 4), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
