"""Golden case for lowmem::models::Llama: a tiny LLaMA written from the math of
Hugging Face transformers' modeling_llama.py (v4.28, the version GaLore's
configs name; transformers is not installed here, so the forward is spelled
out): RMSNorm in fp32, rotary embeddings with rotate_half, causal softmax
attention in fp32, SwiGLU MLP, untied lm_head.

    /usr/bin/python3 tools/golden/llama_reference.py tests/golden/llama_tiny.pt

Writes a dict of tensors: param.<name> (lowmem/HF parameter names), idx,
target, logits, loss, grad.<name> (d loss / d param), all float32.
"""
import math
import sys

import torch
import torch.nn.functional as F

VOCAB, HIDDEN, INTER, HEADS, LAYERS, EPS, THETA = 61, 32, 56, 4, 2, 1e-6, 10000.0
B, T = 2, 11


def rms_norm(x, w):
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS)
    return w * h.to(x.dtype)


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rotary(t, d):
    inv_freq = 1.0 / (THETA ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.einsum("i,j->ij", torch.arange(t, dtype=inv_freq.dtype), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def attention(x, p, pre):
    b, t, c = x.shape
    d = c // HEADS
    def heads(name):
        return F.linear(x, p[pre + name + ".weight"]).view(b, t, HEADS, d).transpose(1, 2)
    q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
    cos, sin = rotary(t, d)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    w = q @ k.transpose(2, 3) / math.sqrt(d)
    mask = torch.full((t, t), torch.finfo(w.dtype).min).triu(1)
    w = F.softmax(w + mask, dim=-1, dtype=torch.float32).to(q.dtype)
    y = (w @ v).transpose(1, 2).reshape(b, t, c)
    return F.linear(y, p[pre + "o_proj.weight"])


def forward(p, idx):
    x = F.embedding(idx, p["model.embed_tokens.weight"])
    for i in range(LAYERS):
        pre = "model.layers.%d." % i
        x = x + attention(rms_norm(x, p[pre + "input_layernorm.weight"]), p, pre + "self_attn.")
        h = rms_norm(x, p[pre + "post_attention_layernorm.weight"])
        m = pre + "mlp."
        h = F.silu(F.linear(h, p[m + "gate_proj.weight"])) * F.linear(h, p[m + "up_proj.weight"])
        x = x + F.linear(h, p[m + "down_proj.weight"])
    return F.linear(rms_norm(x, p["model.norm.weight"]), p["lm_head.weight"])


def main(out):
    torch.manual_seed(0)
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
              "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        pre = "model.layers.%d." % i
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[pre + "self_attn." + n + ".weight"] = (HIDDEN, HIDDEN)
        shapes[pre + "mlp.gate_proj.weight"] = (INTER, HIDDEN)
        shapes[pre + "mlp.up_proj.weight"] = (INTER, HIDDEN)
        shapes[pre + "mlp.down_proj.weight"] = (HIDDEN, INTER)
        shapes[pre + "input_layernorm.weight"] = (HIDDEN,)
        shapes[pre + "post_attention_layernorm.weight"] = (HIDDEN,)
    # Larger than HF's 0.02 init (and norms away from 1) so every term matters.
    p = {}
    for n, s in sorted(shapes.items()):
        t = 1.0 + 0.2 * torch.randn(s) if len(s) == 1 else 0.2 * torch.randn(s)
        p[n] = t.requires_grad_(True)
    idx = torch.randint(0, VOCAB, (B, T))
    target = torch.randint(0, VOCAB, (B, T))
    logits = forward(p, idx)
    loss = F.cross_entropy(logits.view(-1, VOCAB), target.view(-1))
    loss.backward()
    d = {"idx": idx, "target": target, "logits": logits.detach(), "loss": loss.detach()}
    for n, t in p.items():
        d["param." + n] = t.detach()
        d["grad." + n] = t.grad
    d["config"] = torch.tensor([VOCAB, HIDDEN, INTER, HEADS, LAYERS])
    torch.save(d, out)


if __name__ == "__main__":
    main(sys.argv[1])
