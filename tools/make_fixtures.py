#!/usr/bin/env python3
"""Generate the test fixtures: small random-weight Qwen3 checkpoints + reference vectors.

The reference is Hugging Face transformers (fp32), run exactly like the official Qwen3-Embedding example
(left padding, last-token pooling, L2 normalisation) and cross-checked against sentence-transformers.

    pip install torch transformers sentence-transformers safetensors
    python3 tools/make_fixtures.py [--tokenizer PATH/tokenizer.json] [--real DIR]

Re-running it rewrites tests/fixtures/ deterministically (fixed seed).
"""
import argparse
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModel, PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
EOT = "<|endoftext|>"

# Odd on purpose: head_dim != hidden/heads, kv heads < heads, three layers, a non-default rope theta.
TINY = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=24,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=4096,
    vocab_size=151669,
    tie_word_embeddings=True,
    attention_bias=False,
    bos_token_id=151643,
    eos_token_id=151643,
)

QUERY_INSTRUCT = "Given a web search query, retrieve relevant passages that answer the query"

LONG_DOC = " ".join(
    f"Paragraph {i}: PostgreSQL stores rows in heap pages, and pgvector adds the vector type with HNSW and IVFFlat indexes."
    for i in range(60)
)

# (text, instruct) pairs: English, Chinese, mixed, emoji, empty, whitespace, long, with and without instructions.
CASES = [
    ("The capital of China is Beijing.", None),
    ("What is the capital of China?", QUERY_INSTRUCT),
    ("Explain gravity", QUERY_INSTRUCT),
    ("Gravity is a force that attracts two bodies towards each other.", None),
    ("中国的首都是北京。", None),
    ("北京有多少人口？", "给定一个问题，检索能回答它的段落"),
    ("Qwen3 是一个 multilingual 模型, supports 100+ languages.", None),
    ("I love pizza 🍕🍕 and 🚀 rockets! 👩‍👩‍👧", None),
    ("", None),
    ("   \n\t  ", None),
    ("", QUERY_INSTRUCT),
    (LONG_DOC, None),
    ("SELECT * FROM docs WHERE id = 1; DROP TABLE students;--", None),
    ("Ünïcödé façade naïve café", None),
    ("Привет, как дела?", None),
    ("مرحبا بالعالم", None),
    ("a", None),
    ("The quick brown fox jumps over the lazy dog.", "Retrieve semantically similar text"),
    ("line one\nline two\r\nline three", None),
    ("0123456789 3.14159 1e-6 #hashtag @mention https://example.com/a?b=c", None),
    ("Similarity thresholds pick the rows whose cosine is above 0.78.", None),
    ("How do I embed long documents?", QUERY_INSTRUCT),
]


def model_input(text, instruct):
    return text if instruct is None else f"Instruct: {instruct}\nQuery:{text}"


def make_tokenizer(tokenizer_json, out_dir):
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), pad_token=EOT, eos_token=EOT)
    tok.padding_side = "left"
    tok.save_pretrained(out_dir)
    # Keep the real tokenizer.json byte-identical (save_pretrained re-serialises it).
    shutil.copyfile(tokenizer_json, out_dir / "tokenizer.json")
    return PreTrainedTokenizerFast.from_pretrained(out_dir, padding_side="left")


def randomize(model, embed_std):
    """Random weights (the tools/make_reranker_fixtures.py model too), every value bf16-representable."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                # Random norm weights, so a missing (q/k) norm changes the result.
                p.copy_(torch.empty_like(p).uniform_(0.5, 2.0))
            elif "embed_tokens" in name:
                p.normal_(0.0, embed_std)
            else:
                p.normal_(0.0, 0.15)
            # Make every value bf16-representable so the bf16 file holds exactly the fp32 model.
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def random_model(seed):
    torch.manual_seed(seed)
    return randomize(Qwen3Model(Qwen3Config(**TINY)).eval(), embed_std=1.0)


def save_model(model, out_dir):
    model.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    # transformers >= 5 writes model.safetensors with mode 0600; PostgreSQL runs as another user.
    for f in out_dir.iterdir():
        os.chmod(f, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)


def last_token_pool(hidden, mask):
    assert bool(mask[:, -1].all()), "inputs must be left-padded"
    return hidden[:, -1]


@torch.no_grad()
def reference(model_dir, tok, texts, batch_size):
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tok(texts[i : i + batch_size], padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        out.append(F.normalize(last_token_pool(hidden, batch["attention_mask"]), p=2, dim=1))
    return torch.cat(out)


def sentence_transformers_check(model_dir, texts, expected):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"dtype": torch.float32})
    got = torch.tensor(st.encode(texts, batch_size=8, normalize_embeddings=False))
    diff = (got - expected).abs().max().item()
    assert diff < 1e-5, f"sentence-transformers disagrees with AutoModel: max diff {diff}"
    return diff


def main():
    ap = argparse.ArgumentParser()
    # Qwen3-Embedding-0.6B's tokenizer (the test model uses it unchanged) and configuration files, in the repository.
    ap.add_argument("--tokenizer", default=str(FIXTURES / "tiny-qwen3/tokenizer.json"))
    ap.add_argument("--real", default=str(FIXTURES / "qwen3-embedding-0.6b"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    out_dir = FIXTURES / "tiny-qwen3"
    # The default tokenizer lives in the directory about to be remade: keep a copy first.
    tokenizer_json = Path(tempfile.mkdtemp()) / "tokenizer.json"
    shutil.copyfile(args.tokenizer, tokenizer_json)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    tok = make_tokenizer(tokenizer_json, out_dir)
    save_model(random_model(seed=20261125), out_dir)
    # sentence-transformers layout, as in the real model directory.
    for name in ["modules.json", "config_sentence_transformers.json"]:
        shutil.copyfile(Path(args.real) / name, out_dir / name)
    (out_dir / "1_Pooling").mkdir()
    pooling = json.loads((Path(args.real) / "1_Pooling/config.json").read_text())
    pooling["word_embedding_dimension"] = TINY["hidden_size"]
    (out_dir / "1_Pooling/config.json").write_text(json.dumps(pooling, indent=2) + "\n")

    inputs = [model_input(t, i) for t, i in CASES]
    batched = reference(out_dir, tok, inputs, batch_size=8)
    alone = reference(out_dir, tok, inputs, batch_size=1)
    pad_diff = (batched - alone).abs().max().item()
    assert pad_diff < 1e-5, f"left padding changed the reference: {pad_diff}"
    st_diff = sentence_transformers_check(out_dir, inputs, batched)

    ids = [tok(x)["input_ids"] for x in inputs]
    refs = {
        "generator": "tools/make_fixtures.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model": "tiny-qwen3",
        "pooling": "last token, left padding, L2 normalised, fp32",
        "max_abs_diff_batched_vs_alone": pad_diff,
        "max_abs_diff_sentence_transformers": st_diff,
        "cases": [
            {"text": t, "instruct": i, "input": x, "ids": tid, "embedding": [round(v, 8) for v in e.tolist()]}
            for (t, i), x, tid, e in zip(CASES, inputs, ids, batched)
        ],
    }
    (FIXTURES / "tiny-qwen3-reference.json").write_text(json.dumps(refs, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {out_dir} ({len(CASES)} cases; longest {max(map(len, ids))} tokens; "
          f"pad diff {pad_diff:.2e}; sentence-transformers diff {st_diff:.2e})")


if __name__ == "__main__":
    main()
