#!/usr/bin/env python3
"""A Qwen3 checkpoint with the real 0.6B shapes whose weights are all zero, written as a *sparse* file: 1.2 GB long,
almost nothing on disk, made in a second with the standard library only. For tests that need the real model's size
but not its values (the out-of-memory check in tests/faults.sh).

    python3 tools/make_sparse_model.py OUT_DIR
"""
import json
import shutil
import struct
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
config = json.loads((root / "tests/fixtures/qwen3-embedding-0.6b-config.json").read_text())
shutil.copy(root / "tests/fixtures/qwen3-embedding-0.6b-config.json", out / "config.json")
shutil.copy(root / "tests/fixtures/tiny-qwen3/tokenizer.json", out / "tokenizer.json")

h, hd, inter = config["hidden_size"], config["head_dim"], config["intermediate_size"]
q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
shapes = {"embed_tokens.weight": [config["vocab_size"], h], "norm.weight": [h]}
for i in range(config["num_hidden_layers"]):
    p = f"layers.{i}"
    shapes |= {
        f"{p}.input_layernorm.weight": [h], f"{p}.post_attention_layernorm.weight": [h],
        f"{p}.self_attn.q_proj.weight": [q, h], f"{p}.self_attn.k_proj.weight": [kv, h],
        f"{p}.self_attn.v_proj.weight": [kv, h], f"{p}.self_attn.o_proj.weight": [h, q],
        f"{p}.self_attn.q_norm.weight": [hd], f"{p}.self_attn.k_norm.weight": [hd],
        f"{p}.mlp.gate_proj.weight": [inter, h], f"{p}.mlp.up_proj.weight": [inter, h],
        f"{p}.mlp.down_proj.weight": [h, inter],
    }
header, offset = {}, 0
for name, shape in shapes.items():
    size = 2 * eval("*".join(map(str, shape)))
    header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
    offset += size
blob = json.dumps(header).encode()
blob += b" " * (-len(blob) % 8)
with open(out / "model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob)
    f.truncate(8 + len(blob) + offset)  # the data: a hole of zeros
(out / "model.safetensors").chmod(0o644)
print(f"{out}: {len(shapes)} tensors, {offset / 2**20:.0f} MiB of bf16 zeros (sparse)")
