"""The decoder's forward pass over the engine's KV cache: eager or compiled glue around one GEMM per
projection group, or the Triton decode kernels (trainer.rollout.decode_kernels) for one token per row."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from trainer.rollout import decode_kernels
from trainer.rollout.glue import _add_norm, _qkv, _rms_norm, _silu_mul
from trainer.rollout.layout import _Group


class _ForwardPass:
    """RolloutEngine's forward pass, kept apart so each part of the engine fits on a screen or two.

    Reads the engine's model handles (`decoder`, `layers`, `lm_head`, head counts), `state` (the KV
    cache), `adapters` (the weight layout), and the glue chosen at construction (`_fused`,
    `_softmax`, `decode_attention`, `_kernel_path`); writes only the KV cache.
    """

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, slots: Any, kv_len: int, fused: bool
    ) -> torch.Tensor:
        """Hidden state after the final norm for `ids` [B, T]; writes their K/V at `slots`.

        `slots` is a slice (prefill) or a [1] tensor (decode, so that one graph serves every step);
        attention reads cache slots [0, kv_len) under `bias` [B, 1, T, kv_len]. `fused`: the
        pointwise glue as compiled kernels (decode), else eager (prefill; shapes vary).
        """
        norm, add_norm, qkv, silu_mul = self._fused if fused else (_rms_norm, _add_norm, _qkv, _silu_mul)
        st, groups, heads = self.state, self.adapters.groups, (self.n_heads, self.n_kv, self.head_dim)
        x = self.decoder.get_input_embeddings()(ids)
        cos, sin = self.decoder.rotary_emb(x, positions)
        first = self.layers[0].input_layernorm
        h = norm(x, first.weight, first.variance_epsilon)
        if fused and self._kernel_path:
            return self._decode_kernels(x[:, 0], h[:, 0], cos[:, 0], sin[:, 0], slots)[:, None]
        for i, layer in enumerate(self.layers):
            attn, (g_qkv, g_o, g_gu, g_down) = layer.self_attn, groups[i]
            (q, k, v), lora = g_qkv.project(h)
            qn, kn = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
            q, kv = qkv(
                q,
                k,
                v,
                lora,
                g_qkv.splits,
                None if qn is None else qn.weight,
                None if kn is None else kn.weight,
                0.0 if qn is None else qn.variance_epsilon,
                cos,
                sin,
                heads,
            )
            cache = st.kv[i]
            if isinstance(slots, slice):
                cache[:, :, :, slots] = kv
            else:
                cache.index_copy_(3, slots, kv)
            o = self._attend(q, cache[0, :, :, :kv_len], cache[1, :, :, :kv_len], bias, attn.scaling)
            o = o.transpose(1, 2).reshape(ids.shape[0], ids.shape[1], -1)
            post = layer.post_attention_layernorm
            (y,), lora = g_o.project(o)
            x, h = add_norm(x, y, lora, post.weight, post.variance_epsilon)
            (gate, up), lora = g_gu.project(h)
            a = silu_mul(gate, up, lora, g_gu.splits)
            nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.decoder.norm
            (y,), lora = g_down.project(a)
            x, h = add_norm(x, y, lora, nxt.weight, nxt.variance_epsilon)
        return h

    def _decode_kernels(
        self, x: torch.Tensor, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor
    ) -> torch.Tensor:
        """The layers for one token per row [B, hidden] with trainer.rollout.decode_kernels: per layer four
        group GEMMs (base outputs and x A^T), and the kernels that add the LoRA terms and do the rest
        (q/k norm + rotary + cache write, attention, residual add + RMSNorm, SwiGLU). Returns the
        final norm's output."""
        dk, st, heads = decode_kernels, self.state, (self.n_heads, self.n_kv, self.head_dim)
        for i, layer in enumerate(self.layers):
            attn, (g_qkv, g_o, g_gu, g_down) = layer.self_attn, self.adapters.groups[i]
            qn, kn = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
            qk_norm = None if qn is None else (qn.weight, kn.weight)
            eps = 0.0 if qn is None else qn.variance_epsilon
            y = dk.linear(h, g_qkv.fused)
            q = dk.qkv_to_cache(y, g_qkv.kernel_lora, qk_norm, eps, cos, sin, st.kv[i], slot, heads)
            o = dk.attend(q, st.kv[i], st.start, slot, attn.scaling)
            post = layer.post_attention_layernorm
            x, h = self._add_lora_norm(x, dk.linear(o, g_o.fused), g_o, post)
            a = dk.silu_mul(dk.linear(h, g_gu.fused), g_gu.kernel_lora, g_gu.splits[0])
            nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.decoder.norm
            x, h = self._add_lora_norm(x, dk.linear(a, g_down.fused), g_down, nxt)
        return h

    def _add_lora_norm(self, x: torch.Tensor, y: torch.Tensor, group: _Group, norm: Any) -> tuple[torch.Tensor, ...]:
        """Residual add of a one-projection group's output (its LoRA B GEMM on the x A^T columns), then `norm`."""
        n = group.splits[0]
        lora = None if group.a is None else F.linear(y[:, n:], group.b)
        return self._fused[1](x, y[:, :n], lora, norm.weight, norm.variance_epsilon)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float
    ) -> torch.Tensor:
        B, H, T, D = q.shape
        group = H // self.n_kv
        if T == 1 and group > 1:
            # One query per head: fold each KV head's query heads into the query-length axis, so
            # the kernel reads every cached K/V once (head h uses KV head h // group, as repeat_kv).
            qg = q.reshape(B, self.n_kv, group, D)
            if self.decode_attention == "matmul":
                probs = self._softmax(torch.matmul(qg, k.transpose(-1, -2)), bias, scale)
                return torch.matmul(probs, v).reshape(B, H, 1, D)
            o = F.scaled_dot_product_attention(qg, k, v, attn_mask=bias, scale=scale)
            return o.reshape(B, H, 1, D)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=group > 1)

    def _logits(self, h: torch.Tensor, mm: Any = None) -> torch.Tensor:
        """The last position's logits [B, V] in the model's dtype (`mm`: the GEMM for a bias-free head)."""
        if mm is not None and getattr(self.lm_head, "bias", True) is None:
            return mm(h[:, -1], self.lm_head.weight)
        return self.lm_head(h[:, -1:])[:, 0]
