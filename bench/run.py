#!/usr/bin/env python3
"""Our encoder against its anchors (bench/anchors.py: PyTorch fp32 and bf16, ONNX Runtime fp32 and int8) side by
side, in one run, on the same inputs and thread count; accuracy as min cosine against PyTorch fp32.

    bash bench/run.sh [ARGS]                            # sets up the pinned environment (bench/requirements.txt)
                                                        # and the model, then runs this with ARGS
    bench/.venv/bin/python bench/run.py [--model DIR] [--threads 2] [--reps 5] [--dtype auto] [--only query_1]
    bench/.venv/bin/python bench/run.py --device cuda   # on a GPU (cargo build --features cuda): PyTorch on the same
                                                        # GPU in the same dtype
    bench/.venv/bin/python bench/run.py --sql           # ours through SQL too: SELECT embed(text[], instruct) on the
                                                        # cluster psql reaches (PGHOST...), result cache off
    bench/.venv/bin/python bench/run.py --vs-cap avx2   # and ours against what it runs capped at a lower CPU level
                                                        # (here: the AVX2 kernel), in turn, ratio per pair
    bench/.venv/bin/python bench/run.py --profile       # and where ours spends each case's time (ms per call):
                                                        # linear layers, attention, norms and RoPE, elementwise, other

Prints the date, command, CPU model and flags, the kernel ours used, the load average before and after (timings on
a busy machine are not comparable), and per case each engine's median time, its time relative to ours and its min
cosine.
"""
import argparse
import json
import os
import statistics
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
        # One long document batched with short ones: what padding costs (sentence-transformers pads each batch to its
        # longest text; ours pads only inside attention).
        {"name": "docs_skewed", "texts": [text_of(tokenizer, 22, s) for s in range(3)] + [text_of(tokenizer, 2000, 3)],
         "instruct": None},
    ]


def run_ours(model, cases_file, threads, reps, dtype, device, binary=None, profile=False, cap=None):
    if binary is None:
        # oneDNN on the CPU, as the extension builds (its bf16 kernels where the CPU has them; see precision.rs).
        features = ["--features", "onednn,cuda" if device.startswith("cuda") else "onednn"]
        subprocess.run(["cargo", "build", "-q", "--release", "-p", "qwen_embed_model", "--example", "bench",
                        *features], cwd=ROOT, check=True)
        binary = ROOT / "target/release/examples/bench"
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    env.pop("QWEN_EMBED_CPU_KERNEL", None)
    if cap:
        env["QWEN_EMBED_CPU_KERNEL"] = cap  # what a CPU of that level runs (see cpu/mod.rs)
    out = subprocess.run([str(binary), "--model", model, "--cases", cases_file,
                          "--reps", str(reps), "--device", device, "--dtype", dtype, "--vectors",
                          *(["--profile"] if profile else [])], env=env,
                         check=True, capture_output=True, text=True)
    lines = [json.loads(l) for l in out.stdout.splitlines()]
    return lines[0], {l["case"]: l for l in lines[1:]}


def vs_cap(args, cases_file):
    """Ours and ours capped at --vs-cap, one repetition each, --reps times in turn (pairing keeps each ratio fair on a
    machine whose speed drifts); the capped run's load line and the pairs of per-case results."""
    binary = args.ours_bin or (ROOT / "target/release/examples/bench")  # built by the main run just before
    pairs, info = [], None
    for _ in range(args.reps):
        mine = run_ours(args.model, cases_file, args.threads, 1, args.dtype, args.device, binary)[1]
        info, theirs = run_ours(args.model, cases_file, args.threads, 1, args.dtype, args.device, binary,
                                cap=args.vs_cap)
        pairs.append((mine, theirs))
    return info, pairs


def sql_literal(text):
    return "'" + text.replace("'", "''") + "'"


