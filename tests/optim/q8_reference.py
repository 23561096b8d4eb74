"""Reference values for lowmem's block-wise 8-bit optimizer state.

Run with /usr/bin/python3 (PyTorch 1.13, no bitsandbytes):
    python3 tests/optim/q8_reference.py tests/golden/q8_blockwise.pt

A plain-Python transcription of bitsandbytes (bitsandbytes-foundation/
bitsandbytes @95f9af3): create_dynamic_map (bitsandbytes/functional.py),
the default backend's quantize_blockwise / dequantize_blockwise
(backends/default/ops.py; the last, shorter block handled like a full one,
see include/lowmem/optim/quant8.h) with blocksize 256 (optim/optimizer.py),
and the 8-bit Adam update of backends/cpu/ops.py
(_optimizer_update_8bit_blockwise_cpu, optimizer "adam"), with min_8bit_size
4096 (smaller parameters keep fp32 state, optim/optimizer.py).
"""
import math
import sys

import torch

BLOCK = 256


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    assert additional_items == 0
    for i in range(max_exponent_bits):
        fraction_items = int(
            2 ** (i + non_sign_bits - max_exponent_bits) + 1
            if signed
            else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    assert len(data) == 2 ** total_bits
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def quantize_blockwise(a, code):
    flat = a.reshape(-1).float()
    n = flat.numel()
    blocks = math.ceil(n / BLOCK)
    codes = torch.empty(n, dtype=torch.uint8)
    absmax = torch.empty(blocks, dtype=torch.float32)
    bounds = (code[:-1] + code[1:]) / 2
    for b in range(blocks):
        x = flat[b * BLOCK:(b + 1) * BLOCK].reshape(1, -1)
        am = x.abs().max(dim=-1)[0]
        scaled = torch.clamp(x * (1.0 / am.clamp(min=1e-38).view(-1, 1)), -1, 1)
        codes[b * BLOCK:(b + 1) * BLOCK] = torch.bucketize(
            scaled, bounds, out_int32=True).reshape(-1).to(torch.uint8)
        absmax[b] = am[0]
    return codes.reshape(a.shape), absmax


def dequantize_blockwise(codes, absmax, code):
    flat = code[codes.reshape(-1).long()]
    out = torch.empty_like(flat)
    for b in range(absmax.numel()):
        out[b * BLOCK:(b + 1) * BLOCK] = flat[b * BLOCK:(b + 1) * BLOCK] * absmax[b]
    return out.reshape(codes.shape)


def adam_update(p, g, s1, s2, step, lr, b1, b2, eps, wd):
    """backends/cpu/ops.py, optimizer 'adam', on fp32 states s1, s2."""
    s1.mul_(b1).add_(g, alpha=1.0 - b1)
    s2.mul_(b2).addcmul_(g, g, value=1.0 - b2)
    correction1 = 1.0 - b1 ** step
    correction2 = math.sqrt(1.0 - b2 ** step)
    denom = (s2.sqrt() / correction2).add_(eps)
    if wd > 0.0:
        p.mul_(1.0 - lr * wd)
    p.addcdiv_(s1, denom, value=-lr / correction1)


def main(out):
    torch.manual_seed(0)
    d = {}
    signed, unsigned = create_dynamic_map(True), create_dynamic_map(False)
    d["map.signed"] = signed
    d["map.unsigned"] = unsigned
    # Blocks of very different scales, an all-zero block, a short last block.
    x = torch.randn(3, 300)
    x.view(-1)[256:512] = 0.0
    x.view(-1)[512:768] *= 1e-4
    cases = {"signed": (x, signed), "unsigned": (x.square() * 3.0, unsigned)}
    for name, (a, code) in cases.items():
        c, am = quantize_blockwise(a, code)
        d["x." + name] = a.clone()
        d["codes." + name] = c
        d["absmax." + name] = am
        d["deq." + name] = dequantize_blockwise(c, am, code)
    # 8-bit Adam: w (70 x 64 = 4480 >= 4096: 8-bit, 17 blocks + 128), b (100:
    # fp32 state).
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.1
    params = {"w": torch.randn(70, 64), "b": torch.randn(100)}
    for k, v in params.items():
        d["init." + k] = v.clone()
    # Fresh state as bitsandbytes' init_state: codes 0, absmax 0.
    q = {}
    q["w"] = ((torch.zeros(70, 64, dtype=torch.uint8), torch.zeros(18)),
              (torch.zeros(70, 64, dtype=torch.uint8), torch.zeros(18)))
    fp32 = {"b": (torch.zeros(100), torch.zeros(100))}
    steps = 6
    for t in range(1, steps + 1):
        for k, p in params.items():
            g = torch.randn_like(p) * (0.1 * t)
            d["grad.%d.%s" % (t, k)] = g.clone()
            if k in q:
                (c1, a1), (c2, a2) = q[k]
                s1 = dequantize_blockwise(c1, a1, signed)
                s2 = dequantize_blockwise(c2, a2, unsigned)
                adam_update(p, g, s1, s2, t, lr, b1, b2, eps, wd)
                q[k] = (quantize_blockwise(s1, signed),
                        quantize_blockwise(s2, unsigned))
            else:
                s1, s2 = fp32[k]
                adam_update(p, g, s1, s2, t, lr, b1, b2, eps, wd)
            d["after.%d.%s" % (t, k)] = p.clone()
    (c1, a1), (c2, a2) = q["w"]
    d["final.w.exp_avg_codes"], d["final.w.exp_avg_absmax"] = c1, a1
    d["final.w.exp_avg_sq_codes"], d["final.w.exp_avg_sq_absmax"] = c2, a2
    torch.save(d, out)


if __name__ == "__main__":
    main(sys.argv[1])
