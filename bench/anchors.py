"""The anchors bench/run.py times ours against, on the same texts and thread count, with the same pooling (left
padding, last token, L2 normalisation, batches of 32 sorted by length as sentence-transformers does):

- PyTorch (transformers AutoModel) in fp32 and in bf16 (oneDNN's bf16 kernels where the CPU has them);
- ONNX Runtime on the model exported to ONNX, in fp32 and with int8 dynamic quantisation of the MatMul weights (how
  fastembed and TEI's ORT backend run embedding models on CPUs).

Each runner returns (load_ms, embed) where embed(texts) gives one unit numpy vector per text.
"""
import hashlib
import time
from pathlib import Path

import numpy as np

BATCH = 32


def _tokenizer(model_dir):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(model_dir) / "tokenizer.json"), pad_token="<|endoftext|>")
    tok.padding_side = "left"
    return tok


def _batched(tok, texts, run_batch):
    """sentence-transformers' order: longest first, batches of 32; results back in input order, normalised."""
    order = sorted(range(len(texts)), key=lambda i: -len(tok(texts[i])["input_ids"]))
    out = [None] * len(texts)
    for s in range(0, len(order), BATCH):
        idx = order[s:s + BATCH]
        last = run_batch(tok([texts[i] for i in idx], padding=True, return_tensors="np"))
        for i, v in zip(idx, last):
            out[i] = v / np.linalg.norm(v)
    return out


def torch_runner(model_dir, threads, dtype="fp32", device="cpu"):
    import torch
    from transformers import AutoModel

    torch.set_num_threads(threads)
    tok = _tokenizer(model_dir)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    t = time.perf_counter()
    model = AutoModel.from_pretrained(model_dir, dtype=torch_dtype).to(device).eval()
    sync()
    load_ms = (time.perf_counter() - t) * 1e3

    @torch.inference_mode()
    def run_batch(batch):
        inputs = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
        h = model(**inputs).last_hidden_state[:, -1]
        sync()
        return h.float().cpu().numpy()

    return load_ms, lambda texts: _batched(tok, texts, run_batch)


class _LastToken:
    """The encoder with last-token output, as the exported graph computes it."""

    def __new__(cls, model):
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask):
                return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, -1]

        return Wrapped()


def export_onnx(model_dir, cache_dir, quantized):
    """model.onnx (fp32) and, when asked, model_int8.onnx, made once per model under cache_dir."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        p = Path(model_dir) / name
        digest.update(p.name.encode() + str(p.stat().st_size).encode() + str(p.stat().st_mtime_ns).encode())
    out = Path(cache_dir) / digest.hexdigest()[:16]
    fp32, int8 = out / "model.onnx", out / "model_int8.onnx"
    if not fp32.exists():
        import torch
        from transformers import AutoModel

        out.mkdir(parents=True, exist_ok=True)
        model = AutoModel.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
        ids = torch.ones((2, 8), dtype=torch.long)
        mask = torch.ones((2, 8), dtype=torch.long)
        mask[0, :3] = 0
        tmp = out / "tmp.onnx"
        torch.onnx.export(_LastToken(model), (ids, mask), str(tmp), input_names=["input_ids", "attention_mask"],
                          output_names=["last"], opset_version=17, dynamo=False,
                          dynamic_axes={"input_ids": {0: "batch", 1: "len"}, "attention_mask": {0: "batch", 1: "len"},
                                        "last": {0: "batch"}})
        import onnx

        # One external data file (the exporter may write one per tensor).
        m = onnx.load(str(tmp))
        onnx.save_model(m, str(fp32), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data")
        for f in out.iterdir():
            if f.name not in ("model.onnx", "model.onnx.data"):
                f.unlink()
    if quantized and not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, use_external_data_format=True)
    return int8 if quantized else fp32


def onnx_runner(model_dir, threads, quantized, cache_dir):
    import onnxruntime as ort

    path = export_onnx(model_dir, cache_dir, quantized)
    tok = _tokenizer(model_dir)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t = time.perf_counter()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t) * 1e3

    def run_batch(batch):
        feed = {"input_ids": batch["input_ids"].astype(np.int64),
                "attention_mask": batch["attention_mask"].astype(np.int64)}
        return session.run(["last"], feed)[0].astype(np.float32)

    return load_ms, lambda texts: _batched(tok, texts, run_batch)
