#!/usr/bin/python3
"""Python baselines for bench/optim_step.cpp, on the same 25.2M-parameter set.

Times torch.optim.AdamW(foreach=True) and faithful in-script re-implementations
of the official CAME (yangluo7/CAME came_pytorch/CAME.py @ b368dc0) and of
Hugging Face transformers' Adafactor (src/transformers/optimization.py,
class Adafactor), written here from their published algorithms with the same
tensor operations (the official packages are not installed on this machine).
Also probes memory bandwidth with torch.add(out=...) (12 B per element).

Run with Debian's torch 1.13:  /usr/bin/python3 bench/optim_step.py
"""
import math
import statistics
import sys
import time

import torch


class CAME(torch.optim.Optimizer):
    """Official CAME step (current version: 1-D update is a clone of m)."""

    def __init__(self, params, lr, eps=(1e-30, 1e-16), clip_threshold=1.0,
                 betas=(0.9, 0.999, 0.9999), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, eps=eps, betas=betas,
                                      clip_threshold=clip_threshold,
                                      weight_decay=weight_decay))

    @staticmethod
    def _rms(t):
        return t.norm(2) / (t.numel() ** 0.5)

    @staticmethod
    def _approx_sq_grad(row, col):
        r = (row / row.mean(dim=-1, keepdim=True)).rsqrt_().unsqueeze(-1)
        c = col.unsqueeze(-2).rsqrt()
        return torch.mul(r, c)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2, b3 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.dtype in (torch.float16, torch.bfloat16):
                    grad = grad.float()
                state = self.state[p]
                shape = grad.shape
                factored = len(shape) >= 2
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(grad)
                    if factored:
                        state["exp_avg_sq_row"] = torch.zeros(shape[:-1]).type_as(grad)
                        state["exp_avg_sq_col"] = torch.zeros(shape[:-2] + shape[-1:]).type_as(grad)
                        state["exp_avg_res_row"] = torch.zeros(shape[:-1]).type_as(grad)
                        state["exp_avg_res_col"] = torch.zeros(shape[:-2] + shape[-1:]).type_as(grad)
                    else:
                        state["exp_avg_sq"] = torch.zeros_like(grad)
                    state["RMS"] = 0
                state["step"] += 1
                state["RMS"] = self._rms(p)
                update = grad ** 2 + group["eps"][0]
                if factored:
                    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
                    row.mul_(b2).add_(update.mean(dim=-1), alpha=1.0 - b2)
                    col.mul_(b2).add_(update.mean(dim=-2), alpha=1.0 - b2)
                    update = self._approx_sq_grad(row, col)
                    update.mul_(grad)
                else:
                    v = state["exp_avg_sq"]
                    v.mul_(b2).add_(update, alpha=1.0 - b2)
                    update = v.rsqrt().mul_(grad)
                update.div_((self._rms(update) / group["clip_threshold"]).clamp_(min=1.0))
                m = state["exp_avg"]
                m.mul_(b1).add_(update, alpha=1 - b1)
                res = (update - m) ** 2 + group["eps"][1]
                if factored:
                    rr, rc = state["exp_avg_res_row"], state["exp_avg_res_col"]
                    rr.mul_(b3).add_(res.mean(dim=-1), alpha=1.0 - b3)
                    rc.mul_(b3).add_(res.mean(dim=-2), alpha=1.0 - b3)
                    update = self._approx_sq_grad(rr, rc).mul_(m)
                else:
                    update = m.clone()
                if group["weight_decay"] != 0:
                    p.add_(p, alpha=-group["weight_decay"] * group["lr"])
                update.mul_(group["lr"])
                p.add_(-update)


