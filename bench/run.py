#!/usr/bin/env python3
"""Our encoder and PyTorch (transformers, fp32) side by side, in one run, on the same inputs and thread count.

    python3 tools/make_random_model.py                  # once: the real 0.6B shape with random weights
    python3 bench/run.py [--model DIR] [--threads 2] [--reps 5] [--dtype f32]
    python3 bench/run.py --device cuda --dtype bf16     # on a GPU (build: cargo build --features cuda): PyTorch
                                                        # then runs on the same GPU in the same dtype

Prints median ms, ms per text, tokens/s and the ratio ours/PyTorch for each case, plus the machine's load average
before and after (timings on a busy machine are not comparable).
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
QUERY_INSTRUCT = "Given a web search query, retrieve relevant passages that answer the query"
WORDS = ("postgres vector index query embedding model token batch latency throughput cache page table row column "
         "search semantic meaning language document passage answer question database server client memory").split()


def text_of(tokenizer, n_tokens, seed):
    """A deterministic text of about n_tokens tokens (the closing <|endoftext|> included)."""
    words, i = [], seed
    while len(tokenizer.encode(" ".join(words)).ids) < n_tokens - 1:
        words.append(WORDS[(i * 7919) % len(WORDS)])
        i += 1
    return " ".join(words)


def make_cases(tokenizer):
    return [
        {"name": "query_1", "texts": [text_of(tokenizer, 8, 1)], "instruct": QUERY_INSTRUCT},
        {"name": "docs_32", "texts": [text_of(tokenizer, 22, s) for s in range(32)], "instruct": None},
        {"name": "docs_mixed", "texts": [text_of(tokenizer, 10 + (s * 389) % 391, s) for s in range(64)],
         "instruct": None},
        {"name": "long_1", "texts": [text_of(tokenizer, 2000, 3)], "instruct": None},
    ]


def run_ours(model, cases_file, threads, reps, dtype, device):
    features = ["--features", "cuda"] if device.startswith("cuda") else []
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "qwen_embed_model", "--example", "bench", *features],
                   cwd=ROOT, check=True)
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run([str(ROOT / "target/release/examples/bench"), "--model", model, "--cases", cases_file,
                          "--reps", str(reps), "--device", device, "--dtype", dtype], env=env, check=True,
                         capture_output=True, text=True)
    lines = [json.loads(l) for l in out.stdout.splitlines()]
    return lines[0]["load_ms"], {l["case"]: l for l in lines[1:]}


def run_torch(model_dir, cases, threads, reps, device, dtype):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, PreTrainedTokenizerFast

    torch.set_num_threads(threads)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(model_dir) / "tokenizer.json"), pad_token="<|endoftext|>")
    tok.padding_side = "left"
    # On the CPU the reference is fp32 (what users run there); on a GPU the same dtype as ours.
    torch_dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    if not device.startswith("cuda"):
        torch_dtype = torch.float32
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t = time.perf_counter()
    model = AutoModel.from_pretrained(model_dir, dtype=torch_dtype).to(device).eval()
    sync()
    load_ms = (time.perf_counter() - t) * 1e3

    @torch.inference_mode()
    def embed(texts):
        # What sentence-transformers does: sort by length, batches of 32, left padding, last token, normalise.
        order = sorted(range(len(texts)), key=lambda i: -len(tok(texts[i])["input_ids"]))
        out = [None] * len(texts)
        for s in range(0, len(order), 32):
            idx = order[s:s + 32]
            batch = tok([texts[i] for i in idx], padding=True, return_tensors="pt").to(device)
            h = model(**batch).last_hidden_state[:, -1]
            for i, v in zip(idx, F.normalize(h.float(), p=2, dim=1).cpu()):
                out[i] = v
        sync()
        return out

    results = {}
    for case in cases:
        texts = [t if case["instruct"] is None else f"Instruct: {case['instruct']}\nQuery:{t}" for t in case["texts"]]
        embed(texts[:1])  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            embed(texts)
            times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        tokens = sum(len(tok(x)["input_ids"]) for x in texts)
        results[case["name"]] = {"median_ms": times[len(times) // 2], "times_ms": times, "tokens": tokens}
    return load_ms, results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/qwen_embed/qwen3-0.6b-random"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (ours and PyTorch on the same device)")
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--peak-gflops", type=float, default=226.0,
                    help="the CPU's fp32 FMA peak on --threads cores (226 measured on the CI machine kind, 2 cores)")
    args = ap.parse_args()

    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    cases = [c for c in make_cases(tokenizer) if not args.only or c["name"] in args.only.split(",")]
    config = json.loads((Path(args.model) / "config.json").read_text())
    h, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    hd, nh, nkv = config.get("head_dim", h // config["num_attention_heads"]), config["num_attention_heads"], config[
        "num_key_value_heads"]
    params = layers * (h * nh * hd * 2 + 2 * h * nkv * hd + 3 * h * inter)

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cases, f)
    load_before = os.getloadavg()
    ours_load, ours = run_ours(args.model, f.name, args.threads, args.reps, args.dtype, args.device)
    torch_load, theirs = run_torch(args.model, cases, args.threads, args.reps, args.device, args.dtype)
    load_after = os.getloadavg()

    print(f"model {args.model} ({params / 1e6:.0f}M non-embedding parameters), {args.threads} threads, "
          f"{args.reps} reps, on {args.device}, ours in {args.dtype}, "
          f"PyTorch in {args.dtype if args.device.startswith('cuda') else 'fp32'}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"model load: ours {ours_load:.0f} ms, PyTorch {torch_load:.0f} ms")
    print(f"{'case':<11} {'texts':>5} {'tokens':>6} | {'ours ms':>9} {'ms/text':>8} {'tok/s':>7} {'%peak':>6} | "
          f"{'torch ms':>9} {'ms/text':>8} {'tok/s':>7} | {'ours/torch':>10}")
    for case in cases:
        name, n = case["name"], len(case["texts"])
        o, t = ours[name], theirs[name]
        flops = 2 * params * o["tokens"] + sum(
            4 * layers * nh * hd * (len(tokenizer.encode(x).ids) ** 2) / 2 for x in case["texts"])
        gflops = flops / (o["median_ms"] / 1e3) / 1e9
        print(f"{name:<11} {n:>5} {o['tokens']:>6} | {o['median_ms']:>9.1f} {o['median_ms'] / n:>8.2f} "
              f"{o['tokens'] / o['median_ms'] * 1e3:>7.0f} {100 * gflops / args.peak_gflops:>5.0f}% | "
              f"{t['median_ms']:>9.1f} {t['median_ms'] / n:>8.2f} {t['tokens'] / t['median_ms'] * 1e3:>7.0f} | "
              f"{o['median_ms'] / t['median_ms']:>10.2f}")


if __name__ == "__main__":
    sys.exit(main())
