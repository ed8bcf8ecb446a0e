#!/usr/bin/env python3
"""Reranker fixtures: a tiny random-weight Qwen3ForCausalLM with its LM head tied to embed_tokens (as in
Qwen3-Reranker-0.6B) in tests/fixtures/tiny-qwen3-reranker/, and reference scores computed with transformers in fp32
by the official formulation (QwenLM/Qwen3-Embedding, examples/qwen3_reranker_transformers.py): prefix + the pair
tokenised by the model's tokenizer (truncated to the length limit minus prefix and suffix) + suffix, left padding,
score = softmax over the "yes" and "no" logits at the last position.

    bench/.venv/bin/python tools/make_reranker_fixtures.py      # torch + transformers (bench/requirements.txt)

The scores are computed twice: with the directory's tokenizer.json (Qwen3-Embedding's, whose post-processor appends
<|endoftext|>) and with the same tokenizer without a post-processor (what Qwen3-Reranker's own tokenizer does), so
the tests cover both ways a post-processor can decide. Re-running rewrites the fixtures deterministically.
"""
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from make_fixtures import randomize

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
EOT = "<|endoftext|>"

TINY = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    max_position_embeddings=4096,
    vocab_size=151669,
    tie_word_embeddings=True,
    attention_bias=False,
    bos_token_id=151643,
    eos_token_id=151645,
)

PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
          "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCT = "Given a web search query, retrieve relevant passages that answer the query"
# Without a post-processor: the body is tokenised as is (Qwen3-Reranker's tokenizer adds no special tokens).
PLAIN_POST_PROCESSOR = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}

LONG_DOC = " ".join(f"Section {i}: the planner estimates row counts from statistics gathered by ANALYZE." for i in
                    range(40))
# (query, document, instruct, max_length)
CASES = [
    ("What is the capital of China?", "The capital of China is Beijing.", None, 8192),
    ("What is the capital of China?", "Gravity pulls bodies towards each other.", None, 8192),
    ("Explain gravity", "Gravity is a force that attracts two bodies towards each other.", None, 8192),
    ("Explain gravity", "The capital of China is Beijing.", "Judge whether the passage is about physics", 8192),
    ("北京有多少人口？", "北京是中国的首都，人口约两千万。", "给定一个问题，判断段落是否回答了它", 8192),
    ("emoji 🍕?", "I love pizza 🍕🍕 and 🚀 rockets! 👩‍👩‍👧", None, 8192),
    ("", "", None, 8192),
    ("How are rows estimated?", LONG_DOC, None, 8192),
    ("How are rows estimated?", LONG_DOC, None, 160),
    ("How are rows estimated?", LONG_DOC, "Find passages about PostgreSQL internals", 120),
    ("SELECT 1; DROP TABLE x;--", "line one\nline two\r\n\tindented", None, 8192),
]


def format_instruction(instruction, query, doc):
    if instruction is None:
        instruction = DEFAULT_INSTRUCT
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"


def process_inputs(tok, pairs, max_length):
    """The official code: tokenise the bodies with truncation, wrap them in prefix and suffix, left-pad."""
    prefix_tokens = tok.encode(PREFIX, add_special_tokens=False)
    suffix_tokens = tok.encode(SUFFIX, add_special_tokens=False)
    inputs = tok(pairs, padding=False, truncation="longest_first", return_attention_mask=False,
                 max_length=max_length - len(prefix_tokens) - len(suffix_tokens))
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
    return tok.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)


@torch.no_grad()
def scores(model, tok, cases):
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    out, ids = [], []
    for query, doc, instruct, max_length in cases:
        inputs = process_inputs(tok, [format_instruction(instruct, query, doc)], max_length)
        logits = model(**inputs).logits[:, -1, :]
        pair = torch.nn.functional.log_softmax(torch.stack([logits[:, no], logits[:, yes]], dim=1), dim=1)
        out.append(pair[0, 1].exp().item())
        ids.append(inputs["input_ids"][0].tolist())
    return out, ids


@torch.no_grad()
def batched_scores(model, tok, cases):
    """The same cases in one left-padded batch (those sharing the default length limit)."""
    same = [c for c in cases if c[3] == 8192]
    inputs = process_inputs(tok, [format_instruction(i, q, d) for q, d, i, _ in same], 8192)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    logits = model(**inputs).logits[:, -1, :]
    pair = torch.nn.functional.log_softmax(torch.stack([logits[:, no], logits[:, yes]], dim=1), dim=1)
    return pair[:, 1].exp().tolist()


def random_model(seed):
    torch.manual_seed(seed)
    return randomize(Qwen3ForCausalLM(Qwen3Config(**TINY)).eval(), embed_std=0.25)


def tokenizer(tokenizer_json):
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), pad_token=EOT)
    tok.padding_side = "left"
    return tok


def main():
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out_dir = FIXTURES / "tiny-qwen3-reranker"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    random_model(seed=20261126).to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)
    for f in out_dir.iterdir():
        os.chmod(f, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    # The embedding fixture's tokenizer, shared (11 MB) rather than copied.
    os.symlink("../tiny-qwen3/tokenizer.json", out_dir / "tokenizer.json")
    assert "lm_head.weight" not in json.dumps(json.loads((out_dir / "config.json").read_text()))

    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    tok = tokenizer(out_dir / "tokenizer.json")
    plain_json = Path(tempfile.mkdtemp()) / "tokenizer.json"
    data = json.loads((out_dir / "tokenizer.json").read_text())
    data["post_processor"] = PLAIN_POST_PROCESSOR
    plain_json.write_text(json.dumps(data, ensure_ascii=False))
    plain = tokenizer(plain_json)

    one, ids = scores(model, tok, CASES)
    plain_one, plain_ids = scores(model, plain, CASES)
    batched = batched_scores(model, tok, CASES)
    alone = [s for s, c in zip(one, CASES) if c[3] == 8192]
    batch_diff = max(abs(a - b) for a, b in zip(batched, alone))
    assert batch_diff < 1e-5, f"left padding changed the scores: {batch_diff}"
    # The embedding tokenizer's post-processor appends <|endoftext|> to the body; the plain one adds nothing.
    assert all(len(a) == len(b) + 1 for a, b, c in zip(ids, plain_ids, CASES) if c[3] == 8192)
    assert any(0.05 < s < 0.95 for s in one), f"scores saturated: {one}"

    refs = {
        "generator": "tools/make_reranker_fixtures.py",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model": "tiny-qwen3-reranker",
        "formulation": "QwenLM/Qwen3-Embedding examples/qwen3_reranker_transformers.py, fp32",
        "prefix": PREFIX,
        "suffix": SUFFIX,
        "default_instruct": DEFAULT_INSTRUCT,
        "plain_post_processor": PLAIN_POST_PROCESSOR,
        "max_abs_diff_batched_vs_alone": batch_diff,
        "cases": [
            {"query": q, "document": d, "instruct": i, "max_length": m, "ids": tid, "score": s,
             "plain_tokenizer": {"ids": pid, "score": ps}}
            for (q, d, i, m), tid, s, pid, ps in zip(CASES, ids, one, plain_ids, plain_one)
        ],
    }
    (FIXTURES / "tiny-qwen3-reranker-reference.json").write_text(json.dumps(refs, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {out_dir}: {len(CASES)} cases, scores {[round(s, 4) for s in one]}, batch diff {batch_diff:.2e}")


if __name__ == "__main__":
    main()
