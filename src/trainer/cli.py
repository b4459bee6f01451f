"""Command line: `python -m trainer {sft,grpo,eval,infer,export,demo} --config FILE [--set key=value ...]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from trainer import distributed
from trainer.config import RunConfig, load_config
from trainer.config.model import check_model_folder
from trainer.errors import UserError

STAGES = ("sft", "grpo", "eval", "infer", "export", "demo")
log = logging.getLogger("trainer")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    p.add_argument("stage", choices=STAGES, help="what to run ('demo': sft, grpo, eval, infer in one go)")
    p.add_argument("--config", default="configs/tiny.yaml", help="recipe YAML (default: %(default)s)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set grpo.max_steps=10 (repeatable)",
    )
    p.add_argument("--prompt", help="infer: the problem to solve (same as --set infer.prompt=...)")
    p.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help="eval: at most N problems per dataset (same as --set eval.limit=N); the report goes to "
        "eval/report-limitN.{json,md}, leaving a full evaluation's report.{json,md} alone (an N that "
        "leaves out no problem is the full evaluation: report.{json,md})",
    )
    return p.parse_args(argv)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def run_stage(stage: str, cfg: RunConfig) -> object:
    import importlib

    # Imported here, not at the top: it imports transformers, which Unsloth must patch first (main).
    from trainer.resilience.guard import stage_guard

    module = {"eval": "evaluate"}.get(stage, stage)
    with stage_guard(cfg, stage):  # the run lock; out of memory / disk full as one line
        return importlib.import_module(f"trainer.{module}").main(cfg)


# Printed after the demo's table on the embedded tiny model, where the numbers need reading.
TINY_NOTE = """\
What these numbers mean: the demo model is a tiny random Qwen3 (4 layers, hidden 128) trained for
seconds on one-digit sums (src/trainer/sample_data/). SFT teaches it the answer format: compare the
format column of base and SFT. It is far too small to learn the arithmetic itself, so pass@1 stays at
a few percent, and a GRPO-vs-SFT change of a few points is noise (compare it with the ± after it).
The demo shows that every stage runs and writes what it should (the answer above is most likely
wrong too); it says nothing about what a real model learns.
In the grpo lines, read reward and accuracy: GRPO's loss stays near 0 by construction, and a step
whose completions all scored alike has nothing to learn from (loss 0, grad norm 0).
  GRPO learning, on a task the tiny model can learn: docs/learning.md, tests/test_learning.py
  GSM8K / MATH-500 need a real model: README.md, "On a GPU" (configs/qwen3-4b.yaml)"""


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (shorter to read and to copy)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def show_eval(cfg: RunConfig, report: dict[str, Any]) -> None:
    """`trainer eval`'s output: the table (evaluate.main's report) and where its files are."""
    from trainer.evaluate import report_files
    from trainer.report import markdown_report

    files = report_files(cfg, report)
    print(markdown_report(report))
    print(f"\neval report: {files.report_json} and {files.report_md}; completions: {files.samples}")


def demo(cfg: RunConfig, config_path: str) -> None:
    """The whole pipeline on one config, then where everything went, and the evaluation table (once,
    here at the end, not after the eval stage as well). `config_path`: the recipe file, for the
    commands printed at the end."""
    from trainer.evaluate import report_files
    from trainer.report import markdown_report
    from trainer.volume import stage_dir

    t0 = time.time()
    sft = run_stage("sft", cfg)
    grpo = run_stage("grpo", cfg)
    report = run_stage("eval", cfg)
    run_stage("infer", cfg)
    run_dir = stage_dir(cfg, "grpo").parent
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    print(f"  SFT adapter:  {_shown(sft)}")
    print(f"  GRPO adapter: {_shown(grpo)}")
    print(f"  reward plot:  {_shown(run_dir / 'grpo' / 'rewards.png')}")
    print(f"  rollouts:     {_shown(run_dir / 'grpo' / 'completions.jsonl')}")
    print(f"  eval report:  {_shown(report_files(cfg, report).report_md)}")
    config = "" if config_path == "configs/tiny.yaml" else f" CONFIG={config_path}"
    print(f"  TensorBoard:  RUNNER=local{config} make tensorboard   (then open http://localhost:6006)")
    print(f'  ask it:       RUNNER=local{config} make infer PROMPT="{cfg.infer.prompt}"')
    if distributed.is_main_process():  # the table last, where the eye lands
        print(f"\nevaluation (base / SFT / GRPO):\n{markdown_report(report)}")
        if cfg.model.init == "tiny":
            print(f"\n{TINY_NOTE}")


def setup_logging() -> None:
    """This package's INFO lines on the main process (WARNING on the others), with a time stamp.

    Call before importing Unsloth or vLLM where a program does (benchmarks/gpu_grpo_step.py): a root
    handler of theirs would make this a no-op and leave the INFO lines out."""
    logging.basicConfig(
        level=distributed.log_level(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    # The root at INFO is for this package's lines; accelerate's INFO would come along, e.g. "The used
    # dataset had no length ... drop the remainder yourself" at the end of a resumed epoch, which reads
    # like a fault and is none: accelerate's warnings still show.
    logging.getLogger("accelerate").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    distributed.one_gpu_per_process()
    ok = False
    try:
        code = _run(args)
        ok = code == 0
        return code
    finally:
        distributed.close(ok)


def _run(args: argparse.Namespace) -> int:
    try:
        from dotenv import load_dotenv

        load_dotenv(os.environ.get("TRAINER_ENV_FILE", ".env"), override=False)
        limit = [f"eval.limit={args.limit}"] if args.limit is not None else []
        cfg = load_config(args.config, [*args.overrides, *limit])
        check_model_folder(cfg.model, args.config)
        if args.prompt is not None:  # taken as-is, not parsed as YAML like --set values
            cfg.infer.prompt = args.prompt
        if cfg.backend == "unsloth":
            from trainer.unsloth_backend import activate

            activate()  # before any stage imports transformers / TRL / PEFT: Unsloth patches them
        if args.stage == "demo":
            demo(cfg, args.config)
        else:
            result = run_stage(args.stage, cfg)
            if args.stage == "eval" and distributed.is_main_process():
                show_eval(cfg, result)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
