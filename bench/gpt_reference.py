"""The byte-level GPT of lowmem::models::GPT written in PyTorch: pre-LN blocks,
fused qkv, GELU (tanh), tied head, nanoGPT initialisation, and the same module
names as the C++ model. One definition for bench/train_step.py,
tools/peft_check.py and `lowmem compare --python-baseline` (which embeds this
file at build time and writes it next to its script).

attention "baddbmm": the C++ model's kernels (baddbmm with an additive mask);
attention "nanogpt": nanoGPT's explicit path for torch < 2.0 (q @ k^T * scale,
masked_fill(-inf), softmax, @ v)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, C, H, T, mode):
        super().__init__()
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.H, self.mode = H, mode
        self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def forward(self, x):
        B, T, C = x.shape
        H, D = self.H, C // self.H
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, T, H, D).transpose(1, 2)
        v = v.view(B, T, H, D).transpose(1, 2)
        if self.mode == "nanogpt":
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            y = att @ v
        else:
            mask = torch.full((T, T), float("-inf"), dtype=x.dtype).triu_(1)
            q, k, v = (t.reshape(B * H, T, D) for t in (q, k, v))
            att = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=1.0 / math.sqrt(D))
            y = torch.bmm(F.softmax(att, dim=-1), v).view(B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.fc = nn.Linear(C, 4 * C)
        self.proj = nn.Linear(4 * C, C)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, C, H, T, mode):
        super().__init__()
        self.ln_1 = nn.LayerNorm(C)
        self.attn = Attention(C, H, T, mode)
        self.ln_2 = nn.LayerNorm(C)
        self.mlp = MLP(C)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, L, H, C, T, mode="baddbmm", V=256):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList([Block(C, H, T, mode) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C)
        for n, p in self.named_parameters():
            if n.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * L) if n.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for b in self.h:
            x = b(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied head
