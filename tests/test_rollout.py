"""The fast rollout engine (trainer.rollout) against transformers' own generate.

CPU: the tiny model in float32 with a LoRA adapter whose B factors are non-zero (PEFT starts them
at zero, which would hide the LoRA path): identical greedy tokens, log-probabilities to float32
rounding, EOS handling, and the sampling filters equal to HF's warpers. GPU (marked `gpu`, skipped
without CUDA): the same with CUDA graphs and torch.compile, plus bf16 log-probabilities against a
full forward pass, which is what the GRPO loss recomputes.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import torch

from trainer.rollout import RolloutEngine, Sampling, choose_tokens, filter_logits

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = ["What is 12*7?", "Compute 3+4 and explain the steps", "hi", "The answer to 15 - 9 is"]


def lora_model(path: Path, dtype: torch.dtype, device: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval(), tok


def hf_greedy(model, tok, ids: list[list[int]], new: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' generate, greedy, left-padded: (completion tokens, log-probs of each)."""
    width = max(map(len, ids))
    inp = torch.full((len(ids), width), tok.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        inp[i, width - len(x) :], mask[i, width - len(x) :] = torch.tensor(x), 1
    dev = model.device
    out = model.generate(
        input_ids=inp.to(dev),
        attention_mask=mask.to(dev),
        max_new_tokens=new,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        eos_token_id=eos,
        pad_token_id=tok.pad_token_id,
    )
    seq = out.sequences[:, width:].cpu()
    logps = torch.stack(out.logits, 1).float().log_softmax(-1).cpu().gather(-1, seq[..., None])[..., 0]
    return seq, logps


def check_against_generate(model, tok, new: int, eos: int, **engine_kw) -> None:
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    seq, ref_logps = hf_greedy(model, tok, ids, new, eos)
    engine = RolloutEngine(model, eos_token_ids=[eos], pad_token_id=tok.pad_token_id, **engine_kw)
    for _ in range(2):  # the second call reuses the cache (and graphs)
        out = engine.generate(ids, new, Sampling(do_sample=False))
        for row, (got, logps) in enumerate(zip(out.completion_ids, out.logprobs, strict=True)):
            want = seq[row].tolist()
            if eos in want:  # generate pads after EOS; the engine stops there
                want = want[: want.index(eos) + 1]
            assert got == want, f"row {row}"
            torch.testing.assert_close(torch.tensor(logps), ref_logps[row, : len(got)], atol=1e-4, rtol=0)


def test_greedy_tokens_and_logprobs_equal_generate(tiny_model_dir: Path) -> None:
    torch.manual_seed(0)
    model, tok = lora_model(tiny_model_dir, torch.float32, "cpu")
    check_against_generate(model, tok, 24, tok.eos_token_id)


def test_fused_base_weights_stay_the_models_own(tiny_model_dir: Path) -> None:
    """The engine lays each group (q/k/v, o, gate/up, down) out in one buffer with the group's LoRA
    A factors in its last rows: the model's values, parameters and outputs are unchanged, the A rows
    are the live adapter's, and a second engine reuses the layout instead of making another."""
    model, tok = lora_model(tiny_model_dir, torch.float32, "cpu")
    ids = tok(PROMPTS[0])["input_ids"]
    with torch.no_grad():
        before = model(torch.tensor([ids])).logits
    layer = model.base_model.model.model.layers[1]
    groups = [
        [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj],
        [layer.self_attn.o_proj],
        [layer.mlp.gate_proj, layer.mlp.up_proj],
        [layer.mlp.down_proj],
    ]
    values = [[m.base_layer.weight.clone() for m in g] for g in groups]
    params = {n: p.shape for n, p in model.named_parameters()}
    engine = RolloutEngine(model, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    engine.generate([ids], 4, Sampling(do_sample=False))
    for group, vals in zip(groups, values, strict=True):
        weights = [m.base_layer.weight for m in group]
        for w, v in zip(weights, vals, strict=True):
            assert torch.equal(w, v) and w.is_contiguous()
        for a, b in zip(weights, weights[1:], strict=False):  # consecutive rows of one buffer
            assert b.data_ptr() == a.data_ptr() + a.numel() * a.element_size()
        fused = group[0].base_layer._rollout_fused
        assert fused.data_ptr() == weights[0].data_ptr()
        a_rows = torch.cat([m.lora_A["default"].weight for m in group])
        assert torch.equal(fused[sum(w.shape[0] for w in weights) :], a_rows)
    assert {n: p.shape for n, p in model.named_parameters()} == params
    with torch.no_grad():
        assert torch.equal(model(torch.tensor([ids])).logits, before)
    fused = layer.self_attn.q_proj.base_layer._rollout_fused
    RolloutEngine(model, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id).generate(
        [ids], 4, Sampling(do_sample=False)
    )
    assert layer.self_attn.q_proj.base_layer._rollout_fused is fused
    assert layer.self_attn.q_proj.base_layer.weight.data_ptr() == fused.data_ptr()


def test_quantized_base_weights_are_refused(tiny_model_dir: Path) -> None:
    """Packed 4-bit / 8-bit weights cannot go through F.linear: the engine says so instead of
    sampling garbage (callers then fall back to generate)."""
    from trainer.rollout import unsupported_reason

    model, _ = lora_model(tiny_model_dir, torch.float32, "cpu")
    assert unsupported_reason(model) is None
    base = model.base_model.model.model.layers[0].self_attn.k_proj.base_layer
    base.weight = torch.nn.Parameter(torch.zeros(base.weight.shape, dtype=torch.uint8), requires_grad=False)
    assert "quantized" in unsupported_reason(model)
    with pytest.raises(ValueError, match="quantized"):
        RolloutEngine(model, eos_token_ids=[0], pad_token_id=0)


def test_eos_ends_a_row_like_generate(tiny_model_dir: Path) -> None:
    """Declare a token that greedy decoding emits mid-way the EOS: rows must stop exactly there."""
    model, tok = lora_model(tiny_model_dir, torch.float32, "cpu")
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    seq, _ = hf_greedy(model, tok, ids, 12, tok.eos_token_id)
    eos = int(seq[0, 5])
    check_against_generate(model, tok, 12, eos)


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(temperature=0.7),
        Sampling(top_k=5),
        Sampling(top_p=0.8),
        Sampling(min_p=0.1),
        Sampling(temperature=1.3, top_k=50, top_p=0.9, min_p=0.05),
    ],
    ids=["temperature", "top_k", "top_p", "min_p", "all"],
)
def test_filters_equal_hf_warpers(tiny_model_dir: Path, sampling: Sampling) -> None:
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = GenerationConfig(
        do_sample=True,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        min_p=sampling.min_p,
    )
    warpers = model._get_logits_processor(generation_config=config, device="cpu")
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(1)) * 3
    want = warpers(torch.zeros((6, 1), dtype=torch.long), logits.clone())
    got = filter_logits(logits, sampling)
    assert torch.equal(got.isinf(), want.isinf())
    torch.testing.assert_close(got[~got.isinf()], want[~want.isinf()])


