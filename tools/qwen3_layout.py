"""The tensors of a Qwen3 embedding checkpoint (Hugging Face names without the `model.` prefix) and their shapes, for
the tools that write checkpoints without torch: make_random_model.py and make_sparse_model.py."""
import json
import struct


def shapes(config):
    h, hd, inter = config["hidden_size"], config["head_dim"], config["intermediate_size"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    out = {"embed_tokens.weight": [config["vocab_size"], h], "norm.weight": [h]}
    for i in range(config["num_hidden_layers"]):
        p = f"layers.{i}"
        out |= {
            f"{p}.input_layernorm.weight": [h], f"{p}.post_attention_layernorm.weight": [h],
            f"{p}.self_attn.q_proj.weight": [q, h], f"{p}.self_attn.k_proj.weight": [kv, h],
            f"{p}.self_attn.v_proj.weight": [kv, h], f"{p}.self_attn.o_proj.weight": [h, q],
            f"{p}.self_attn.q_norm.weight": [hd], f"{p}.self_attn.k_norm.weight": [hd],
            f"{p}.mlp.gate_proj.weight": [inter, h], f"{p}.mlp.up_proj.weight": [inter, h],
            f"{p}.mlp.down_proj.weight": [h, inter],
        }
    return out


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def header(shapes_by_name):
    """The safetensors header (bf16 tensors, in order) and the data's total size in bytes."""
    entries, offset = {}, 0
    for name, shape in shapes_by_name.items():
        size = 2 * numel(shape)
        entries[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(entries).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob, offset
