"""The learning run: does GRPO make a model that SFT taught the format better at arithmetic word problems?

Synthetic one-step word problems ("Mia has 7 apples. She gets 5 more. ..."), three disjoint sets:
SFT rows (problem, worked solution, answer), GRPO prompts, and held-out problems that no stage
trains on. First a small Qwen3 is trained from scratch (all weights, a plain causal-LM loop in this
script) on a fourth set of problems written as plain text ("<question>\n7 + 5 = 12."): the stand-in
for a base model, which knows some arithmetic and nothing of the format. Then the product's own
stages (trainer.cli), as a user runs them: SFT teaches the reasoning format (LoRA), GRPO trains with
the recipe's rewards, and `trainer eval` measures accuracy (pass@1) and format adherence of the base
model, the SFT adapter and the GRPO adapter on the held-out problems.

    python scripts/learning_run.py --quick                       # CPU, minutes: the tiny model, reduced
    python scripts/learning_run.py --out runs/learning           # GPU: hf backend, bfloat16, full size
    python scripts/learning_run.py --model /models/Qwen3-0.6B-Base --out runs/qwen06   # a real small LM (no pretraining)

Writes OUT/data/*.jsonl, OUT/models/base (the pretrained model), OUT/checkpoints/<run>/ (adapters, logs, rewards.png, eval/report.*), and
OUT/summary.md (the before/after table, the reward at the start and end of GRPO, the settings).
Extra `--set key=value` pairs go to every stage, after the script's own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

NAMES = ["Mia", "Noah", "Ava", "Liam", "Zoe", "Omar", "Lena", "Ravi", "Sara", "Tom", "Ines", "Kai"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "coins", "cards", "shells", "stamps", "cookies"]
# (template, operation): {n} a name, {x} the items, {a} {b} the numbers; subtraction keeps a >= b.
TEMPLATES = [
    ("{n} has {a} {x}. {n} gets {b} more. How many {x} does {n} have now?", "+"),
    ("{n} had {a} {x} and found {b} more. How many {x} does {n} have?", "+"),
    ("{n} has {a} {x} and gives {b} of them away. How many {x} are left?", "-"),
    ("There were {a} {x} on the table. {n} took {b}. How many {x} are on the table now?", "-"),
    ("{n} fills {a} bags with {b} {x} each. How many {x} is that in total?", "*"),
    ("There are {a} boxes and each holds {b} {x}. How many {x} are there?", "*"),
]
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}

# Per mode: problem sizes, numbers, and the stages' settings (on top of configs/tiny.yaml).
MODES = {
    "quick": {
        "max_number": 9,
        "rows": {"sft": 1000, "grpo": 1000, "heldout": 200, "pretrain": 3000},
        "pretrain": {"shape": {}, "steps": 1000, "batch": 64, "lr": 3e-3, "stop_at": 0.5},
        "sets": [
            "sft.num_train_epochs=1",  # enough for the format; the arithmetic is left to GRPO
            "sft.per_device_train_batch_size=16",
            "sft.learning_rate=5e-3",
            "sft.logging_steps=25",
            "sft.save_steps=1000",
            "grpo.max_steps=60",
            "grpo.num_generations=8",
            "grpo.per_device_train_batch_size=32",
            "grpo.learning_rate=1e-4",  # 5e-4 cost 12.5 points of held-out accuracy (docs/learning.md)
            "grpo.max_completion_length=48",
            "grpo.save_steps=60",
            "grpo.log_completions=false",
            "eval.num_samples=4",
            "eval.max_new_tokens=48",
            "eval.batch_size=64",
        ],
    },
    "full": {
        "max_number": 20,
        "rows": {"sft": 2000, "grpo": 8000, "heldout": 1000, "pretrain": 20000},
        "pretrain": {
            "shape": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 6, "num_attention_heads": 8},
            "steps": 3000,
            "batch": 128,
            "lr": 2e-3,
            "stop_at": 0.5,
        },
        "sets": [
            "model.dtype=bfloat16",
            "sft.num_train_epochs=1",  # enough for the format; the arithmetic is left to GRPO
            "sft.per_device_train_batch_size=32",
            "sft.learning_rate=3e-3",
            "sft.logging_steps=20",
            "sft.save_steps=500",
            "grpo.max_steps=400",
            "grpo.num_generations=8",
            "grpo.per_device_train_batch_size=128",
            "grpo.learning_rate=3e-4",  # 1e-4: +26.5 points greedy; 3e-4: +36.7 (docs/learning.md)
            "grpo.max_completion_length=64",
            "grpo.save_steps=100",
            "grpo.logging_steps=5",
            "grpo.log_completions=false",
            "grpo.log_completions_steps=50",
            "eval.num_samples=4",
            "eval.max_new_tokens=64",
            "eval.batch_size=256",
        ],
    },
}


def problem(rng: random.Random, max_number: int) -> dict[str, str]:
    template, op = rng.choice(TEMPLATES)
    a, b = rng.randint(0, max_number), rng.randint(0, max_number)
    if op == "-" and b > a:
        a, b = b, a
    answer = str(OPS[op](a, b))
    question = template.format(n=rng.choice(NAMES), x=rng.choice(ITEMS), a=a, b=b)
    return {"question": question, "working": f"{a} {op} {b} = {answer}.", "answer": answer}


def make_data(out: Path, rows: dict[str, int], max_number: int, seed: int) -> dict[str, Path]:
    """Four sets with no question in common: held-out first, then GRPO, SFT and pretraining (each
    skips the questions already taken), written in the column names of the real datasets."""
    rng = random.Random(seed)
    taken: set[str] = set()
    sets: dict[str, list[dict[str, str]]] = {}
    for name in ("heldout", "grpo", "sft", "pretrain"):
        sets[name] = []
        tries = 0
        while len(sets[name]) < rows[name]:
            p = problem(rng, max_number)
            tries += 1
            if tries > 100 * rows[name]:
                raise SystemExit(f"cannot draw {rows[name]} distinct {name} problems; lower the count")
            if p["question"] in taken:
                continue
            taken.add(p["question"])
            sets[name].append(p)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "sft": [
            {"problem": p["question"], "generated_solution": p["working"], "expected_answer": p["answer"]}
            for p in sets["sft"]
        ],
        "grpo": [{"prompt": p["question"], "solution": p["answer"]} for p in sets["grpo"]],
        "heldout": [{"question": p["question"], "answer": p["answer"]} for p in sets["heldout"]],
        "pretrain": [{"text": f"{p['question']}\n{p['working']}", "answer": p["answer"]} for p in sets["pretrain"]],
    }
    paths = {}
    for name, data in files.items():
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in data))
    return paths


def pretrain(dest: Path, data: Path, settings: dict, seed: int) -> Path:
    """Train a small Qwen3 from random weights on the plain-text problems (every weight, next-token
    loss on every token), saved with its tokenizer like a hub base model; skipped if `dest` exists.

    Stopped on purpose once it answers `settings["stop_at"]` of a probe set (greedy), checked every
    100 steps: trained to the end it solves every held-out problem already (measured on the GPU:
    100.0% after SFT), and leaves GRPO nothing to improve."""
    if (dest / "config.json").is_file():
        return dest
    import torch

    from trainer.tiny import build_model, build_tokenizer
    from trainer.volume import write_atomic

    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = build_tokenizer()
    tok.padding_side = "left"  # for the probe's batched generate; the loss masks padding either way
    model = build_model(len(tok), seed, **settings["shape"]).to(device)
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.pad_token_id = tok.eos_token_id, tok.pad_token_id
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    texts = [r["text"] + tok.eos_token for r in rows]
    probe = rows[:256]
    steps, batch, lr = settings["steps"], settings["batch"], settings["lr"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / 50))
    rng = random.Random(seed)
    t0 = time.time()
    for step in range(1, steps + 1):
        model.train()
        enc = tok(rng.sample(texts, batch), return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps:
            acc = _probe_accuracy(model, tok, probe, device)
            print(
                f"pretrain step {step}/{steps} loss {loss.item():.3f} probe accuracy {acc:.1%} ({time.time() - t0:.0f} s)"
            )
            if acc >= settings["stop_at"]:
                break
    tok.padding_side = "right"

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return write_atomic(dest, write)


def _probe_accuracy(model, tok, rows: list[dict], device: str) -> float:
    """Share of `rows` whose greedy continuation of "<question>\n" ends its equation with the answer."""
    import torch

    model.eval()
    prompts = [r["text"].split("\n")[0] + "\n" for r in rows]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        out = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    right = sum(t.split("=")[-1].strip().rstrip(".") == r["answer"] for t, r in zip(texts, rows, strict=True))
    return right / len(rows)


def reward_window(state_file: Path, k: int = 10) -> dict[str, float]:
    """Mean reward and accuracy of the first and last k logged GRPO steps."""
    logged = [e for e in json.loads(state_file.read_text())["log_history"] if "reward" in e]
    if not logged:
        return {}

    def mean(key: str, part: list[dict]) -> float:
        values = [e[key] for e in part if e.get(key) is not None]
        return sum(values) / len(values) if values else float("nan")

    head, tail = logged[:k], logged[-k:]
    return {
        "steps": logged[-1]["step"],
        "reward_first": mean("reward", head),
        "reward_last": mean("reward", tail),
        "accuracy_first": mean("accuracy", head),
        "accuracy_last": mean("accuracy", tail),
        "window": len(head),
    }


def summary(args: argparse.Namespace, run_dir: Path, sets: list[str], seconds: float) -> str:
    from trainer.config import load_config
    from trainer.report import markdown_report
    from trainer.volume import eval_files

    # Where eval wrote for these settings: report-limitN.json when an override set eval.limit.
    report = json.loads(eval_files(load_config("configs/tiny.yaml", sets)).report_json.read_text())
    states = sorted(
        (run_dir / "grpo/checkpoints").glob("checkpoint-*/trainer_state.json"),
        key=lambda p: int(p.parent.name.split("-")[1]),
    )
    curve = reward_window(states[-1]) if states else {}
    by = {r["model"]: r for r in report["results"]}
    lines = [
        f"# Learning run ({args.mode}, model {args.model})",
        "",
        markdown_report(report),
        "",
    ]
    if "sft" in by and "grpo" in by:
        s, g = by["sft"], by["grpo"]
        lines.append(
            f"Held-out accuracy (greedy pass@1) before GRPO {s['pass@1_greedy']:.1%}, after {g['pass@1_greedy']:.1%}; "
            f"format adherence {s['format_adherence']:.1%} -> {g['format_adherence']:.1%}."
        )
    if curve:
        lines.append(
            f"GRPO reward, mean of the first / last {curve['window']} logged steps: "
            f"{curve['reward_first']:.2f} -> {curve['reward_last']:.2f}; training accuracy "
            f"{curve['accuracy_first']:.2f} -> {curve['accuracy_last']:.2f} ({curve['steps']} steps)."
        )
    lines += [
        "",
        f"Reward plot: {run_dir / 'grpo/rewards.png'}",
        f"Wall time: {seconds:.0f} s. Command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}",
        "Settings (on top of configs/tiny.yaml): " + " ".join(sets),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const="quick",
        default="full",
        help="the reduced CPU run (default: the full GPU run)",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/learning-<mode>)")
    p.add_argument(
        "--model",
        default="tiny",
        help="'tiny': a small Qwen3 pretrained here from scratch (see above); else a hub id or local path of a causal LM",
    )
    p.add_argument("--run-name", default="learning", help="run folder under OUT/checkpoints")
    p.add_argument("--seed", type=int, default=3407)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra recipe overrides for every stage (repeatable)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = MODES[args.mode]
    out = (args.out or ROOT / "runs" / f"learning-{args.mode}").resolve()
    os.chdir(ROOT)  # the recipe's relative paths start at the repo root
    os.environ["CHECKPOINT_DIR"] = str(out / "checkpoints")
    data = make_data(out / "data", mode["rows"], mode["max_number"], args.seed)
    t0 = time.time()
    if args.model == "tiny":
        args.model = str(pretrain(out / "models/base", data["pretrain"], mode["pretrain"], args.seed))
    model = [f"model.name={args.model}", "model.init=pretrained"]
    sets = [
        f"run_name={args.run_name}",
        f"seed={args.seed}",
        "backend=hf",
        *model,
        f"sft.dataset.path={data['sft']}",
        f"grpo.dataset.path={data['grpo']}",
        "grpo.dataset.columns={answer: solution}",
        f"eval.datasets=[{{name: heldout, path: {data['heldout']}}}]",
        "eval.models=[base, sft, grpo]",
        *mode["sets"],
        *args.overrides,
    ]
    from trainer.cli import main as trainer

    for stage in ("sft", "grpo", "eval"):
        code = trainer([stage, "--config", "configs/tiny.yaml", *[a for s in sets for a in ("--set", s)]])
        if code:
            print(f"learning run: the {stage} stage failed (exit {code})", file=sys.stderr)
            return code
    text = summary(args, out / "checkpoints" / args.run_name, sets, time.time() - t0)
    (out / "summary.md").write_text(text + "\n")
    print("\n" + text + f"\n\nsummary: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
