"""Reference values for lowmem's NF4 (4-bit NormalFloat) weights.

Run with /usr/bin/python3 (PyTorch 1.13, no bitsandbytes):
    python3 tests/nn/nf4_reference.py tests/golden/nf4.pt

A plain-Python transcription of bitsandbytes
(bitsandbytes-foundation/bitsandbytes @95f9af3):
- get_4bit_type("nf4") (bitsandbytes/functional.py): the 16 NF4 values,
  divided by their largest magnitude (1.0);
- the default backend's quantize_4bit / dequantize_4bit and
  quantize_blockwise / dequantize_blockwise (backends/default/ops.py), op
  for op, including the shorter last block (absmax clamped to 1e-38 and a
  division instead of a multiplication by the reciprocal);
- quantize_4bit(..., blocksize=64, compress_statistics=True, quant_type="nf4")
  and dequantize_4bit (functional.py): the absmax of the 64-element blocks
  minus their mean, 8-bit blockwise (blocksize 256) with create_dynamic_map()
  (signed), the mean kept as `offset`.
The only change: the int32 nibble indices are cast to int64 before indexing
the code (torch 1.13 indexes with int64 only; the values are the same).
"""
import sys

import torch

NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


def get_4bit_type_nf4():
    data = torch.tensor(NF4)
    data.div_(data.abs().max())
    return data


def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    data = []
    non_sign_bits = total_bits - 1
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
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def quantize_blockwise(A, code, blocksize):
    A_flat = A.reshape(-1).float()
    n = A_flat.numel()
    rem = n % blocksize
    full = n - rem
    blocks = full // blocksize
    A_com = A_flat[:full].reshape(blocks, blocksize)
    absmax = A_com.abs().max(dim=-1)[0]
    scaled = torch.clamp(A_com * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        am = A_flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(A_flat[full:] / am, -1, 1)])
    bounds = (code[:-1] + code[1:]) / 2
    q = torch.bucketize(scaled, bounds, out_int32=True).to(torch.uint8)
    return q.reshape(A.shape), absmax


def dequantize_blockwise(A, absmax, code, blocksize, dtype):
    A_flat = A.reshape(-1)
    n = A_flat.numel()
    out = code[A_flat.to(torch.int64)]
    rem = n % blocksize
    if rem == 0:
        out = (out.reshape(-1, blocksize) * absmax.view(-1, 1)).reshape(n)
    else:
        full = n - rem
        blocks = full // blocksize
        out = torch.cat([
            (out[:full].reshape(blocks, blocksize) * absmax[:blocks].view(-1, 1)).reshape(full),
            out[full:] * absmax[blocks],
        ])
    return out.to(dtype).reshape(A.shape)


def quantize_4bit(A, blocksize=64):
    code = get_4bit_type_nf4()
    order = torch.argsort(code)
    bounds = (code[order[:-1]] + code[order[1:]]) / 2
    A_flat = A.reshape(-1).float()
    n = A_flat.numel()
    rem = n % blocksize
    full = n - rem
    blocks = full // blocksize
    A_com = A_flat[:full].reshape(blocks, blocksize)
    absmax = A_com.abs().max(dim=-1)[0]
    scaled = torch.clamp(A_com * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        am = A_flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(A_flat[full:] / am, -1, 1)])
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    q = torch.bucketize(scaled, bounds, out_int32=True)
    q8 = q.to(torch.uint8)
    packed = ((q8[::2] << 4) | q8[1::2]).unsqueeze(1)
    # compress_statistics=True
    offset = absmax.mean()
    qabsmax, absmax2 = quantize_blockwise(absmax - offset, create_dynamic_map(), 256)
    return packed, qabsmax, absmax2, offset


def dequantize_4bit(packed, qabsmax, absmax2, offset, shape, dtype, blocksize=64):
    absmax = dequantize_blockwise(qabsmax, absmax2, create_dynamic_map(), 256, torch.float32)
    absmax += offset
    code = get_4bit_type_nf4()
    A_flat = packed.reshape(-1)
    n = 1
    for s in shape:
        n *= s
    out_dq = torch.empty(A_flat.size(0) * 2, dtype=torch.int32)
    out_dq[1::2] = A_flat & 0xF
    out_dq[::2] = A_flat >> 4
    out_dq = code[out_dq.long()][:n]  # torch 1.13 indexes with int64 only
    rem = n % blocksize
    if rem:
        full = n - rem
        blocks = full // blocksize
        out = torch.empty(n, dtype=torch.float32)
        out[:full] = (out_dq[:full].view(-1, blocksize) * absmax[:blocks].view(-1, 1)).reshape(full)
        out[full:] = out_dq[full:] * absmax[blocks]
    else:
        out = (out_dq.view(-1, blocksize) * absmax.view(-1, 1)).reshape(n)
    return out.reshape(-1, *shape[1:]).to(dtype)


def main(out):
    torch.manual_seed(0)
    d = {"code": get_4bit_type_nf4()}
    # big: 325 blocks of 64 -> two absmax blocks of 256 (the second short);
    # odd: 91 elements, a short last block and an odd count (padded nibble);
    # bf16: a bf16 input (read as fp32), blocks of very different scales and
    # an all-zero block.
    big = torch.randn(130, 160) * 0.02
    odd = torch.randn(7, 13)
    bf = torch.randn(96, 64)
    bf.view(-1)[0:64] = 0.0
    bf.view(-1)[64:128] *= 1e-3
    bf.view(-1)[128:192] *= 50.0
    cases = {"big": big, "odd": odd, "bf16": bf.to(torch.bfloat16)}
    for name, x in cases.items():
        packed, qabsmax, absmax2, offset = quantize_4bit(x)
        d["x." + name] = x.clone()
        d["packed." + name] = packed.reshape(-1)
        d["absmax_q." + name] = qabsmax
        d["absmax2." + name] = absmax2
        d["offset." + name] = offset.reshape(1)
        for dt, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16"),
                        (torch.float16, "fp16")):
            d["deq.%s.%s" % (tag, name)] = dequantize_4bit(
                packed, qabsmax, absmax2, offset, list(x.shape), dt)
    torch.save(d, out)


if __name__ == "__main__":
    main(sys.argv[1])
