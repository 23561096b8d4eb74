"""Writes a Hugging Face Llama directory of random weights for bench/hf_load:
config.json and model.safetensors, streamed tensor by tensor (the whole file
never sits in memory). Default sizes (TinyLlama-like widths, 10 layers):
571M parameters, 1.14 GB in bf16.

    /usr/bin/python3 bench/hf_load_fixture.py /tmp/hf_bench [--dtype bfloat16] [--layers 10]
"""
import argparse
import json
import os
import struct

import torch

ST = {"float32": ("F32", torch.float32), "bfloat16": ("BF16", torch.bfloat16),
      "float16": ("F16", torch.float16)}


def shapes(c):
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    d = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * d
    out = [("model.embed_tokens.weight", (v, h))]
    for n in range(c["num_hidden_layers"]):
        p = "model.layers.%d." % n
        out += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)), (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,))]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(ST))
    ap.add_argument("--layers", type=int, default=10)
    a = ap.parse_args()
    c = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
         "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": a.layers,
         "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
         "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
         "hidden_act": "silu", "torch_dtype": a.dtype}
    name, dtype = ST[a.dtype]
    size = torch.tensor([], dtype=dtype).element_size()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for n, s in shapes(c):
        b = size
        for x in s:
            b *= x
        header[n] = {"dtype": name, "shape": list(s), "data_offsets": [offset, offset + b]}
        offset += b
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    g = torch.Generator().manual_seed(0)
    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for n, s in shapes(c):
            t = (0.02 * torch.randn(s, generator=g)).to(dtype)
            if dtype == torch.bfloat16:
                t = t.view(torch.int16)
            f.write(t.numpy().tobytes())
    print("%s: %.3f GB of weights" % (a.out, offset / 1e9))


if __name__ == "__main__":
    main()
