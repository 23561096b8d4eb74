"""Reference logits for lowmem::models::Llama in its Hugging Face forms.

A plain-torch transcription of what Hugging Face transformers computes in
LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and Qwen3ForCausalLM
(transformers is not installed here; written from its main branch as read in
2025, files named at each function):

  src/transformers/models/llama/modeling_llama.py     LlamaRMSNorm, rotate_half,
      apply_rotary_pos_emb, repeat_kv, eager_attention_forward, LlamaAttention,
      LlamaMLP, LlamaDecoderLayer, LlamaModel, LlamaForCausalLM
  src/transformers/models/mistral/modeling_mistral.py  (Llama's attention with
      a sliding window, no biases)
  src/transformers/models/qwen2/modeling_qwen2.py      (q/k/v biases, o_proj
      without)
  src/transformers/models/qwen3/modeling_qwen3.py      (q_norm / k_norm over
      head_dim before RoPE)
  src/transformers/modeling_rope_utils.py   _compute_default_rope_parameters,
      _compute_linear_scaling_rope_parameters, _compute_llama3_parameters
  src/transformers/masking_utils.py   causal_mask_function,
      sliding_window_overlay, packed_sequence_mask_function

Deviation: HF computes the rotary tables, RMSNorm and softmax in float32
whatever the model dtype; here a float64 model (all cases below) keeps them in
float64, as lowmem does, so the comparison can be tight; other dtypes follow
HF. Masked scores are -inf (HF: the dtype's minimum); no
row is fully masked, so softmax gives the same.

    /usr/bin/python3 tests/models/hf_reference.py OUTDIR [--hf-dirs]

writes OUTDIR/<case>.pt for each case below: a dict of float64 tensors
param.<HF name>, config.<field> (0-dim), idx, target (some entries -100),
logits, loss (mean cross-entropy over the targets that are not -100), and for
packed cases segments and positions (int64 [B, T]). With --hf-dirs it
writes instead OUTDIR/hf/<name>/ in Hugging Face's layout (config.json as
save_pretrained writes it; model.safetensors, or two shards and
model.safetensors.index.json; weights stored F32, F16 or BF16) for the cases
of HF_DIRS, and OUTDIR/hf/<name>.pt with idx and the float32 logits of the
stored weights (HF's float32 path: RMSNorm, softmax and RoPE in float32).
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

IGNORE = -100
ROPE_TYPES = {"default": 0, "linear": 1, "llama3": 2}


# ---- modeling_rope_utils.py ----

def default_inv_freq(cfg, dtype):
    base, dim = cfg["rope_theta"], head_dim(cfg)
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype) / dim))


def rope_inv_freq(cfg, dtype):
    inv_freq = default_inv_freq(cfg, dtype)
    scaling = cfg.get("rope_scaling")
    if scaling is None or scaling["rope_type"] == "default":
        return inv_freq
    if scaling["rope_type"] == "linear":
        return inv_freq / scaling["factor"]
    assert scaling["rope_type"] == "llama3"
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


# ---- modeling_llama.py (shared by Mistral, Qwen2, Qwen3) ----

def head_dim(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def rms_norm(x, w, eps):
    input_dtype = x.dtype
    h = x.to(torch.float32) if input_dtype != torch.float64 else x
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return w * h.to(input_dtype)


def rotary(cfg, x, position_ids):
    inv_freq = rope_inv_freq(cfg, x.dtype)
    inv_freq_expanded = inv_freq[None, :, None].expand(position_ids.shape[0], -1, 1)
    position_ids_expanded = position_ids[:, None, :].to(x.dtype)
    freqs = (inv_freq_expanded @ position_ids_expanded).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


def repeat_kv(h, n_rep):
    b, kv, s, d = h.shape
    if n_rep == 1:
        return h
    return h[:, :, None, :, :].expand(b, kv, n_rep, s, d).reshape(b, kv * n_rep, s, d)


def linear(x, p, name):
    return F.linear(x, p[name + ".weight"], p.get(name + ".bias"))


def attention(cfg, x, p, pre, cos, sin, mask):
    b, t, _ = x.shape
    d = head_dim(cfg)
    shape = (b, t, -1, d)
    q = linear(x, p, pre + "q_proj").view(shape)
    k = linear(x, p, pre + "k_proj").view(shape)
    if cfg["model_type"] == "qwen3":  # q_norm / k_norm on each head
        q = rms_norm(q, p[pre + "q_norm.weight"], cfg["rms_norm_eps"])
        k = rms_norm(k, p[pre + "k_norm.weight"], cfg["rms_norm_eps"])
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    v = linear(x, p, pre + "v_proj").view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    groups = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    w = torch.matmul(q, k.transpose(2, 3)) * d ** -0.5
    w = w + mask
    w = F.softmax(w, dim=-1, dtype=torch.float32 if x.dtype != torch.float64 else x.dtype).to(q.dtype)
    y = torch.matmul(w, v).transpose(1, 2).reshape(b, t, -1)
    return linear(y, p, pre + "o_proj")


def mlp(x, p, pre):
    return linear(F.silu(linear(x, p, pre + "gate_proj")) * linear(x, p, pre + "up_proj"), p, pre + "down_proj")


# ---- masking_utils.py ----

def attention_mask(cfg, t, segments, dtype):
    q_idx = torch.arange(t)[:, None]
    kv_idx = torch.arange(t)[None, :]
    allowed = kv_idx <= q_idx  # causal_mask_function
    window = cfg.get("sliding_window") if cfg["model_type"] == "mistral" else None
    if window is not None:  # sliding_window_overlay
        allowed = allowed & (kv_idx > q_idx - window)
    allowed = allowed[None, None]  # [1, 1, T, T]
    if segments is not None:  # packed_sequence_mask_function
        allowed = allowed & (segments[:, None, :, None] == segments[:, None, None, :])
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill(~allowed, float("-inf"))


def forward(cfg, p, idx, segments=None, positions=None):
    x = F.embedding(idx, p["model.embed_tokens.weight"])
    b, t = idx.shape
    position_ids = positions if positions is not None else torch.arange(t)[None].expand(b, t)
    cos, sin = rotary(cfg, x, position_ids)
    mask = attention_mask(cfg, t, segments, x.dtype)
    eps = cfg["rms_norm_eps"]
    for i in range(cfg["num_hidden_layers"]):
        pre = "model.layers.%d." % i
        x = x + attention(cfg, rms_norm(x, p[pre + "input_layernorm.weight"], eps), p,
                          pre + "self_attn.", cos, sin, mask)
        x = x + mlp(rms_norm(x, p[pre + "post_attention_layernorm.weight"], eps), p, pre + "mlp.")
    x = rms_norm(x, p["model.norm.weight"], eps)
    head = p["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else p["lm_head.weight"]
    return F.linear(x, head)


# ---- tiny random models ----

def parameter_shapes(cfg):
    """(name, shape, kind) in HF's state_dict naming; kind: matrix, norm, bias."""
    c, i_size, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d = head_dim(cfg)
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    arch = cfg["model_type"]
    qkv_bias = arch == "qwen2" or cfg.get("attention_bias", False)
    o_bias = arch != "qwen2" and cfg.get("attention_bias", False)
    mlp_bias = cfg.get("mlp_bias", False)
    out = [("model.embed_tokens.weight", (v, c), "matrix")]
    for layer in range(cfg["num_hidden_layers"]):
        pre = "model.layers.%d." % layer
        a = pre + "self_attn."
        for name, rows, cols in (("q_proj", q, c), ("k_proj", kv, c), ("v_proj", kv, c), ("o_proj", c, q)):
            out.append((a + name + ".weight", (rows, cols), "matrix"))
            if (o_bias if name == "o_proj" else qkv_bias):
                out.append((a + name + ".bias", (rows,), "bias"))
        if arch == "qwen3":
            out += [(a + "q_norm.weight", (d,), "norm"), (a + "k_norm.weight", (d,), "norm")]
        m = pre + "mlp."
        for name, rows, cols in (("gate_proj", i_size, c), ("up_proj", i_size, c), ("down_proj", c, i_size)):
            out.append((m + name + ".weight", (rows, cols), "matrix"))
            if mlp_bias:
                out.append((m + name + ".bias", (rows,), "bias"))
        out += [(pre + "input_layernorm.weight", (c,), "norm"),
                (pre + "post_attention_layernorm.weight", (c,), "norm")]
    out.append(("model.norm.weight", (c,), "norm"))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (v, c), "matrix"))
    return out


