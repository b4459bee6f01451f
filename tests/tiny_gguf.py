"""A tiny qwen2 GGUF written here with the gguf package (no download), laid out as llama.cpp's
converter writes an instruct model: the tokenizer in the metadata with `<|im_end|>` as EOS, and the
tied embedding stored twice, `token_embd` at F16 and `output` at F32."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPECIALS = ["<|im_start|>", "<|im_end|>"]
SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def write_tiny_gguf(path: Path, seed: int = 0) -> Any:
    """Write the GGUF at `path`; returns the HF Qwen2ForCausalLM (tied, float32) it holds."""
    import gguf
    import numpy as np
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer.tiny import build_tokenizer

    bpe = json.loads(build_tokenizer().backend_tokenizer.to_str())["model"]
    vocab = sorted(bpe["vocab"], key=bpe["vocab"].get)
    tokens = vocab + SPECIALS
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=len(tokens), **SHAPE, max_position_embeddings=512, tie_word_embeddings=True)
    ).eval()
    torch.nn.init.normal_(model.get_input_embeddings().weight, std=0.1)
    for name, p in model.named_parameters():  # qwen2's q/k/v biases start at zero: make them count
        if name.endswith(".bias"):
            torch.nn.init.normal_(p, std=0.1)

    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name("tiny qwen2 instruct")
    w.add_block_count(SHAPE["num_hidden_layers"])
    w.add_context_length(512)
    w.add_embedding_length(SHAPE["hidden_size"])
    w.add_feed_forward_length(SHAPE["intermediate_size"])
    w.add_head_count(SHAPE["num_attention_heads"])
    w.add_head_count_kv(SHAPE["num_key_value_heads"])
    w.add_rope_freq_base(model.config.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(model.config.rms_norm_eps)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t.startswith("<|") else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, SHAPE["num_hidden_layers"])
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # written below as `output`, apart from the embedding
        stem, suffix = name.rsplit(".", 1)
        data = tensor.numpy()
        if stem == "model.embed_tokens":
            data = data.astype(np.float16)  # the coarser copy: the tie must keep `output`
        w.add_tensor(f"{names.get_name(stem)}.{suffix}", data)
    w.add_tensor("output.weight", model.lm_head.weight.detach().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model
