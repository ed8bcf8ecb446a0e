#!/usr/bin/env python3
"""A Qwen3 checkpoint with the real 0.6B shapes whose weights are all zero, written as a *sparse* file: 1.2 GB long,
almost nothing on disk, made in a second with the standard library only. For tests that need the real model's size
but not its values (the out-of-memory check in tests/faults.sh).

    python3 tools/make_sparse_model.py OUT_DIR
"""
import json
import shutil
import sys
from pathlib import Path

from qwen3_layout import header, shapes

root = Path(__file__).resolve().parent.parent
out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
config = json.loads((root / "tests/fixtures/qwen3-embedding-0.6b/config.json").read_text())
shutil.copy(root / "tests/fixtures/qwen3-embedding-0.6b/config.json", out / "config.json")
shutil.copy(root / "tests/fixtures/tiny-qwen3/tokenizer.json", out / "tokenizer.json")

head, size = header(shapes(config))
with open(out / "model.safetensors", "wb") as f:
    f.write(head)
    f.truncate(len(head) + size)  # the data: a hole of zeros
(out / "model.safetensors").chmod(0o644)
print(f"{out}: {len(shapes(config))} tensors, {size / 2**20:.0f} MiB of bf16 zeros (sparse)")
