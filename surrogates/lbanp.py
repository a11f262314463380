"""Latent Bottlenecked Attentive Neural Process (LBANP; Feng et al., 2023), a peer of ``CMANP``.

``num_latents`` learned latents summarise the context. In every layer the latents cross-attend to
the context tokens and then self-attend; the targets cross-attend to the latents of each layer,
never to the context or to each other. Encoding costs O(n L) time and memory, prediction is
independent of ``n``.

The latents that read the context depend on it from the second layer on, so a new point changes
what every later layer computed from the old ones: there is no incremental update, and ``update``
re-encodes the whole stored context (O(n) per update; the state keeps the raw ``x, y``). CMANP's
blocks remove exactly this: their context read uses fixed latents, so it can be streamed.

Inputs, decoder and heads (marginal or joint AND head) are shared with ``CMANP``
(``cmanp_bo.nn.process.NeuralProcess``), so an LBANP trains (``cmanp-bo train --arch lbanp``),
saves, loads and serves as a BoTorch surrogate exactly like a CMANP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cmanp_bo.nn import CMANPConfig
from cmanp_bo.nn.layers import CrossAttentionLayer, SelfAttentionLayer
from surrogates.reencoding import RawContextState, ReencodingProcess


@dataclass(frozen=True, eq=False)
class LBANPState(RawContextState):
    """The encoded context: the raw points and the latents after every layer."""

    @property
    def latents(self) -> tuple[Tensor, ...]:
        """``batch_shape x num_latents x d_model`` latents after every layer."""
        return self.layers


class LatentBlock(nn.Module):
    """One LBANP layer: ``L = SelfAttn(CrossAttn(L <- context tokens))``."""

    def __init__(self, cfg: CMANPConfig) -> None:
        super().__init__()
        self.read = CrossAttentionLayer(cfg.d_model, cfg.num_heads, cfg.d_ff)
        self.mix = SelfAttentionLayer(cfg.d_model, cfg.num_heads, cfg.d_ff)

    def forward(self, latents: Tensor, tokens: Tensor) -> Tensor:
        return self.mix(self.read(latents, tokens))


class LBANP(ReencodingProcess):
    """Latent bottlenecked attentive neural process with the architecture of a ``CMANPConfig``.

    Example:
        >>> net = LBANP(CMANPConfig(dim_x=1, dim_y=1, num_latents=64, joint_head=True))
        >>> state = net.encode(x, y)                    # batch x n x 1 each; O(n L) memory
        >>> state = net.update(state, x_new, y_new)     # re-encodes all n + u points
        >>> net.predict(state, x_query).mean            # batch x m x 1
    """

    arch = "lbanp"
    state_class = LBANPState

    def _build_encoder(self, cfg: CMANPConfig) -> None:
        self.model_latents = nn.Parameter(torch.randn(cfg.num_latents, cfg.d_model) * 0.5)
        self.encoder = nn.ModuleList(LatentBlock(cfg) for _ in range(cfg.num_layers))

    def _encode_tokens(self, tokens: Tensor) -> list[Tensor]:
        out, h = [], self.model_latents.expand(*tokens.shape[:-2], *self.model_latents.shape)
        for block in self.encoder:
            h = block(h, tokens)
            out.append(h)
        return out


__all__ = ["LBANP", "LBANPState", "LatentBlock"]
