#!/usr/bin/env python3
"""A random-weight model with the real Qwen3-Embedding-0.6B shape, for benchmarks (cost does not depend on values).

    python3 tools/make_random_model.py [--out ~/.cache/qwen_embed/qwen3-0.6b-random]

Writes config.json, tokenizer.json and a bf16 model.safetensors (1.2 GB) in Hugging Face layout, outside the repository,
with the standard library only: matrices get random signs and mantissas at magnitudes 2^-7 to 2^-6 (activations stay
finite through all 28 layers), norms get 1. The real configuration and tokenizer come from tests/fixtures.
"""
import argparse
import json
import os
import shutil
from pathlib import Path

from qwen3_layout import header, numel, shapes

ROOT = Path(__file__).resolve().parent.parent
# bf16 bit patterns, little-endian: the low byte keeps 7 random mantissa bits (exponent's lowest bit 0), the high byte
# a random sign and exponent 120 (2^-7).
LOW = bytes(b & 0x7F for b in range(256))
HIGH = bytes((b & 0x80) | 0x3C for b in range(256))
ONE = b"\x80\x3f"  # 1.0 in bf16


def random_bf16(n):
    data = bytearray(os.urandom(2 * n))
    data[0::2] = data[0::2].translate(LOW)
    data[1::2] = data[1::2].translate(HIGH)
    return data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--real", default=str(ROOT / "tests/fixtures/qwen3-embedding-0.6b"))
    ap.add_argument("--tokenizer", default=str(ROOT / "tests/fixtures/tiny-qwen3/tokenizer.json"))
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/qwen_embed/qwen3-0.6b-random"))
    args = ap.parse_args()
    out = Path(args.out)
    if (out / "model.safetensors").exists():
        print(f"{out} exists")
        return
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((Path(args.real) / "config.json").read_text())
    tensors = shapes(config)
    head, _ = header(tensors)
    partial = out / "model.safetensors.partial"
    with open(partial, "wb") as f:
        f.write(head)
        for name, shape in tensors.items():
            f.write(ONE * numel(shape) if len(shape) == 1 else random_bf16(numel(shape)))
    partial.rename(out / "model.safetensors")
    shutil.copyfile(Path(args.real) / "config.json", out / "config.json")
    shutil.copyfile(args.tokenizer, out / "tokenizer.json")
    for f in out.iterdir():
        os.chmod(f, 0o644)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
