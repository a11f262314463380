"""Neural processes whose encoder has no incremental form: an update re-encodes the context.

In TNP-D every context token attends to every other one, and in LBANP the latents that read the
context depend on it from the second layer on; absorbing a point changes what was computed from
the old ones. Such a network keeps the raw context in its state and ``update`` is ``encode`` of
the concatenation. Everything else (inputs, decoder, heads, losses) is ``NeuralProcess``'s, so
these networks are drop-in peers of ``CMANP`` for training, checkpoints and ``CMANPModel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from cmanp_bo.nn.process import NeuralProcess, broadcast_batch


@dataclass(frozen=True, eq=False)
class RawContextState:
    """The raw context and what the encoder made of it, one tensor per layer.

    An immutable value; ``update`` returns a new state. ``x`` (``batch_shape x n x dim_x``) and
    ``y`` (``batch_shape x n x dim_y``) share the state's batch shape (possibly as views).
    """

    x: Tensor
    y: Tensor
    layers: tuple[Tensor, ...]

    @property
    def num_points(self) -> int:
        return self.x.shape[-2]

    @property
    def batch_shape(self) -> torch.Size:
        return self.x.shape[:-2]

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    def tensors(self) -> list[Tensor]:
        return [self.x, self.y, *self.layers]

    def numel(self) -> int:
        """Numbers held by the state (per the full batch)."""
        return sum(t.numel() for t in self.tensors())

    def expand(self, batch_shape: torch.Size | tuple[int, ...]) -> RawContextState:
        """The same context broadcast to ``batch_shape`` (a view; no copy)."""
        b = torch.Size(batch_shape)
        layers = tuple(_expand(t, b) for t in self.layers)
        return type(self)(_expand(self.x, b), _expand(self.y, b), layers)


def _expand(t: Tensor, batch_shape: torch.Size) -> Tensor:
    return t.expand(*batch_shape, *t.shape[-2:])


class ReencodingProcess(NeuralProcess):
    """A ``NeuralProcess`` whose ``update`` re-encodes the stored context with the new points.

    Subclasses set ``state_class`` and implement ``_encode_tokens``.
    """

    incremental_update = False
    state_class: ClassVar[type[RawContextState]]

    def _encode_tokens(self, tokens: Tensor) -> list[Tensor]:
        """Per layer, the representation of the ``batch_shape x n x d_model`` context tokens."""
        raise NotImplementedError

    def _encode_points(self, x: Tensor, y: Tensor) -> RawContextState:
        # x and y already share their batch shape
        tokens = self._context_tokens(x, y, x.shape[:-2])
        return self.state_class(x, y, tuple(self._encode_tokens(tokens)))

    def encode(self, x: Tensor, y: Tensor, block_size: int | None = None) -> RawContextState:
        """Encode a context set in one pass.

        Args:
            x: ``batch_shape x n x dim_x`` context inputs.
            y: ``batch_shape x n x dim_y`` context outputs.
            block_size: accepted for interface compatibility with ``CMANP.encode`` and validated;
                the encoder attends to all points at once whatever its value.

        Returns:
            The state: the points (broadcast to a common batch shape) and their encoding.
        """
        self._check_block_size(block_size)
        batch_shape = self._check_pair(x, y)
        return self._encode_points(_expand(x, batch_shape), _expand(y, batch_shape))

    def update(self, state: RawContextState, x: Tensor, y: Tensor) -> RawContextState:
        """Return a new state that also holds ``(x, y)``; the input state is not modified.

        Args:
            state: a state of this network.
            x: ``batch_shape' x u x dim_x`` new inputs.
            y: ``batch_shape'' x u x dim_y`` new outputs; all batch shapes broadcast.

        Returns:
            The state of the ``state.num_points + u`` points, re-encoded from scratch.
        """
        self._check_state(state)
        pair_batch = self._check_pair(x, y)
        batch_shape = broadcast_batch(state.batch_shape, pair_batch, "state", "x/y")
        all_x = torch.cat([_expand(state.x, batch_shape), _expand(x, batch_shape)], dim=-2)
        all_y = torch.cat([_expand(state.y, batch_shape), _expand(y, batch_shape)], dim=-2)
        return self._encode_points(all_x, all_y)

    def empty_state(self, batch_shape: torch.Size | tuple[int, ...] = ()) -> RawContextState:
        """The state of no context: attention over zero tokens reads zeros, as in ``CMANP``."""
        kw = dict(dtype=self.dtype, device=self.device)
        x = torch.zeros(*batch_shape, 0, self.cfg.dim_x, **kw)
        y = torch.zeros(*batch_shape, 0, self.cfg.dim_y, **kw)
        return self._encode_points(x, y)

    def _check_state(self, state: RawContextState) -> None:
        expected = self.state_class
        if not isinstance(state, expected):
            raise TypeError(f"state must be a {expected.__name__}, got {type(state).__name__}")
        if len(state.layers) != self.cfg.num_layers:
            raise ValueError(
                f"state has {len(state.layers)} layers but the network has {self.cfg.num_layers}"
            )
        if state.dtype != self.dtype:
            raise TypeError(f"state has dtype {state.dtype} but the network is {self.dtype}")

    def representations(self, state: RawContextState) -> Sequence[Tensor]:
        """What the decoder reads: the per-layer encoding stored in the state."""
        self._check_state(state)
        return state.layers


__all__ = ["RawContextState", "ReencodingProcess"]
