#!/usr/bin/env python3
"""The reranker against transformers running the official code (QwenLM/Qwen3-Embedding,
examples/qwen3_reranker_transformers.py) on 50 (query, ~100-token passage) pairs, in one run, on the same threads.

    bash bench/run.sh --help >/dev/null       # once: bench/.venv and the random 0.6B-shaped model
    bench/.venv/bin/python bench/rerank.py [--model DIR] [--threads 2] [--reps 3] [--dtype auto]

The random 0.6B model (tools/make_random_model.py) has Qwen3-Reranker-0.6B's shape (tied LM head). Prints pairs/s of
both, the ratio, the max |score difference| and the CPU, kernel and load average.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tools"))

from run import WORDS, cpu_description  # noqa: E402


def passage(tokenizer, n_tokens, seed):
    words, i = [], seed
    while len(tokenizer.encode(" ".join(words)).ids) < n_tokens:
        words.append(WORDS[(i * 7919) % len(WORDS)])
        i += 1
    return " ".join(words)


def run_torch(model_dir, query, docs, threads, reps):
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from make_reranker_fixtures import PREFIX, SUFFIX, format_instruction

    torch.set_num_threads(threads)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(model_dir) / "tokenizer.json"), pad_token="<|endoftext|>")
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    prefix, suffix = tok.encode(PREFIX, add_special_tokens=False), tok.encode(SUFFIX, add_special_tokens=False)
    max_length = 8192

    @torch.no_grad()
    def scores():
        pairs = [format_instruction(None, query, d) for d in docs]
        inputs = tok(pairs, padding=False, truncation="longest_first", return_attention_mask=False,
                     max_length=max_length - len(prefix) - len(suffix))
        inputs["input_ids"] = [prefix + ids + suffix for ids in inputs["input_ids"]]
        inputs = tok.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
        logits = model(**inputs).logits[:, -1, :]
        pair = torch.nn.functional.log_softmax(torch.stack([logits[:, no], logits[:, yes]], dim=1), dim=1)
        return pair[:, 1].exp().tolist()

    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = scores()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2], out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/qwen_embed/qwen3-0.6b-random"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    query = "How does the database choose an index for a vector search query?"
    docs = [passage(tokenizer, 100, s) for s in range(50)]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([[query, d] for d in docs], f)
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "qwen_embed_model", "--example", "rerank_bench"],
                   cwd=ROOT, check=True)
    load_before = os.getloadavg()
    out = subprocess.run([str(ROOT / "target/release/examples/rerank_bench"), "--model", args.model, "--pairs", f.name,
                          "--reps", str(args.reps), "--dtype", args.dtype], check=True, capture_output=True, text=True,
                         env=dict(os.environ, RAYON_NUM_THREADS=str(args.threads)))
    ours = json.loads(out.stdout)
    torch_ms, torch_scores = run_torch(args.model, query, docs, args.threads, args.reps)
    load_after = os.getloadavg()
    diff = max(abs(a - b) for a, b in zip(ours["scores"], torch_scores))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python3 bench/rerank.py {' '.join(sys.argv[1:])}")
    print(f"CPU: {cpu_description()}; {args.threads} threads, {args.reps} reps; ours: dtype {args.dtype}, "
          f"kernel {ours['kernel']}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"50 pairs, {ours['tokens']} tokens: ours {ours['median_ms']:.0f} ms ({50e3 / ours['median_ms']:.1f} pairs/s), "
          f"transformers fp32 {torch_ms:.0f} ms ({50e3 / torch_ms:.1f} pairs/s); transformers' time / ours "
          f"{torch_ms / ours['median_ms']:.2f}; max |score diff| {diff:.2e}")


if __name__ == "__main__":
    sys.exit(main())