def run_ours_sql(cases, reps):
    """Ours through SQL, as a client sees it: each case as one SELECT embed(text[], instruct) on the cluster that psql
    reaches through the usual environment (PGHOST, PGPORT, PGUSER, PGDATABASE), result cache off; times are psql's
    \\timing of a statement that returns only a count (the vectors' text form is read once, afterwards)."""
    results = {}
    for case in cases:
        texts = "ARRAY[" + ", ".join(sql_literal(t) for t in case["texts"]) + "]::text[]"
        instruct = sql_literal(case["instruct"]) if case["instruct"] else "NULL"
        call = f"embed({texts}, {instruct})"
        timed = f"SELECT count(*) FROM unnest({call});\n"
        script = ("SET qwen_embed.cache_size = 0;\n" + timed + "\\timing on\n" + timed * reps + "\\timing off\n"
                  + f"SELECT sum(token_count(t, {instruct})) FROM unnest({texts}) t;\n"
                  + f"SELECT v::text FROM unnest({call}) v;\n")
        out = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"], input=script, check=True,
                             capture_output=True, text=True).stdout.splitlines()
        times = sorted(float(l.split()[1]) for l in out if l.startswith("Time: "))
        vectors = [json.loads(l) for l in out if l.startswith("[")]
        tokens = int([l for l in out if l.isdigit()][-1])  # the last number printed before the vectors
        results[case["name"]] = {"median_ms": times[len(times) // 2], "times_ms": times, "vectors": vectors,
                                 "tokens": tokens}
    return results


def run_anchor(name, model_dir, cases, threads, reps, device):
    """Times one anchor (see anchors.py) on every case; returns its load time and, per case, times and vectors."""
    import anchors

    kind, _, variant = name.partition("-")
    if kind == "torch":
        load_ms, embed = anchors.torch_runner(model_dir, threads, variant, device)
    else:
        cache = os.path.expanduser("~/.cache/qwen_embed/onnx")
        load_ms, embed = anchors.onnx_runner(model_dir, threads, variant == "int8", cache)
    results = {}
    for case in cases:
        texts = [t if case["instruct"] is None else f"Instruct: {case['instruct']}\nQuery:{t}" for t in case["texts"]]
        embed(texts[:1])  # warm-up
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            vectors = embed(texts)
            times.append((time.perf_counter() - t) * 1e3)
        times.sort()
        results[case["name"]] = {"median_ms": times[len(times) // 2], "times_ms": times, "vectors": vectors}
    return load_ms, results


def cpu_description():
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), "unknown")
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines() if l.startswith("flags")), [])
    has = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model} ({', '.join(has) or 'no x86 vector flags'})"


