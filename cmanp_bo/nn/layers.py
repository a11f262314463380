"""Pre-LayerNorm residual building blocks shared by the encoder and decoder."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cmanp_bo.nn.attention import AttentionStats, MultiHeadAttention


class FeedForward(nn.Module):
    """Pre-norm residual GEGLU feed-forward: ``x + W2 (a * gelu(g))`` with ``[a, g] = W1 LN(x)``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.proj_in = nn.Linear(d_model, 2 * d_ff)
        self.proj_out = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        return x + self.proj_out(a * F.gelu(gate))


class SelfAttentionLayer(nn.Module):
    """Pre-norm residual self-attention followed by a feed-forward."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, num_heads)
        self.ff = FeedForward(d_model, d_ff)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        return self.ff(x + self.attn(h, h))


class CrossAttentionLayer(nn.Module):
    """Pre-norm residual cross-attention ``queries <- tokens`` followed by a feed-forward.

    The streamed path splits ``forward`` into ``stats``/``absorb`` over the tokens and ``finish``
    on the queries, so the tokens can arrive in blocks.
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, num_heads)
        self.ff = FeedForward(d_model, d_ff)

    def stats(self, queries: Tensor, tokens: Tensor) -> AttentionStats:
        return self.attn.stats(self.norm_q(queries), self.norm_kv(tokens))

    def absorb(self, stats: AttentionStats, queries: Tensor, tokens: Tensor) -> AttentionStats:
        return self.attn.absorb(stats, self.norm_q(queries), self.norm_kv(tokens))

    def finish(self, queries: Tensor, stats: AttentionStats) -> Tensor:
        return self.ff(queries + self.attn.project(stats))

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        return self.finish(queries, self.stats(queries, tokens))


def mlp(dim_in: int, dim_out: int, depth: int) -> nn.Sequential:
    """``depth`` linear layers with ReLU between them."""
    layers: list[nn.Module] = [nn.Linear(dim_in, dim_out)]
    for _ in range(depth - 1):
        layers += [nn.ReLU(), nn.Linear(dim_out, dim_out)]
    return nn.Sequential(*layers)
