"""Multi-head attention whose softmax statistics can be accumulated in streams.

The cross-attention of fixed query latents to a set of context tokens is kept, per head and per
latent, as two numbers: the log-normaliser ``l = logsumexp_j s_j`` and the normalised output
``o = sum_j softmax_j(s_j) v_j``. A block of new tokens is absorbed in log space,

    l' = logaddexp(l, logsumexp_u s_u)
    o' = exp(l - l') o + sum_u exp(s_u - l') v_u

which equals one-shot softmax attention up to rounding, is order-free and never stores exp-sums.
The empty set is ``l = -inf, o = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class AttentionStats:
    """Softmax statistics of one cross-attention over the tokens absorbed so far.

    Attributes:
        log_norm: ``batch_shape x heads x latents`` log-normalisers.
        output: ``batch_shape x heads x latents x head_dim`` normalised outputs (before the
            output projection).
    """

    log_norm: Tensor
    output: Tensor

    @property
    def batch_shape(self) -> torch.Size:
        return self.log_norm.shape[:-2]

    def expand(self, batch_shape: torch.Size) -> AttentionStats:
        return AttentionStats(
            self.log_norm.expand(*batch_shape, *self.log_norm.shape[-2:]),
            self.output.expand(*batch_shape, *self.output.shape[-3:]),
        )


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention (no masking).

    ``forward`` is the one-shot path; ``stats``/``absorb``/``project`` expose the streamed path
    with the same parameters.
    """

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.to_q = nn.Linear(d_model, d_model)
        self.to_k = nn.Linear(d_model, d_model)
        self.to_v = nn.Linear(d_model, d_model)
        self.to_out = nn.Linear(d_model, d_model)

    def _split(self, t: Tensor) -> Tensor:
        # ... x n x d -> ... x heads x n x head_dim
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def _scores(self, queries: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        q = self._split(self.to_q(queries))
        k = self._split(self.to_k(tokens))
        v = self._split(self.to_v(tokens))
        return q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), v

    def stats(self, queries: Tensor, tokens: Tensor) -> AttentionStats:
        """Statistics of ``queries`` (``... x m x d``) attending to ``tokens`` (``... x n x d``)."""
        scores, v = self._scores(queries, tokens)
        log_norm = torch.logsumexp(scores, dim=-1)
        output = torch.softmax(scores, dim=-1) @ v
        return AttentionStats(log_norm, output)

    def absorb(self, stats: AttentionStats, queries: Tensor, tokens: Tensor) -> AttentionStats:
        """Fold a block of new ``tokens`` (``... x u x d``) into ``stats``; cost O(u * m)."""
        scores, v = self._scores(queries, tokens)
        new_log_norm = torch.logaddexp(stats.log_norm, torch.logsumexp(scores, dim=-1))
        keep = torch.exp(stats.log_norm - new_log_norm).unsqueeze(-1)
        weights = torch.exp(scores - new_log_norm.unsqueeze(-1))
        return AttentionStats(new_log_norm, keep * stats.output + weights @ v)

    def empty_stats(self, queries: Tensor) -> AttentionStats:
        """Statistics of the empty token set for ``queries`` (``... x m x d``, before ``to_q``)."""
        q = self._split(self.to_q(queries))
        log_norm = torch.full(q.shape[:-1], -math.inf, dtype=q.dtype, device=q.device)
        return AttentionStats(log_norm, torch.zeros_like(q))

    def project(self, stats: AttentionStats) -> Tensor:
        """Merge heads and apply the output projection: ``... x m x d``."""
        return self.to_out(stats.output.transpose(-3, -2).flatten(-2))

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        return self.project(self.stats(queries, tokens))