def test_sampler_draws_from_the_filtered_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -6.0]]).expand(40_000, -1)
    sampling = Sampling(min_p=0.05)
    probs = filter_logits(logits[:1], sampling).softmax(-1)[0]
    torch.manual_seed(0)
    token, logp = choose_tokens(logits, sampling, torch.empty_like(logits).exponential_())
    freq = torch.bincount(token, minlength=5).float() / len(token)
    assert freq[4] == 0 and probs[4] == 0  # filtered out by min_p
    torch.testing.assert_close(freq, probs, atol=0.01, rtol=0)
    torch.testing.assert_close(logp, logits.log_softmax(-1).gather(-1, token[:, None])[:, 0])


def test_grpo_trainer_rolls_out_with_the_engine(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tok = lora_model(tiny_model_dir, torch.float32, "cpu")
    trainer = grpo_trainer(model, tok, tmp_path, max_completion_length=8)
    assert trainer.fast_rollout_reason() is None
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    completions, logps = trainer._generate_single_turn(ids, None, {})
    assert trainer._rollout_engine is not None
    assert len(completions) == 4 and all(0 < len(c) <= 8 for c in completions)
    assert [len(lp) for lp in logps] == [len(c) for c in completions]  # TRL's sampling_per_token_logps


@pytest.mark.parametrize(
    ("args", "engine"),
    [
        ({}, True),
        ({"generation_kwargs": {}}, True),
        ({"repetition_penalty": 1.2}, False),  # the engine has no repetition penalty
        ({"generation_kwargs": {"typical_p": 0.5}}, False),  # nor any other transformers field
    ],
)
def test_sampling_the_engine_lacks_sends_rollouts_to_trl(
    tiny_model_dir: Path, tmp_path: Path, args: dict, engine: bool, caplog
) -> None:
    model, tok = lora_model(tiny_model_dir, torch.float32, "cpu")
    trainer = grpo_trainer(model, tok, tmp_path, max_completion_length=8, **args)
    assert (trainer.fast_rollout_reason() is None) == engine
    completions, _ = trainer._generate_single_turn([tok(p)["input_ids"] for p in PROMPTS], None, {})
    assert len(completions) == 4 and (trainer._rollout_engine is not None) == engine
    assert (
        "fast rollouts off, TRL generates: repetition_penalty or generation_kwargs are set" in caplog.text
    ) != engine


@pytest.mark.slow
def test_trl_rollouts_leave_out_the_models_own_generation_fields(
    volume: Path, tiny_model_dir: Path, sft_volume: Path, tmp_path: Path
) -> None:
    """TRL's generate (grpo.rollout_engine trl) fills unset fields from the model's generation_config,
    as eval's does: here stop strings, which transformers' generate refuses without a tokenizer."""
    import json
    import shutil

    from trainer.cli import main

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = json.loads((model_dir / "generation_config.json").read_text())
    (model_dir / "generation_config.json").write_text(json.dumps({**config, "stop_strings": ["a"]}))
    sets = [
        f"model.name={model_dir}",
        f"grpo.start_from={sft_volume / 'tiny/sft/adapter'}",
        "grpo.rollout_engine=trl",
        "grpo.max_steps=1",
        "grpo.per_device_train_batch_size=4",
        "grpo.max_completion_length=8",
        "report_to=[]",
    ]
    assert main(["grpo", "--config", "configs/tiny.yaml", *[a for s in sets for a in ("--set", s)]]) == 0
    assert json.loads((volume / "tiny/grpo/run.json").read_text())["global_step"] == 1


def grpo_trainer(model, tok, tmp_path: Path, **args):
    import datasets
    from trl import GRPOConfig

    from trainer.rollout.fast_grpo import FastGRPOTrainer

    gen = torch.Generator().manual_seed(0)

    def random_reward(completions, **kw):  # spread, so that advantages (and the update) are non-zero
        return torch.randn(len(completions), generator=gen).tolist()

    config = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=12,
        report_to="none",
        use_cpu=True,
        logging_steps=1,
        save_strategy="no",
        seed=0,
    )
    config.update(args)
    return FastGRPOTrainer(
        model=model,
        reward_funcs=random_reward,
        args=GRPOConfig(**config),
        train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in PROMPTS]),
        processing_class=tok,
    )


