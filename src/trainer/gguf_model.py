"""GGUF files as base models: loaded through transformers' own GGUF loader, dequantized to the
recipe's dtype, with the three things transformers 5.17 gets wrong for instruct GGUFs put right.

- Its converted tokenizer ends turns with another token (`<|endoftext|>` for Qwen2.5,
  `<|im_start|>` for SmolLM2) than the file's own `tokenizer.ggml.eos_token_id` (`<|im_end|>` for
  both), so an instruct model would not stop where it was trained to. The file's EOS is restored.
- llama.cpp may write a tied embedding twice (`token_embd` and `output`, at two quantization levels),
  and transformers loads them untied: Qwen2.5-0.5B grows from 494M to 630M parameters, and a saved or
  merged model carries both copies. Two copies that agree up to quantization noise are tied again,
  keeping the finer-quantized one.
- The GGUF quantizer stays attached to a dequantized model, and `save_pretrained` refuses it. It
  is removed: the model is an ordinary dense one.

`convert` writes an HF folder (safetensors + tokenizer) from a GGUF, for the backends and engines
that load only HF folders (Unsloth, vLLM).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import UserError

log = logging.getLogger(__name__)

# Relative Frobenius distance between the two copies of a tied embedding, from quantization alone:
# 0.045 for Qwen2.5-Coder-0.5B-Instruct's Q5_0 / Q8_0 pair. Untied matrices are unrelated (about 1.4).
TIE_TOLERANCE = 0.25


@dataclass(frozen=True)
class GGUFInfo:
    """What the checks and fixes need from a GGUF's header.

    `embedding_types` maps 'token_embd' / 'output' to the name of the GGML type of that tensor
    (absent when the file has no such tensor); `bits` to its bits per weight."""

    path: Path
    architecture: str
    eos_token: str | None
    embedding_types: dict[str, str]
    bits: dict[str, float]


def gguf_path(name: str, gguf_file: str) -> Path:
    """The file `gguf_file` names: a path of its own, or a file name inside the folder `name`."""
    p = Path(gguf_file)
    return p if p.is_absolute() else Path(name) / p


def read_info(path: Path) -> GGUFInfo:
    """Check that `path` is a complete GGUF file and read its header (no tensor data).

    Raises UserError (one line, naming the file) for a missing, foreign, damaged or truncated file."""
    if not path.is_file():
        raise UserError(
            f"GGUF file '{path}' not found; model.gguf_file is a file name inside the folder model.name "
            "(or an absolute path)."
        )
    stat = path.stat()
    # Read once per stage, though the tokenizer and the model both ask (the header of a 151,936-token
    # vocabulary takes seconds to parse).
    return _read_info(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_info(path: Path, size: int, mtime_ns: int) -> GGUFInfo:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise UserError(f"'{path}' is not a GGUF file (it does not start with 'GGUF'); check model.gguf_file.")
    try:
        from gguf import GGML_QUANT_SIZES, GGUFReader
    except ImportError:
        raise UserError("loading a GGUF needs the gguf package: pip install gguf.") from None
    try:
        reader = GGUFReader(path)
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
        if end > size:
            raise ValueError(f"its tensors need {end} bytes, the file has {size}")
        arch = reader.fields["general.architecture"].contents()
        eos = None
        if "tokenizer.ggml.eos_token_id" in reader.fields and "tokenizer.ggml.tokens" in reader.fields:
            eos_id = int(reader.fields["tokenizer.ggml.eos_token_id"].contents())
            tokens = reader.fields["tokenizer.ggml.tokens"]
            eos = tokens.contents(eos_id) if eos_id < len(tokens.data) else None
    except Exception as e:  # the reader raises ValueError, IndexError, KeyError... on a damaged file
        raise UserError(
            f"GGUF file '{path}' is damaged or truncated ({type(e).__name__}: {e}); copy or assemble it again."
        ) from None
    types, bits = {}, {}
    for t in reader.tensors:
        stem = t.name.removesuffix(".weight")
        if stem in ("token_embd", "output"):
            block, nbytes = GGML_QUANT_SIZES[t.tensor_type]
            types[stem], bits[stem] = t.tensor_type.name, nbytes * 8 / block
    return GGUFInfo(path=path, architecture=str(arch), eos_token=eos, embedding_types=types, bits=bits)


def load_tokenizer(info: GGUFInfo) -> Any:
    """The tokenizer stored in the GGUF, with the file's own EOS token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(info.path.parent), gguf_file=info.path.name)
    if info.eos_token is not None and tok.eos_token != info.eos_token:
        log.info("GGUF tokenizer: EOS %r -> %r (the file's tokenizer.ggml.eos_token_id)", tok.eos_token, info.eos_token)
        tok.eos_token = info.eos_token
    return tok


