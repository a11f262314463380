"""A minimal TNP-D-style full-attention neural process (Nguyen & Grover, 2022).

The context tokens attend to each other in every layer (self-attention over all ``n`` context
points, O(n^2) time and memory per layer), and the targets read the context of each layer through a
cross-attention, never each other. It mirrors a ``CMANPConfig`` (width, heads, feed-forward,
layers, embedder depth) and reuses the package's attention layers, so it is the full-attention
model that the CMANP's constant-memory blocks replace.

There is no incremental update: every context token depends on every other one, so absorbing a
point re-encodes the whole context (``update`` is ``encode`` of the concatenation). The state keeps
the raw context for that reason. Used by ``experiments/scaling.py`` as the cost reference; it has
no training recipe of its own here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal

from cmanp_bo.nn import CMANPConfig
from cmanp_bo.nn.layers import CrossAttentionLayer, SelfAttentionLayer, mlp


@dataclass(frozen=True, eq=False)
class TNPState:
    """The encoded context: the raw points and the context tokens after every layer."""

    x: Tensor
    y: Tensor
    tokens: tuple[Tensor, ...]

    @property
    def num_points(self) -> int:
        return self.x.shape[-2]


class TNPD(nn.Module):
    """Full-attention (TNP-D-style) neural process with the width of a ``CMANPConfig``.

    Example:
        >>> net = TNPD(CMANPConfig(dim_x=1, dim_y=1))
        >>> state = net.encode(x, y)                    # batch x n x 1 each; O(n^2) memory
        >>> state = net.update(state, x_new, y_new)     # re-encodes all n + u points
        >>> net.predict(state, x_query).mean            # batch x m x 1
    """

    def __init__(self, cfg: CMANPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, h, ff = cfg.d_model, cfg.num_heads, cfg.d_ff
        self.embed_context = mlp(cfg.dim_x + cfg.dim_y, d, cfg.embed_depth)
        self.embed_query = mlp(cfg.dim_x, d, cfg.embed_depth)
        self.encoder = nn.ModuleList(SelfAttentionLayer(d, h, ff) for _ in range(cfg.num_layers))
        self.decoder = nn.ModuleList(CrossAttentionLayer(d, h, ff) for _ in range(cfg.num_layers))
        self.head = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 2 * cfg.dim_y)
        )

    def _check(self, x: Tensor, width: int, name: str) -> None:
        if x.dim() < 2 or x.shape[-1] != width or x.shape[-2] == 0:
            raise ValueError(
                f"{name} must have shape batch_shape x n x {width} with n >= 1, "
                f"got {tuple(x.shape)}"
            )

    def encode(self, x: Tensor, y: Tensor) -> TNPState:
        """Self-attention over all ``n`` context points in every layer."""
        self._check(x, self.cfg.dim_x, "x")
        self._check(y, self.cfg.dim_y, "y")
        if x.shape[:-1] != y.shape[:-1]:
            raise ValueError(f"x has shape {tuple(x.shape)} but y has {tuple(y.shape)}")
        h = self.embed_context(torch.cat([x, y], dim=-1))
        tokens = []
        for layer in self.encoder:
            h = layer(h)
            tokens.append(h)
        return TNPState(x, y, tuple(tokens))

    def update(self, state: TNPState, x: Tensor, y: Tensor) -> TNPState:
        """Absorb ``(x, y)``: full attention has no incremental form, so re-encode everything."""
        return self.encode(torch.cat([state.x, x], dim=-2), torch.cat([state.y, y], dim=-2))

    def predict(self, state: TNPState, x: Tensor) -> Normal:
        """Marginal predictive distribution at ``x`` (targets read the context, not each other)."""
        self._check(x, self.cfg.dim_x, "x")
        h = self.embed_query(x)
        for layer, tokens in zip(self.decoder, state.tokens, strict=True):
            h = layer(h, tokens)
        mean, raw = self.head(h).chunk(2, dim=-1)
        return Normal(mean, self.cfg.min_std + F.softplus(raw))


__all__ = ["TNPD", "TNPState"]