def test_loss_logprobs_are_chunked_and_equal_the_full_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The loss takes TRL's chunked LM-head path (no [tokens, vocabulary] logits held), and its
    log-probs and entropies equal the full-logits path's."""
    model, tok = lora_model(tiny_model_dir, torch.float32, "cpu")
    trainer = grpo_trainer(model, tok, tmp_path, temperature=0.7, bf16=False)  # float32: compare to rounding
    assert trainer.use_liger_kernel  # set by FastGRPOTrainer: liger-kernel is not installed here
    ids = torch.tensor([tok("The answer to 15 - 9 is 6 because")["input_ids"]] * 2)
    mask = torch.ones_like(ids)
    chunked, ent, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, 5, compute_entropy=True)
    full, full_ent, _ = trainer._full_logits_logps(model, ids, mask, 5, compute_entropy=True)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, full_ent, atol=1e-5, rtol=0)


@pytest.mark.parametrize("engine_sees_updates", [True, False], ids=["live-adapter", "stale-adapter"])
def test_sampling_gap_shows_whether_rollouts_follow_the_policy(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, engine_sees_updates: bool
) -> None:
    """Each step logs |engine log-prob - loss log-prob|: rounding while the rollouts sample the adapter
    being trained, the size of the update when they do not (here: the engine's adapter copy is never
    refreshed after the first rollout, as a peer's release once shipped)."""
    from trainer.rollout import layout

    if not engine_sees_updates:
        first = layout._Adapters.refresh

        def refresh_once(self) -> None:
            if not getattr(self, "_refreshed", False):
                first(self)
                self._refreshed = True

        monkeypatch.setattr(layout._Adapters, "refresh", refresh_once)
    model, tok = lora_model(tiny_model_dir, torch.float32, "cpu")
    trainer = grpo_trainer(
        model, tok, tmp_path, learning_rate=5e-2, max_steps=3, lr_scheduler_type="constant", bf16=False
    )
    trainer.train()
    gaps = [h["sampling/sampling_logp_difference/mean"] for h in trainer.state.log_history if "loss" in h]
    assert len(gaps) == 3 and gaps[0] < 1e-4  # the first rollout samples the initial adapter either way
    if engine_sees_updates:
        assert max(gaps) < 1e-4, gaps
    else:
        assert min(gaps[1:]) > 1e-2, gaps


