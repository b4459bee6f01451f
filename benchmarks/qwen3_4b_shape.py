"""The Qwen3-4B shape that the benchmarks build with random weights (no hub): one place for
bench_grpo.py and make_qwen3_4b_random.py, which run as scripts from this folder."""

QWEN3_4B = dict(
    hidden_size=2560,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=9728,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=40960,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
)
