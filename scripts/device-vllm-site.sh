#!/usr/bin/env bash
# Pack vLLM, TRL, Unsloth and bitsandbytes for an offline GPU host whose python3 (3.12) already has
# torch 2.11 (CUDA 13), transformers 5.17, peft, accelerate, numpy, triton and the CUDA libraries,
# into one .tar.xz that travels beside the working tree (both within 64 MiB).
#
#   scripts/device-vllm-site.sh [OUT]      # OUT: .device/vllm.tar.xz; about 1 min of downloads,
#                                          # then 5-15 min of xz on 2 cores
#   scripts/gpu-check.sh vllm OUT          # on the GPU host: unpacks it into /tmp/vsite, runs the checks
#
# vLLM 0.26.0 is the newest vLLM built for torch 2.11 / CUDA 13 (0.27 and later need a newer torch);
# the image pins vLLM 0.32 / torch 2.13 (pyproject.toml), so what this archive runs is older than the
# image's stack. TRL 1.15 and Unsloth 2026.10.9 are the releases that accept vLLM 0.26 with torch 2.11.
#
# What is left out, and why that is safe (every item was checked against the imports of vllm, trl,
# unsloth and unsloth_zoo):
#   vllm/vllm-rs (41 MB, 11 MB packed)  the Rust HTTP front end of `vllm serve`, started only under
#                                       VLLM_USE_RUST_FRONTEND=1 (vllm/envs.py); LLM(...) never runs it
#   diffusers                           Unsloth lists it, but nothing in unsloth, unsloth_zoo, trl or
#                                       vllm imports it (grep 'import diffusers' finds only torchao tests)
#   bitsandbytes' other libraries       it loads libbitsandbytes_cuda<torch's CUDA>.so (cuda130 here)
#                                       and falls back to the CPU one; CUDA 11/12, ROCm and XPU builds go
#   vllm's FA2, MoE and DeepGEMM parts  the H200 runs FlashAttention 3; a dense model needs no MoE
#   and non-sm_90 kernels               kernels; the fatbins' other architectures are zeroed (below)
#   Unsloth's studio / CLI, translations, headers, sources, bytecode
set -euo pipefail
out=$(realpath -m "${1:-.device/vllm.tar.xz}")
limit=$((64 * 2**20))  # what one device call may carry: the working tree and this archive together
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PIP_CONSTRAINT=  # a configured constraints file may cap torch; no torch is downloaded here
plat=(--only-binary=:all: --python-version 3.12 --implementation cp)
for p in manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 \
  manylinux2014 manylinux_2_5 manylinux1; do
  plat+=(--platform "${p}_x86_64")