def test_lean_lora_equals_peft_under_autocast(tiny_model_dir: Path) -> None:
    """The training step's lean LoRA forward: the same outputs and adapter gradients as PEFT's."""
    from trainer.rollout.fast_grpo import lean_lora

    model, tok = lora_model(tiny_model_dir, torch.float32, "cpu")
    ids = torch.tensor([tok("What is 12*7? Compute 3+4 and explain the steps")["input_ids"]])

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits.float()
        logits.logsumexp(-1).mean().backward()
        return logits.detach(), [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]

    want_logits, want_grads = run()
    with lean_lora(model):
        assert all("forward" in vars(m) for m in model.modules() if type(m).__name__ == "Linear" and hasattr(m, "r"))
        got_logits, got_grads = run()
    assert not any("forward" in vars(m) for m in model.modules())  # restored
    torch.testing.assert_close(got_logits, want_logits, atol=0.05, rtol=0.02)
    for got, want in zip(got_grads, want_grads, strict=True):
        assert (got - want).norm() <= 0.03 * want.norm()


def test_compiled_glue_equals_eager_training(tiny_model_dir: Path) -> None:
    """The training step's compiled norms / SwiGLU / rotary (here through torch.compile's aot_eager
    backend, which traces forward and backward like inductor but needs no C++ compiler): the same
    logits and LoRA gradients as eager, with gradient checkpointing on; everything restored after."""
    import transformers.models.qwen3.modeling_qwen3 as qwen3

    from trainer.rollout.fast_grpo import compiled_glue

    model, tok = lora_model(tiny_model_dir, torch.float32, "cpu")
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    rotary = qwen3.apply_rotary_pos_emb
    runs = []
    for compiled in (False, True, True):  # the last run: another length, through the same compiled functions
        ids = tok(PROMPTS[1] if len(runs) < 2 else PROMPTS[0] + PROMPTS[1])["input_ids"]
        model.zero_grad()
        with compiled_glue(model, backend="aot_eager") if compiled else contextlib.nullcontext():
            if compiled:
                assert qwen3.apply_rotary_pos_emb is not rotary
                assert "forward" in vars(model.base_model.model.model.norm)
            logits = model(input_ids=torch.tensor([ids])).logits
            logits.logsumexp(-1).mean().backward()
        runs.append((logits.detach(), [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]))
    assert qwen3.apply_rotary_pos_emb is rotary and not any("forward" in vars(m) for m in model.modules())
    (want, want_grads), (got, got_grads) = runs[0], runs[1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)
    assert all(g.abs().sum() > 0 for g in got_grads[1::2])  # B factors got gradients through the glue


