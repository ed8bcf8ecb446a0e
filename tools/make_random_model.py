#!/usr/bin/env python3
"""A random-weight model with the real Qwen3-Embedding-0.6B shape, for benchmarks (cost does not depend on values).

    python3 tools/make_random_model.py [--out ~/.cache/qwen_embed/qwen3-0.6b-random]

Writes config.json, tokenizer.json and a bf16 model.safetensors (1.2 GB) in Hugging Face layout, outside the repository.
"""
import argparse
import os
import shutil
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3Model

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", default=str(ROOT.parent / "shared/qwen3-embedding-0.6b"))
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/qwen_embed/qwen3-0.6b-random"))
    args = ap.parse_args()
    out = Path(args.out)
    if (out / "model.safetensors").exists():
        print(f"{out} exists")
        return
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = Qwen3Config.from_pretrained(args.real)
    model = Qwen3Model(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    # The real config.json (top-level rope_theta), not the one transformers rewrote.
    shutil.copyfile(Path(args.real) / "config.json", out / "config.json")
    shutil.copyfile(Path(args.real) / "tokenizer.json", out / "tokenizer.json")
    for f in out.iterdir():
        os.chmod(f, 0o644)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