def min_cosine(vectors, reference):
    import numpy as np

    return min(float(np.dot(np.asarray(v, dtype=np.float64), np.asarray(r, dtype=np.float64))
                   / (np.linalg.norm(v) * np.linalg.norm(r))) for v, r in zip(vectors, reference))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/qwen_embed/qwen3-0.6b-random"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", default="auto", help="ours: auto (the default users get), f32, bf16 or f16")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (ours and PyTorch on the same device)")
    ap.add_argument("--only", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--ours-bin", default=None, help="a prebuilt bench example (default: cargo build it)")
    ap.add_argument("--sql", action="store_true", help="also ours through SQL on the cluster psql reaches")
    ap.add_argument("--profile", action="store_true", help="also where ours spends each case's time")
    ap.add_argument("--vs-cap", default="", metavar="LEVEL",
                    help="also ours capped at a lower CPU level (QWEN_EMBED_CPU_KERNEL=avx512|avx2|...: the kernel an "
                         "older CPU runs), in turn with ours, one repetition each, --reps pairs; prints each case's "
                         "median ratio over the pairs")
    ap.add_argument("--anchors", default="",
                    help="comma-separated from torch-fp32, torch-bf16, onnx-fp32, onnx-int8 (default: all four on a "
                         "CPU, torch in --dtype on a GPU); torch-fp32 always runs: it is the accuracy reference")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))

    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    cases = [c for c in make_cases(tokenizer) if not args.only or c["name"] in args.only.split(",")]
    on_gpu = args.device.startswith("cuda")
    default = [f"torch-{'bf16' if args.dtype in ('auto', 'bf16') else args.dtype}"] if on_gpu else [
        "torch-bf16", "onnx-fp32", "onnx-int8"]
    names = ["torch-fp32"] + [a for a in (args.anchors.split(",") if args.anchors else default) if a != "torch-fp32"]

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cases, f)
    load_before = os.getloadavg()
    ours_info, ours = run_ours(args.model, f.name, args.threads, args.reps, args.dtype, args.device, args.ours_bin,
                               args.profile)
    capped = vs_cap(args, f.name) if args.vs_cap else None
    via_sql = run_ours_sql(cases, args.reps) if args.sql else None
    anchors = {name: run_anchor(name, args.model, cases, args.threads, args.reps, args.device) for name in names}
    load_after = os.getloadavg()

    reference = anchors["torch-fp32"][1]
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: python3 bench/run.py {' '.join(sys.argv[1:])}")
    print(f"CPU: {cpu_description()}; {args.threads} threads, {args.reps} reps, device {args.device}")
    print(f"ours: dtype {args.dtype} -> {ours_info['dtype']}, kernel {ours_info['kernel']} (oneDNN {ours_info.get('onednn') or 'not built in'}); "
          f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"model load ms: ours {ours_info['load_ms']:.0f}, " +
          ", ".join(f"{n} {anchors[n][0]:.0f}" for n in names))
    print("time per case in ms (median); 'x' = anchor's time / ours (above 1: ours is faster); "
          "cos = min cosine against PyTorch fp32 over the case's texts")
    header = f"{'case':<11} {'texts':>5} {'tokens':>6} | {'ours':>9} {'cos':>9}"
    if via_sql:
        header += f" | {'ours (SQL)':>10} {'x':>5} {'cos':>9}"
    for n in names:
        header += f" | {n:>10} {'x':>5} {'cos':>9}"
    print(header)
    for case in cases:
        name = case["name"]
        o = ours[name]
        ref = reference[name]["vectors"]
        line = (f"{name:<11} {len(case['texts']):>5} {o['tokens']:>6} | {o['median_ms']:>9.1f} "
                f"{min_cosine(o['vectors'], ref):>9.6f}")
        if via_sql:
            r = via_sql[name]
            assert r["tokens"] == o["tokens"], f"{name}: {r['tokens']} tokens through SQL, {o['tokens']} direct"
            line += f" | {r['median_ms']:>10.1f} {r['median_ms'] / o['median_ms']:>5.2f} {min_cosine(r['vectors'], ref):>9.6f}"
        for n in names:
            r = anchors[n][1][name]
            line += f" | {r['median_ms']:>10.1f} {r['median_ms'] / o['median_ms']:>5.2f} {min_cosine(r['vectors'], ref):>9.6f}"
        print(line)
    if capped:
        info, pairs = capped
        print(f"ours against ours capped at {args.vs_cap} (kernel {info['kernel']}, dtype {info['dtype']}), run in turn: "
              f"median ms over the pairs; x = capped / ours per pair, median (min-max)")
        for case in cases:
            mine = [p[0][case["name"]]["median_ms"] for p in pairs]
            theirs = [p[1][case["name"]]["median_ms"] for p in pairs]
            ratios = sorted(t / m for m, t in zip(mine, theirs))
            print(f"{case['name']:<11} ours {statistics.median(mine):>9.1f} | capped {statistics.median(theirs):>9.1f} | "
                  f"x {statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})")
    if args.profile:
        parts = ["linear", "attention", "norms_rope", "elementwise", "other"]
        print("ours, where the time goes (ms per call, mean of the reps; % of the sum)")
        print(f"{'case':<11} " + " ".join(f"{p:>17}" for p in parts))
        for case in cases:
            prof = ours[case["name"]]["profile"]
            whole = sum(prof[p] for p in parts)
            print(f"{case['name']:<11} " + " ".join(f"{prof[p]:>9.1f} ({100 * prof[p] / whole:>4.1f} %)" for p in parts))


if __name__ == "__main__":
    sys.exit(main())
