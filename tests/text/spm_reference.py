"""Reference ids from Debian's python3-sentencepiece for lowmem's text tests.

usage: /usr/bin/python3 spm_reference.py MODEL INPUTS.jsonl OUT.jsonl
INPUTS.jsonl holds one JSON string per line; OUT.jsonl gets, per input,
{"ids": sp.encode(text), "decoded": sp.decode(ids)}.
"""
import json
import sys

import sentencepiece as spm

model, inputs, out = sys.argv[1:4]
sp = spm.SentencePieceProcessor(model_file=model)
with open(inputs, encoding="utf-8") as f, open(out, "w", encoding="utf-8") as o:
    for line in f:
        if not line.strip():
            continue
        text = json.loads(line)
        ids = sp.encode(text)
        o.write(json.dumps({"ids": ids, "decoded": sp.decode(ids)}) + "\n")
