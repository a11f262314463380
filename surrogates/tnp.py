"""A TNP-D-style full-attention neural process (Nguyen & Grover, 2022), a peer of ``CMANP``.

The context tokens attend to each other in every layer (self-attention over all ``n`` context
points, O(n^2) time and memory per layer), and the targets read the context tokens of each layer
through a cross-attention, never each other. It takes a ``CMANPConfig`` (width, heads,
feed-forward, layers, embedder depth, Fourier features, joint head) and shares everything but the
encoder with ``CMANP`` (``cmanp_bo.nn.process.NeuralProcess``): the same input features, decoder
and marginal or joint (AND) head. So it is the full-attention model that the CMANP's
constant-memory blocks replace, and it trains (``cmanp-bo train --arch tnp``), saves, loads and
serves as a BoTorch surrogate (``CMANPModel(X, Y, checkpoint=net)``) exactly like a CMANP.

There is no incremental update: every context token depends on every other one, so absorbing a
point re-encodes the whole context (``update`` is ``encode`` of the concatenation, O(n^2)). The
state keeps the raw context for that reason. ``experiments/scaling.py`` uses it as the cost
reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from cmanp_bo.nn import CMANPConfig
from cmanp_bo.nn.layers import SelfAttentionLayer
from surrogates.reencoding import RawContextState, ReencodingProcess


@dataclass(frozen=True, eq=False)
class TNPState(RawContextState):
    """The encoded context: the raw points and the context tokens after every layer."""

    @property
    def tokens(self) -> tuple[Tensor, ...]:
        """``batch_shape x n x d_model`` context tokens after every self-attention layer."""
        return self.layers


class TNPD(ReencodingProcess):
    """Full-attention (TNP-D-style) neural process with the architecture of a ``CMANPConfig``.

    Example:
        >>> net = TNPD(CMANPConfig(dim_x=1, dim_y=1, joint_head=True))
        >>> state = net.encode(x, y)                    # batch x n x 1 each; O(n^2) memory
        >>> state = net.update(state, x_new, y_new)     # re-encodes all n + u points
        >>> net.predict(state, x_query).mean            # batch x m x 1
        >>> net.joint_moments(state, x_query)           # mean, function cov, noise var
    """

    arch = "tnp"
    state_class = TNPState

    def _build_encoder(self, cfg: CMANPConfig) -> None:
        self.encoder = nn.ModuleList(
            SelfAttentionLayer(cfg.d_model, cfg.num_heads, cfg.d_ff) for _ in range(cfg.num_layers)
        )

    def _encode_tokens(self, tokens: Tensor) -> list[Tensor]:
        """Self-attention over all ``n`` context tokens in every layer."""
        out, h = [], tokens
        for layer in self.encoder:
            h = layer(h)
            out.append(h)
        return out


__all__ = ["TNPD", "TNPState"]
