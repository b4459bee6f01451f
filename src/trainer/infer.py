"""Answer one problem with the trained adapter.

python -m trainer infer --config configs/qwen3-4b.yaml --prompt "What is 12*7?"
"""

from __future__ import annotations

import logging

from trainer import backend
from trainer.config import RunConfig
from trainer.errors import UserError
from trainer.format import REASONING_START, prompt_messages
from trainer.generation import generate
from trainer.volume import find_adapter, stage_dir

log = logging.getLogger(__name__)


def main(cfg: RunConfig) -> str:
    from trainer.answers import extract_solution

    i = cfg.infer
    adapters = {}
    if i.adapter != "none":
        path = find_adapter(cfg, i.adapter)
        if path is None:
            raise UserError(
                f"no {i.adapter} adapter found under {stage_dir(cfg, 'sft').parent}; train one first "
                "(make sft / make grpo), or pass --set infer.adapter=none to ask the base model."
            )
        adapters["adapter"] = path
        log.info("using the adapter %s", path)
    model, tokenizer = backend.inference_model(cfg, adapters)
    [[completion]] = generate(
        model,
        tokenizer,
        [prompt_messages(i.prompt)],
        max_new_tokens=i.max_new_tokens,
        temperature=i.temperature,
        top_k=i.top_k,
        batch_size=1,
        desc="generating",
    )
    text = REASONING_START + completion.text
    print(f"question: {i.prompt}\n")
    print(text)
    print(f"\nanswer: {extract_solution(completion.text)}")
    return text