def random_parameters(cfg, dtype, generator):
    # Larger than HF's 0.02 init, norms away from 1 and biases non-zero, so
    # every term shows in the logits.
    p = {}
    for name, shape, kind in parameter_shapes(cfg):
        r = torch.randn(shape, generator=generator, dtype=torch.float64)
        p[name] = (1.0 + 0.2 * r if kind == "norm" else (0.1 if kind == "bias" else 0.25) * r).to(dtype)
    return p


def base_config(model_type, **kw):
    cfg = {
        "model_type": model_type, "vocab_size": 61, "hidden_size": 32, "intermediate_size": 40,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
        "max_position_embeddings": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "hidden_act": "silu",
    }
    cfg.update(kw)
    return cfg


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}

# name -> (config, packed rows?)
CASES = {
    "llama_gqa": (base_config("llama", num_key_value_heads=2), False),
    "llama_head_dim_bias": (base_config("llama", num_attention_heads=4, num_key_value_heads=1,
                                        hidden_size=24, head_dim=10, attention_bias=True,
                                        mlp_bias=True), False),
    "llama3_rope_tied": (base_config("llama", num_key_value_heads=2, head_dim=16,
                                     max_position_embeddings=256, rope_scaling=LLAMA3,
                                     tie_word_embeddings=True), False),
    "llama_linear_rope": (base_config("llama", rope_theta=1000.0,
                                      rope_scaling={"rope_type": "linear", "factor": 2.5}), False),
    "qwen2_bias_tied": (base_config("qwen2", num_key_value_heads=2, rope_theta=1000000.0,
                                    tie_word_embeddings=True), False),
    "qwen3_qk_norm": (base_config("qwen3", num_key_value_heads=2, head_dim=12), False),
    "mistral_window": (base_config("mistral", num_key_value_heads=2, sliding_window=4), False),
    "llama_gqa_packed": (base_config("llama", num_key_value_heads=2), True),
    "mistral_window_packed": (base_config("mistral", num_key_value_heads=1, sliding_window=3), True),
}