def load_model(info: GGUFInfo, dtype: Any, device_map: Any = None) -> Any:
    """The GGUF's model, every weight dequantized to `dtype`, a plain dense model (savable, trainable)."""
    from transformers import AutoModelForCausalLM, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        str(info.path.parent),
        gguf_file=info.path.name,
        # Dense weights always: on a GPU transformers would otherwise keep them in GGUF blocks, which
        # LoRA training, PEFT merges and save_pretrained do not handle.
        quantization_config=GgufConfig(dequantize=True),
        dtype=dtype,
        device_map=device_map,
    )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for attr in ("quantization_config", "_is_quantized"):
        if attr in vars(model.config):
            delattr(model.config, attr)
    tie_duplicate_embedding(model, info)
    return model


def tie_duplicate_embedding(model: Any, info: GGUFInfo) -> bool:
    """Tie the output layer to the input embedding where the GGUF stored one matrix twice.

    The copy kept is the one with more bits per weight. Returns whether it tied."""
    import torch

    if model.config.tie_word_embeddings or set(info.bits) != {"token_embd", "output"}:
        return False
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or embed.weight.shape != head.weight.shape:
        return False
    kept = "output" if info.bits["output"] > info.bits["token_embd"] else "token_embd"
    with torch.no_grad():
        a, b = embed.weight.float(), head.weight.float()
        distance = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
        if distance > TIE_TOLERANCE:
            return False
        if kept == "output":
            embed.weight.copy_(head.weight)
    head.weight = embed.weight
    model.config.tie_word_embeddings = True
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = True
    log.info(
        "GGUF: output layer tied to the embedding (copies %.3f apart; kept %s, %s)",
        distance,
        kept,
        info.embedding_types[kept],
    )
    return True


LICENSE_NOTE = """\
# {name}

Converted from the GGUF file `{gguf}` (sha256 {sha256}) with `scripts/fetch_gguf_model.py`:
every weight dequantized to {dtype}, the tokenizer's EOS set to the file's own ({eos}), and an
output layer the file stores as a second copy of the embedding tied to it again (where it has one).

{license}
"""


def convert(gguf: Path, out: Path, dtype: Any, license_text: str = "", sha256: str = "") -> Path:
    """Write the GGUF's model as an HF folder at `out`: safetensors in `dtype`, the fixed tokenizer,
    and a README.md with where it came from and `license_text`. Returns `out`."""
    from trainer.volume import write_atomic

    info = read_info(gguf)
    tokenizer = load_tokenizer(info)
    model = load_model(info, dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    note = LICENSE_NOTE.format(
        name=out.name,
        gguf=gguf.name,
        sha256=sha256 or "not recorded",
        dtype=str(dtype).removeprefix("torch."),
        eos=tokenizer.eos_token,
        license=license_text,
    )

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(note)

    write_atomic(out, write)  # a stage never finds a half-written model folder
    n = sum(p.numel() for p in model.parameters())
    log.info("wrote %s: %d parameters in %s, EOS %s", out, n, dtype, tokenizer.eos_token)
    return out