done
plat+=(--platform any)
# Exact pins, no dependency resolution (the host's own packages must stay): vLLM 0.26.0's runtime
# needs that the host lacks, TRL, Unsloth and theirs, bitsandbytes, and this project's own reward
# parser (math-verify) with its parsers.
cat >"$work/req.txt" <<'REQ'
vllm==0.26.0
blake3==1.0.9
cachetools==7.1.7
cbor2==6.1.4
compressed-tensors==0.17.0
depyf==0.20.0
astor==0.8.1
dill==0.4.0
ijson==3.5.1
lark==1.2.2
llguidance==1.7.6
lm-format-enforcer==0.11.3
interegular==0.3.3
outlines-core==0.2.14
xgrammar==0.2.9
apache-tvm-ffi==0.1.15.post2
pycountry==26.2.16
mistral-common==1.12.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
referencing==0.37.0
rpds-py==2026.6.3
pydantic-extra-types==2.11.1
msgspec==0.21.1
pyzmq==27.2.0
partial-json-parser==0.2.1.1.post7
pybase64==1.5.0
python-json-logger==3.3.0
setproctitle==1.3.7
watchfiles==1.2.0
openai==3.2.0
jiter==0.16.0
distro==1.9.0
sniffio==1.3.1
anthropic==1.8.0
docstring-parser==0.18.0
openai-harmony==0.0.8
pydantic==2.13.4
pydantic-core==2.46.4
annotated-types==0.8.0
typing-inspection==0.4.3
fastapi==0.136.3
starlette==1.6.0
fastapi-cli==0.0.32
rich-toolkit==0.20.5
uvicorn==0.52.1
httptools==0.8.0
websockets==17.0.1
python-dotenv==1.2.2
python-multipart==0.0.32
email-validator==2.3.0
dnspython==2.8.0
pydantic-settings==2.15.0
prometheus-fastapi-instrumentator==8.1.0
model-hosting-container-standards==0.1.16
jmespath==1.1.0
supervisor==4.3.0
mcp==1.29.0
httpx-sse==0.4.3
sse-starlette==3.4.8
pyjwt==2.15.1
httpx2==2.12.0
httpcore2==2.12.0
truststore==0.10.4
agent-detector==2.0.0
detect-installer==0.2.1
cffi==2.1.1
pycparser==3.0
loguru==0.7.3
opentelemetry-api==1.44.0
opentelemetry-sdk==1.44.0
opentelemetry-proto==1.44.0
opentelemetry-exporter-otlp==1.44.0
opentelemetry-exporter-otlp-proto-common==1.44.0
opentelemetry-exporter-otlp-proto-grpc==1.44.0
opentelemetry-exporter-otlp-proto-http==1.44.0
opentelemetry-semantic-conventions==0.65b0
opentelemetry-semantic-conventions-ai==0.5.1
googleapis-common-protos==1.75.3
unsloth==2026.10.9
unsloth_zoo==2026.10.9
trl==1.15.0
datasets==4.8.5
multiprocess==0.70.19
torchao==0.17.0
cut_cross_entropy==25.1.1
tyro==1.0.17
typeguard==4.6.1
json5==0.17.3
nest-asyncio==1.6.0
structlog==26.1.0
importlib-metadata==10.2.0
lazy-importer==0.1.0
bitsandbytes==0.50.2
math-verify==0.9.0
latex2sympy2_extended==1.11.0
antlr4-python3-runtime==4.13.2
REQ
pip download -q --no-deps "${plat[@]}" -d "$work/whl" -r "$work/req.txt" 2>&1 | { grep -v "is ignored" || true; }
pip install -q --no-deps --no-compile --no-index "${plat[@]}" --target "$work/site" "$work"/whl/*.whl 2>&1 \
  | { grep -v "as the 'root' user" || true; }
cd "$work/site"
rm -rf bin studio unsloth_cli mistral_common/data pycountry/locales \
  tvm_ffi/3rdparty tvm_ffi/src tvm_ffi/include tvm_ffi/cython \
  vllm/vllm-rs vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/_moe_C_stable_libtorch.abi3.so \
  vllm/third_party/deep_gemm/include vllm/third_party/fmha_sm100/cutlass
find vllm/third_party/deep_gemm -name '_C.cpython-3*' ! -name '*cpython-312*' -delete
find bitsandbytes -maxdepth 1 -name 'libbitsandbytes_*.so' ! -name '*_cuda130.so' ! -name '*_cpu.so' -delete
mkdir -p pycountry/locales  # pycountry opens this folder for translations; empty is enough
find . -name __pycache__ -prune -exec rm -rf {} +
# vLLM's own ops: keep the sm_90 machine code (H100 / H200) and drop, in each fatbin, the other
# architectures' code and the PTX beside an sm_90 build (zeroed in place, so offsets stay valid).
python3 - vllm/_C_stable_libtorch.abi3.so <<'PY'
import struct
import subprocess
import sys

path = sys.argv[1]
for line in subprocess.check_output(["readelf", "-SW", path], text=True).splitlines():
    if ".nv_fatbin" in line:
        fields = line.split("]")[1].split()
        start, size = int(fields[3], 16), int(fields[4], 16)
buf = bytearray(open(path, "rb").read())
pos, zeroed = start, 0
while pos + 16 <= start + size:
    magic, _, header, body = struct.unpack_from("<IHHQ", buf, pos)
    if magic != 0xBA55ED50:  # fatbin containers are 8-byte aligned
        pos += 8
        continue
    entries, q, end = [], pos + header, pos + header + body
    while q < end:
        kind, _, entry_header, entry_size = struct.unpack_from("<HHIQ", buf, q)
        arch = struct.unpack_from("<I", buf, q + 28)[0]
        entries.append((kind, arch, q + entry_header, entry_size))  # kind 1: PTX, 2: SASS
        q += entry_header + entry_size
    has_sm90 = any(kind == 2 and arch == 90 for kind, arch, _, _ in entries)
    for kind, arch, at, n in entries:
        if (kind == 2 and arch != 90) or (kind == 1 and has_sm90):
            buf[at : at + n] = bytes(n)
            zeroed += n
    pos = end
open(path, "wb").write(buf)
print(f"zeroed {zeroed / 2**20:.1f} MiB of non-sm_90 code in {path}")
PY
for need in vllm/_C_stable_libtorch.abi3.so vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so \
  bitsandbytes/libbitsandbytes_cuda130.so bitsandbytes/libbitsandbytes_cpu.so trl unsloth unsloth_zoo math_verify; do
  [ -e "$need" ] || { echo "error: $need is missing from the packed site" >&2; exit 1; }
done
mkdir -p "$(dirname "$out")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - . | xz -T0 -9 >"$out.part"
mv "$out.part" "$out"
cd - >/dev/null
size=$(stat -c %s "$out")
tree=0
if git rev-parse --git-dir >/dev/null 2>&1; then
  tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
fi
echo "wrote $out: $((size / 2**10)) KiB; with the tracked tree ($((tree / 2**10)) KiB): $(((size + tree) / 2**10)) KiB of the $((limit / 2**10)) KiB a call carries"
if [ $((size + tree)) -gt "$limit" ]; then
  echo "error: the archive and the working tree exceed what one call carries" >&2
  exit 1
fi