B, T = 2, 11


def packed_layout():
    # Row 0: samples of 4, 5 and 2 tokens; row 1: 7 and 4.
    lengths = [[4, 5, 2], [7, 4]]
    segments = torch.tensor([sum([[s] * n for s, n in enumerate(row)], []) for row in lengths])
    positions = torch.tensor([sum([list(range(n)) for n in row], []) for row in lengths])
    return segments, positions


def config_tensors(cfg):
    out = {}
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                "rms_norm_eps", "rope_theta"):
        out["config." + key] = torch.tensor(float(cfg[key]), dtype=torch.float64)
    arch = cfg["model_type"]
    out["config.head_dim"] = torch.tensor(float(cfg.get("head_dim") or 0), dtype=torch.float64)
    out["config.attention_bias"] = torch.tensor(float(cfg.get("attention_bias", False)), dtype=torch.float64)
    out["config.qkv_bias"] = torch.tensor(float(arch == "qwen2"), dtype=torch.float64)
    out["config.mlp_bias"] = torch.tensor(float(cfg.get("mlp_bias", False)), dtype=torch.float64)
    out["config.qk_norm"] = torch.tensor(float(arch == "qwen3"), dtype=torch.float64)
    out["config.tie_word_embeddings"] = torch.tensor(float(cfg["tie_word_embeddings"]), dtype=torch.float64)
    window = cfg.get("sliding_window") if arch == "mistral" else None
    out["config.sliding_window"] = torch.tensor(float(window or 0), dtype=torch.float64)
    scaling = cfg.get("rope_scaling") or {"rope_type": "default"}
    out["config.rope_type"] = torch.tensor(float(ROPE_TYPES[scaling["rope_type"]]), dtype=torch.float64)
    for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
        if key in scaling:
            out["config.rope_scaling." + key] = torch.tensor(float(scaling[key]), dtype=torch.float64)
    return out


def make_case(name, seed):
    cfg, packed = CASES[name]
    g = torch.Generator().manual_seed(seed)
    p = random_parameters(cfg, torch.float64, g)
    idx = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)
    target = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)
    target[0, 3] = IGNORE
    target[1, -1] = IGNORE
    segments = positions = None
    if packed:
        segments, positions = packed_layout()
    logits = forward(cfg, p, idx, segments, positions)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)
    d = {"param." + n: t for n, t in p.items()}
    d.update(config_tensors(cfg))
    d.update({"idx": idx, "target": target, "logits": logits, "loss": loss})
    if packed:
        d.update({"segments": segments, "positions": positions})
        check_packed_rows_are_separate_samples(cfg, p, idx, segments, logits)
    return d


