"""SFT -> GRPO trainer for math reasoning: `python -m trainer {sft,grpo,eval,infer,export}`."""

__version__ = "0.1.0"