# ---------------------------------------------------------------------------------------------
# GPU: CUDA graphs and torch.compile


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kernels", [True, False], ids=["triton-kernels", "compiled-glue"])
def test_gpu_graphs_greedy_equal_generate(tiny_model_dir: Path, kernels: bool) -> None:
    model, tok = lora_model(tiny_model_dir, torch.float32, "cuda")
    check_against_generate(model, tok, 40, tok.eos_token_id, cuda_graphs=True, compile=True, kernels=kernels)


@pytest.mark.gpu
@gpu
def test_gpu_graphs_where_a_bucket_first_appears_at_the_last_token(tiny_model_dir: Path) -> None:
    """PROMPTS pad to 32 slots (17 tokens at most), so with 98 new tokens the last decode step is the
    first in the cache bucket 129-256: no graph is captured for it (its two warm-up steps would write
    one column past the output), and the tokens still equal generate's."""
    model, tok = lora_model(tiny_model_dir, torch.float32, "cuda")
    check_against_generate(model, tok, 98, tok.eos_token_id, cuda_graphs=True, compile=True, kernels=False)


@pytest.mark.gpu
@gpu
def test_gpu_bf16_logprobs_match_a_full_forward(tiny_model_dir: Path) -> None:
    """Sampled rollouts in bf16: each token's log-prob from the graph equals what a full forward
    pass over prompt + completion (the GRPO loss's recomputation) gives, to bf16 rounding."""
    model, tok = lora_model(tiny_model_dir, torch.bfloat16, "cuda")
    ids = [tok(p)["input_ids"] for p in PROMPTS]
    engine = RolloutEngine(model, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    out = engine.generate(ids, 64, Sampling(temperature=1.0, min_p=0.1))
    assert engine.graphs, "the decode step ran without CUDA graphs"
    worst = 0.0
    for prompt, comp, logps in zip(ids, out.completion_ids, out.logprobs, strict=True):
        full = torch.tensor([prompt + comp], device="cuda")
        with torch.no_grad():
            logits = model(input_ids=full).logits[0, len(prompt) - 1 : -1].float()
        ref = logits.log_softmax(-1).gather(-1, full[0, len(prompt) :, None])[:, 0].cpu()
        worst = max(worst, (torch.tensor(logps) - ref).abs().max().item())
    assert worst < 0.1, worst


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(("temperature", "min_p"), [(1.0, 0.05), (0.7, None)])
def test_gpu_kernel_sampler_draws_from_the_filtered_distribution(temperature: float, min_p: float | None) -> None:
    """decode_kernels.sample (the Triton sampler the decode graph uses): token frequencies equal
    the filtered distribution across vocabulary chunks, and each log-prob is the unfiltered one."""
    from trainer.rollout import decode_kernels

    vocab, rows, idx = 10_000, 40_000, [3, 4100, 4101, 8200, 9999]  # tokens in three of the sampler's chunks
    row = torch.full((vocab,), -30.0)
    row[idx] = torch.tensor([2.0, 1.0, 0.5, -1.0, -6.0])
    logits = row.to(torch.bfloat16).cuda().expand(rows, -1).contiguous()
    seed, step = torch.tensor([1234], device="cuda"), torch.tensor([7], device="cuda")
    token, logp = decode_kernels.sample(logits, temperature, min_p, seed, step)
    probs = filter_logits(logits[:1].float(), Sampling(temperature=temperature, min_p=min_p)).softmax(-1)[0]
    freq = torch.bincount(token, minlength=vocab).float() / rows
    torch.testing.assert_close(freq.cpu(), probs.cpu(), atol=0.01, rtol=0)
    want = (logits.float() / temperature).log_softmax(-1).gather(-1, token[:, None])[:, 0]
    torch.testing.assert_close(logp, want, atol=1e-5, rtol=0)
    again, _ = decode_kernels.sample(logits, temperature, min_p, seed, step + 1)
    assert (again != token).float().mean() > 0.2  # the next step draws fresh noise


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("kernels", [True, False], ids=["triton-kernels", "compiled-glue"])
def test_gpu_engine_runs_every_shape(tiny_model_dir: Path, kernels: bool) -> None:
    """Rows {1, 4, 8, 32, 64} x cache slots {128 ... 4096}, rows ending by the length limit (an EOS
    id never sampled) and by EOS (ids the model does sample, so rows end at different steps), one
    engine each: the cache grows between rollouts (new state, graphs captured again, which once
    crashed the caching allocator at the reference recipe's shape), every shape is captured (no
    fallback) and every rollout returns complete, finite output."""
    model, tok = lora_model(tiny_model_dir, torch.bfloat16, "cuda")
    vocab = model.get_output_embeddings().weight.shape[0]
    shapes = [(rows, new) for rows in (1, 4, 8, 32, 64) for new in (40, 200, 1000, 4000)]
    sampling = Sampling(temperature=1.0, min_p=0.1)

    def run(eos: list[int]) -> list[list[list[int]]]:
        engine = RolloutEngine(model, eos_token_ids=eos, pad_token_id=tok.pad_token_id, kernels=kernels)
        outs = []
        for rows, new in shapes:
            ids = [tok(PROMPTS[i % len(PROMPTS)])["input_ids"] for i in range(rows)]
            out = engine.generate(ids, new, sampling)
            lengths = [len(c) for c in out.completion_ids]
            assert len(lengths) == rows and all(0 < n <= new for n in lengths), (rows, new)
            assert all(c[-1] in eos or len(c) == new for c in out.completion_ids), (rows, new)
            assert all(math.isfinite(x) and x <= 0 for lp in out.logprobs for x in lp), (rows, new)
            outs.append(out.completion_ids)
        assert engine.graphs and all(g is not None for g in engine.graphs.values()), "a capture fell back"
        return outs

    to_limit = run([vocab + 1])
    assert all(len(c) == new for (_, new), out in zip(shapes, to_limit, strict=True) for c in out)
    # EOS: the tokens sampled late in rows of the first pass, so the second pass's rows end early.
    late = sorted({t for out in to_limit for c in out for t in c[len(c) // 2 :]} - {tok.pad_token_id})
    by_eos = run(late[: max(1, len(late) // 2)])
    ended_early = [sum(len(c) < new for c in out) / len(out) for (_, new), out in zip(shapes, by_eos, strict=True)]
    assert sum(ended_early) / len(ended_early) > 0.5, ended_early


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_8bit"])
def test_gpu_grpo_steps_with_each_optimizer(tiny_model_dir: Path, tmp_path: Path, optim: str) -> None:
    """Three FastGRPOTrainer steps on the GPU in bf16 with each optimizer the recipes use, prompts of
    different lengths per step (the cache is re-laid out): on-policy gap stays at bf16 rounding."""
    model, tok = lora_model(tiny_model_dir, torch.bfloat16, "cuda")
    model.train()
    trainer = grpo_trainer(
        model, tok, tmp_path, use_cpu=False, optim=optim, max_steps=3, max_completion_length=300, learning_rate=1e-3
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3 and all(math.isfinite(h["loss"]) for h in logs)
    assert max(h["sampling/sampling_logp_difference/mean"] for h in logs) < 0.05, logs
    assert trainer._rollout_engine is not None and trainer._rollout_engine.graphs


def test_tile_choices_are_kept_across_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tile search runs once per machine: its choice lands in the tuning file, and a fresh process
    (here: the in-process memo cleared) reads it back instead of timing again."""
    from trainer.rollout import decode_kernels

    monkeypatch.setenv("TRAINER_TUNING_FILE", str(tmp_path / "tiles.json"))
    calls = []

    def search(m: int, n: int, dtype: torch.dtype) -> tuple[int, ...] | None:
        calls.append((m, n))
        return (m * 16, 3) if m < 64 else None  # None: "cuBLAS is as fast", kept too

    tuned = decode_kernels._tuned(search)
    assert tuned(32, 4096, torch.bfloat16) == (512, 3) and tuned(64, 8, torch.bfloat16) is None
    tuned.cache_clear()  # a new process
    assert tuned(32, 4096, torch.bfloat16) == (512, 3) and tuned(64, 8, torch.bfloat16) is None
    assert calls == [(32, 4096), (64, 8)]
    assert tuned(16, 4096, torch.bfloat16) == (256, 3) and len(calls) == 3  # a new shape is timed


# A process of a several-GPU run: tunes 30 shapes of its own (10 ms a search), starting when told to.
_TUNING_PROCESS = """
import pathlib, sys, time
from trainer.rollout import decode_kernels
rank, ready, go = int(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
def search(m):
    time.sleep(0.01)
    return (m,)
tuned = decode_kernels._tuned(search)
ready.touch()
while not go.exists():
    time.sleep(0.01)
for m in range(30):
    tuned(rank * 100 + m)
"""


def test_processes_tuning_at_once_keep_each_others_tile_choices(tmp_path: Path) -> None:
    """Two processes (the ranks of a 2-GPU run) write the tuning file at the same time: every
    choice of both is in it afterwards, none lost to the other's rewrite."""
    import json
    import os
    import subprocess
    import sys
    import time

    tiles = tmp_path / "tiles.json"
    env = {**os.environ, "TRAINER_TUNING_FILE": str(tiles), "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{rank}" for rank in (0, 1)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _TUNING_PROCESS, str(rank), str(ready[rank]), str(go)], env=env)
        for rank in (0, 1)
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    shapes = sorted(int(json.loads(key)[2][0]) for key in json.loads(tiles.read_text()))
    assert shapes == [*range(30), *range(100, 130)]


class _TwoLayers(torch.nn.Module):
    """A Linear with a bias and a GPT-2 style Conv1D (weight stored [in, out]), both square, so that a
    transposed weight runs without a shape error and only its values can tell."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.lin = torch.nn.Linear(16, 16, bias=True)
        self.conv = Conv1D(16, 16)
        torch.nn.init.normal_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.lin(x)))


def _autograd_nodes(t: torch.Tensor) -> set[str]:
    """The names of the autograd nodes `t` was computed through."""
    names, seen, stack = set(), set(), [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            names.add(type(node).__name__)
            stack.extend(n for n, _ in node.next_functions)
    return names


# (LoRA target, adapter settings, whether the lean sum is exact there and so taken)
LEAN_OR_NOT = [
    ("lin", {}, True),  # a frozen base bias: the lean sum adds it, exactly
    ("lin", {"bias": "lora_only"}, False),  # a trainable base bias: the lean sum has no gradient for it
    ("lin", {"bias": "all"}, False),
    ("conv", {"fan_in_fan_out": True}, False),  # Conv1D stores its weight transposed
    ("conv", {"bias": "all", "fan_in_fan_out": True}, False),
    ("lin", {"use_dora": True}, False),
    ("lin", {"lora_bias": True}, False),  # a bias on B: not in the lean sum
]


@pytest.mark.parametrize(("target", "settings", "lean"), LEAN_OR_NOT, ids=lambda v: str(v))
def test_lean_lora_only_where_it_is_exact(target: str, settings: dict, lean: bool) -> None:
    """Where the lean sum is exact it is taken (its own autograd node) and agrees with PEFT to bf16
    rounding; elsewhere PEFT's forward runs: the same outputs and gradients (a base bias's included)."""
    import peft

    from trainer.rollout.fast_grpo import lean_lora

    torch.manual_seed(0)
    model = peft.get_peft_model(_TwoLayers(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=[target], **settings))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # B starts at zero: make the adapter's term count
    x = torch.randn(3, 5, 16)

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor], set[str]]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x).float()
        y.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return y.detach(), grads, _autograd_nodes(y)

    want_y, want_grads, _ = run()
    with lean_lora(model):
        got_y, got_grads, nodes = run()
    assert ("_LoraLinearBackward" in nodes) == lean
    assert got_grads.keys() == want_grads.keys()
    tolerance = {"atol": 0.05, "rtol": 0.02} if lean else {}
    torch.testing.assert_close(got_y, want_y, **tolerance)
    for name, want in want_grads.items():
        torch.testing.assert_close(got_grads[name], want, msg=name, **tolerance)