def check_packed_rows_are_separate_samples(cfg, p, idx, segments, logits):
    # Self-check of the transcription: each packed sample's logits equal those
    # of the sample run alone at positions 0..n-1.
    for row in range(idx.shape[0]):
        for s in segments[row].unique():
            cols = (segments[row] == s).nonzero().flatten()
            alone = forward(cfg, p, idx[row:row + 1, cols])
            assert torch.allclose(alone[0], logits[row, cols], rtol=1e-10, atol=1e-12), (row, int(s))


# ---- Hugging Face layout directories (interop tests) ----

ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
TORCH_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: same bits as int16
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def write_safetensors(path, tensors, dtype):
    """huggingface/safetensors' layout: u64 header length, JSON header (padded
    with spaces to 8 bytes), data; {"format": "pt"} as save_pretrained."""
    header = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        b = tensor_bytes(tensors[name].to(dtype))
        header[name] = {"dtype": ST_DTYPES[dtype], "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def hf_config_json(cfg, dtype):
    """config.json as save_pretrained writes it for the architecture."""
    arch = cfg["model_type"]
    out = {"architectures": [ARCHITECTURES[arch]], "torch_dtype": TORCH_DTYPES[dtype],
           "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02,
           "transformers_version": "4.56.0", "use_cache": True}
    for key in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                "rms_norm_eps", "rope_theta", "tie_word_embeddings", "hidden_act"):
        out[key] = cfg[key]
    out["rope_scaling"] = cfg.get("rope_scaling")
    if cfg.get("head_dim"):
        out["head_dim"] = cfg["head_dim"]
    if arch in ("llama", "qwen3"):
        out["attention_bias"] = cfg.get("attention_bias", False)
    if arch == "llama":
        out["mlp_bias"] = cfg.get("mlp_bias", False)
    if arch == "mistral":
        out["sliding_window"] = cfg.get("sliding_window")
    if arch in ("qwen2", "qwen3"):
        out.update({"use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28})
    return out


# name -> (case of CASES, stored dtype, shards)
HF_DIRS = {
    "llama_gqa_f32": ("llama_gqa", torch.float32, 1),
    "llama_head_dim_bias_f16": ("llama_head_dim_bias", torch.float16, 1),
    "llama3_rope_tied_bf16": ("llama3_rope_tied", torch.bfloat16, 1),
    "qwen2_bias_tied_f32_sharded": ("qwen2_bias_tied", torch.float32, 2),
    "qwen3_qk_norm_bf16_sharded": ("qwen3_qk_norm", torch.bfloat16, 2),
    "mistral_window_f16": ("mistral_window", torch.float16, 1),
}


def write_hf_dir(path, cfg, p, dtype, shards):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config_json(cfg, dtype), f, indent=2)
    if shards == 1:
        write_safetensors(os.path.join(path, "model.safetensors"), p, dtype)
        return
    names = [n for n, _, _ in parameter_shapes(cfg)]
    parts = [names[i::shards] for i in range(shards)]
    weight_map, total = {}, 0
    for i, part in enumerate(parts):
        file = "model-%05d-of-%05d.safetensors" % (i + 1, shards)
        write_safetensors(os.path.join(path, file), {n: p[n] for n in part}, dtype)
        for n in part:
            weight_map[n] = file
            total += p[n].numel() * p[n].to(dtype).element_size()
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def make_hf_dirs(out_dir):
    """OUT/hf/<name>/ in HF layout, and OUT/hf/<name>.pt with idx and the
    float32 logits (HF's float32 path) of the weights as stored."""
    for seed, name in enumerate(sorted(HF_DIRS)):
        case, dtype, shards = HF_DIRS[name]
        cfg = CASES[case][0]
        g = torch.Generator().manual_seed(100 + seed)
        p = random_parameters(cfg, torch.float64, g)
        stored = {n: t.to(dtype).to(torch.float32) for n, t in p.items()}
        write_hf_dir(os.path.join(out_dir, "hf", name), cfg, stored, dtype, shards)
        idx = torch.randint(0, cfg["vocab_size"], (B, T), generator=g)
        torch.save({"idx": idx, "logits": forward(cfg, stored, idx)}, os.path.join(out_dir, "hf", name + ".pt"))


def main(out_dir, hf_dirs):
    os.makedirs(out_dir, exist_ok=True)
    if hf_dirs:
        make_hf_dirs(out_dir)
        return
    for seed, name in enumerate(sorted(CASES)):
        torch.save(make_case(name, seed), os.path.join(out_dir, name + ".pt"))


if __name__ == "__main__":
    main(sys.argv[1], "--hf-dirs" in sys.argv[2:])
