"""Does Hugging Face PEFT load a LoRA adapter written by `lowmem train`, and
does its merge equal `lowmem merge`'s?

Needs a Python with torch, safetensors and peft (not in Debian; e.g. a GPU
machine's image). Inputs, all written by the lowmem CLI (docs/adapters.md,
"Checking the files with PEFT", gives the commands):
  BASE    weights.safetensors of a full-model checkpoint (the base model)
  ADAPTER the adapter directory of a `--method lora` run started from BASE
  MERGED  model.safetensors written by `lowmem merge --base ... --adapter ...`
The model is bench/gpt_reference.py's GPT, whose module names are the C++ GPT's
(h.<i>.attn.qkv, ...). Checks, printed as one JSON line, exit 1 on failure:
  1. PeftModel.from_pretrained(model, ADAPTER) loads every tensor (no missing
     or unexpected LoRA keys) and reads r, lora_alpha and target_modules;
  2. PEFT's merge_and_unload() weights equal MERGED to 1e-6 relative;
  3. the PEFT model's logits (unmerged) equal the logits of the same model
     with MERGED's weights to 1e-5.

  python3 tools/peft_check.py BASE ADAPTER MERGED --n-layer 2 --n-head 2 \\
      --n-embd 32 --block-size 64
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from gpt_reference import GPT  # noqa: E402


def make_model(a, state):
    torch.manual_seed(0)
    m = GPT(a.n_layer, a.n_head, a.n_embd, a.block_size, "nanogpt")
    missing, unexpected = m.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("attn.bias")]  # mask buffer
    assert not missing and not unexpected, (missing, unexpected)
    return m.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("adapter")
    ap.add_argument("merged")
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=64)
    a = ap.parse_args()
    import peft

    base = load_file(a.base)
    merged = load_file(a.merged)
    model = make_model(a, base)
    pm = peft.PeftModel.from_pretrained(model, a.adapter)
    cfg = pm.peft_config["default"]
    lora_keys = [k for k in pm.state_dict() if "lora_" in k]
    written = load_file(os.path.join(a.adapter, "adapter_model.safetensors"))
    idx = torch.randint(0, 256, (2, a.block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        peft_logits = pm(idx)
        ref_logits = make_model(a, merged)(idx)
        unloaded = pm.merge_and_unload().state_dict()
    worst = 0.0
    for k, v in merged.items():
        d = (unloaded[k].float() - v.float()).abs().max().item()
        worst = max(worst, d / max(1.0, v.abs().max().item()))
    logit_err = (peft_logits - ref_logits).abs().max().item()
    lora_b_nonzero = any(v.abs().max().item() > 0 for k, v in written.items() if "lora_B" in k)
    ok = (len(lora_keys) == len(written) and worst <= 1e-6 and logit_err <= 1e-5
          and lora_b_nonzero)
    print(json.dumps({
        "peft": peft.__version__, "torch": torch.__version__,
        "r": cfg.r, "lora_alpha": cfg.lora_alpha,
        "target_modules": sorted(cfg.target_modules),
        "lora_tensors_loaded": len(lora_keys), "lora_tensors_written": len(written),
        "lora_B_nonzero": lora_b_nonzero,
        "merge_max_rel_err": worst, "logits_max_abs_err": logit_err, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