class Adafactor(torch.optim.Optimizer):
    """HF transformers Adafactor step (defaults: relative step, scaling)."""

    def __init__(self, params, lr=None, eps=(1e-30, 1e-3), clip_threshold=1.0,
                 decay_rate=-0.8, beta1=None, weight_decay=0.0,
                 scale_parameter=True, relative_step=True, warmup_init=False):
        super().__init__(params, dict(lr=lr, eps=eps, clip_threshold=clip_threshold,
                                      decay_rate=decay_rate, beta1=beta1,
                                      weight_decay=weight_decay,
                                      scale_parameter=scale_parameter,
                                      relative_step=relative_step,
                                      warmup_init=warmup_init))

    @staticmethod
    def _get_lr(group, state):
        rel = group["lr"]
        if group["relative_step"]:
            min_step = 1e-6 * state["step"] if group["warmup_init"] else 1e-2
            rel = min(min_step, 1.0 / math.sqrt(state["step"]))
        scale = 1.0
        if group["scale_parameter"]:
            scale = max(group["eps"][1], state["RMS"])
        return scale * rel

    _rms = staticmethod(CAME._rms)
    _approx_sq_grad = staticmethod(CAME._approx_sq_grad)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.dtype in (torch.float16, torch.bfloat16):
                    grad = grad.float()
                state = self.state[p]
                shape = grad.shape
                factored = len(shape) >= 2
                use_first_moment = group["beta1"] is not None
                if not state:
                    state["step"] = 0
                    if use_first_moment:
                        state["exp_avg"] = torch.zeros_like(grad)
                    if factored:
                        state["exp_avg_sq_row"] = torch.zeros(shape[:-1]).to(grad)
                        state["exp_avg_sq_col"] = torch.zeros(shape[:-2] + shape[-1:]).to(grad)
                    else:
                        state["exp_avg_sq"] = torch.zeros_like(grad)
                    state["RMS"] = 0
                p32 = p
                if p.dtype in (torch.float16, torch.bfloat16):
                    p32 = p32.float()
                state["step"] += 1
                state["RMS"] = self._rms(p32)
                lr = self._get_lr(group, state)
                beta2t = 1.0 - math.pow(state["step"], group["decay_rate"])
                update = grad ** 2 + group["eps"][0]
                if factored:
                    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
                    row.mul_(beta2t).add_(update.mean(dim=-1), alpha=1.0 - beta2t)
                    col.mul_(beta2t).add_(update.mean(dim=-2), alpha=1.0 - beta2t)
                    update = self._approx_sq_grad(row, col)
                    update.mul_(grad)
                else:
                    v = state["exp_avg_sq"]
                    v.mul_(beta2t).add_(update, alpha=1.0 - beta2t)
                    update = v.rsqrt().mul_(grad)
                update.div_((self._rms(update) / group["clip_threshold"]).clamp_(min=1.0))
                update.mul_(lr)
                if use_first_moment:
                    m = state["exp_avg"]
                    m.mul_(group["beta1"]).add_(update, alpha=1 - group["beta1"])
                    update = m
                if group["weight_decay"] != 0:
                    p32.add_(p32, alpha=-group["weight_decay"] * lr)
                p32.add_(-update)
                if p.dtype in (torch.float16, torch.bfloat16):
                    p.copy_(p32)


def make_params():
    torch.manual_seed(0)
    d = 512
    shapes = []
    for _ in range(8):
        shapes += [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d), (d,), (d,)]
    ps = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s) * 0.02)
        p.grad = torch.randn(s) * 1e-3
        ps.append(p)
    return ps


def time_steps(opt, reps):
    opt.step()  # state allocation
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        opt.step()
        ts.append(time.perf_counter() - t0)
    return min(ts), statistics.median(ts)


def bandwidth():
    n = 32 << 20
    a, b, c = torch.zeros(n), torch.rand(n), torch.rand(n)
    best = 1e30
    for _ in range(15):
        t0 = time.perf_counter()
        torch.add(b, c, out=a)
        best = min(best, time.perf_counter() - t0)
    return 12 * n / best


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"bandwidth (torch.add, best of 15): {bandwidth() / 1e9:.1f} GB/s")
    ps = make_params()
    print(f"params: {sum(p.numel() for p in ps)}")
    cases = [
        ("torch.optim.AdamW(foreach=True)",
         lambda ps: torch.optim.AdamW(ps, lr=1e-4, foreach=True)),
        ("torch.optim.AdamW(foreach=False)",
         lambda ps: torch.optim.AdamW(ps, lr=1e-4, foreach=False)),
        ("official CAME (re-implemented)",
         lambda ps: CAME(ps, lr=1e-4, weight_decay=1e-2)),
        ("HF Adafactor defaults (re-implemented)", lambda ps: Adafactor(ps)),
    ]
    for name, make in cases:
        ps = make_params()
        best, med = time_steps(make(ps), reps)
        print(f"{name:42s} best {best * 1e3:7.1f} ms  median {med * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
