"""Constant Memory Attentive Neural Process (CMANP) with an optional joint (AND) head.

``state = net.encode(x, y)``, ``state = net.update(state, x, y)``, ``net.predict(state, x)``.
The only part of the network that reads the context is the first cross-attention of every CMAB;
its softmax statistics are the whole context state, so the state has a constant size and an
update costs O(new points), never re-reading old ones.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from cmanp_bo.nn.attention import AttentionStats
from cmanp_bo.nn.layers import CrossAttentionLayer, SelfAttentionLayer
from cmanp_bo.nn.process import NeuralProcess, broadcast_batch, check_finite
from cmanp_bo.nn.regression import (
    HYPOTHESIS_READOUT_WIDTH,
    MIN_NOISE,
    POLY_READOUT_WIDTH,
    HypothesisMemory,
    PolynomialMemory,
    RegressionMemory,
    RegressionStats,
    readout_width,
)


@dataclass
class CMANPConfig:
    """Architecture of a CMANP. Defaults are the paper's 1-D GP settings.

    The peers ``surrogates.tnp.TNPD`` and ``surrogates.lbanp.LBANP`` take the same config and
    ignore the fields they have no use for (``num_block_latents``; TNP-D also ``num_latents``).

    Attributes:
        dim_x: input dimension.
        dim_y: output dimension (the joint head needs ``dim_y == 1``).
        d_model: token and latent width.
        embed_depth: linear layers in the context and query embedders.
        d_ff: hidden width of the GEGLU feed-forwards.
        num_heads: attention heads.
        num_layers: CMABs in the encoder, and cross-attention layers in the decoder.
        num_latents: model latents fed to the first CMAB (LBANP: its latent bottleneck).
        num_block_latents: latents ``L_B`` of each CMAB (the size of the streamed state).
        joint_head: add the AND head, a joint Gaussian over a block of targets.
        joint_rank: width of the per-target features that define correlations in the AND head.
        min_std: floor of every predicted standard deviation.
        fourier_features: number ``F`` of random Fourier features ``sin/cos(2 pi x B)`` of the
            inputs appended to ``x`` before both embedders (0: raw ``x`` only). They make
            short-lengthscale structure cheap to represent, which is what a small network on a
            CPU budget lacks most. ``B`` (``dim_x x F``) is a fixed buffer, stored in the
            checkpoint; a zero (padded) input dimension contributes nothing to ``x B``.
        fourier_scale: standard deviation of the entries of ``B`` (frequencies per unit of x).
        regression_features: features ``m`` per bank of the streamed Bayesian linear regression
            whose per-target readout is fed to the query embedder (0: off; CMANP only, see
            ``cmanp_bo.nn.regression``). Its statistics join the context state
            (``banks x (m^2 + m) + 1`` numbers per task).
        regression_lengthscales: one RBF lengthscale (units of x) per regression bank.
        regression_noise: initial noise variance of every bank (trained; frame units).
        polynomial_memory: add a model-averaged Bayesian quadratic regression over the context
            whose per-target mean, function std and noise std are fed to the query embedder
            (CMANP only; ``cmanp_bo.nn.regression.PolynomialMemory``). Its statistics join the
            context state (``m^2 + m + 1`` numbers per task, ``m = 1 + d + d (d + 1) / 2``).
        hypothesis_count: lengthscale hypotheses K of a model-averaged random-feature GP
            regression over the context whose per-target mean, function std and noise std are
            fed to the query embedder (0: off; CMANP only;
            ``cmanp_bo.nn.regression.HypothesisMemory``). Its statistics join the context
            state (``2 K ((m + 1)^2 + m + 1) + 1`` numbers per task).
        hypothesis_features: random features m per hypothesis and kernel.
        hypothesis_short_share: share of the hypotheses 16 times shorter than the
            hyperprior's draws (0: none), to match a prior with ``short_share``.
        hypothesis_exact_points: while the context holds at most this many points, the
            hypothesis memory also keeps them and its readout is exact (kernel form) instead of
            on its random features (0: never; ``HypothesisMemory(exact_points=...)``). The
            state then grows with the context up to this many points, then drops them.
        hypothesis_residual: the joint head's mean, function std and noise std are the
            hypothesis memory's readout corrected by the network (the head's outputs are
            added to the readout's mean and to the inverse softplus of its stds), instead of
            the network's alone; a head whose first three outputs are zero is the readout.
            The function's correlation between targets is then the memory's mixture's
            (``HypothesisMemory.readout_correlation``), not the head's learned one.
            Needs ``hypothesis_count`` and ``joint_head``.
        hypothesis_prior_dim: draw the hypothesis bank from the lengthscale hyperprior of this
            many dimensions (0: ``dim_x``'s; ``HypothesisMemory(prior_dim=...)``).
        hypothesis_task_dim: draw it from the hyperprior of each task's own dimension instead
            (the same draws rescaled: ``CMANP.for_task_dim(d)``, which ``CMANPModel``, the
            trainer and the prior-fit scripts call with the inputs' width before padding).
            Excludes ``hypothesis_prior_dim``.
    """

    dim_x: int = 1
    dim_y: int = 1
    d_model: int = 64
    embed_depth: int = 4
    d_ff: int = 128
    num_heads: int = 4
    num_layers: int = 6
    num_latents: int = 128
    num_block_latents: int = 128
    joint_head: bool = False
    joint_rank: int = 16
    min_std: float = 1e-3
    fourier_features: int = 0
    fourier_scale: float = 2.0
    regression_features: int = 0
    regression_lengthscales: tuple[float, ...] = (0.15, 0.4, 1.2, 4.0)
    regression_noise: float = 1e-2
    polynomial_memory: bool = False
    hypothesis_count: int = 0
    hypothesis_features: int = 64
    hypothesis_short_share: float = 0.0
    hypothesis_exact_points: int = 0
    hypothesis_residual: bool = False
    hypothesis_prior_dim: int = 0
    hypothesis_task_dim: bool = False

    def __post_init__(self) -> None:
        for name in (
            "dim_x",
            "dim_y",
            "d_model",
            "embed_depth",
            "d_ff",
            "num_heads",
            "num_layers",
            "num_latents",
            "num_block_latents",
            "joint_rank",
            "hypothesis_features",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CMANPConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"CMANPConfig.d_model={self.d_model} must be divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.joint_head and self.dim_y != 1:
            raise ValueError("the joint head supports dim_y == 1 only (use one model per output)")
        if (
            not isinstance(self.fourier_features, int)
            or isinstance(self.fourier_features, bool)
            or self.fourier_features < 0
        ):
            raise ValueError(
                f"CMANPConfig.fourier_features must be an int >= 0, got {self.fourier_features!r}"
            )
        if not self.fourier_scale > 0:
            raise ValueError(f"CMANPConfig.fourier_scale must be > 0, got {self.fourier_scale!r}")
        if not self.min_std > 0:
            raise ValueError(f"CMANPConfig.min_std must be > 0, got {self.min_std!r}")
        for name in (
            "regression_features",
            "hypothesis_count",
            "hypothesis_exact_points",
            "hypothesis_prior_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"CMANPConfig.{name} must be an int >= 0, got {value!r}")
        self.regression_lengthscales = tuple(float(v) for v in self.regression_lengthscales)
        if not self.regression_lengthscales or not all(
            v > 0 and math.isfinite(v) for v in self.regression_lengthscales
        ):
            raise ValueError(
                "CMANPConfig.regression_lengthscales must be a non-empty list of positive "
                f"numbers, got {self.regression_lengthscales!r}"
            )
        if not 0.0 <= self.hypothesis_short_share <= 1.0:
            raise ValueError(
                "CMANPConfig.hypothesis_short_share must be in [0, 1], got "
                f"{self.hypothesis_short_share!r}"
            )
        if not isinstance(self.hypothesis_residual, bool):
            raise ValueError(
                "CMANPConfig.hypothesis_residual must be true or false, got "
                f"{self.hypothesis_residual!r}"
            )
        if self.hypothesis_residual and not (self.hypothesis_count and self.joint_head):
            raise ValueError(
                "CMANPConfig.hypothesis_residual needs a hypothesis memory (hypothesis_count > 0) "
                "and the joint head (joint_head=True)"
            )
        if not isinstance(self.hypothesis_task_dim, bool):
            raise ValueError(
                "CMANPConfig.hypothesis_task_dim must be true or false, got "
                f"{self.hypothesis_task_dim!r}"
            )
        if self.hypothesis_task_dim and (not self.hypothesis_count or self.hypothesis_prior_dim):
            raise ValueError(
                "CMANPConfig.hypothesis_task_dim needs a hypothesis memory (hypothesis_count > 0) "
                "and excludes hypothesis_prior_dim"
            )
        if not isinstance(self.polynomial_memory, bool):
            raise ValueError(
                "CMANPConfig.polynomial_memory must be true or false, got "
                f"{self.polynomial_memory!r}"
            )
        if not self.regression_noise > MIN_NOISE:
            raise ValueError(
                f"CMANPConfig.regression_noise must be > {MIN_NOISE}, got {self.regression_noise!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class ContextState:
    """The absorbed context: per CMAB, the softmax statistics of its context cross-attention, and
    the regression statistics when the network has a ``RegressionMemory`` (``regression``) or a
    ``PolynomialMemory`` (``polynomial``).

    An immutable value. ``update`` returns a new state; the old one stays valid. Its size depends
    on the architecture and the batch shape only, never on ``num_points``, except that a
    hypothesis memory with ``exact_points`` also holds the points themselves while there are at
    most that many (so the size is bounded by the architecture, not by ``num_points``).
    """

    layers: tuple[AttentionStats, ...]
    num_points: int
    regression: RegressionStats | None = None
    polynomial: RegressionStats | None = None
    hypothesis: RegressionStats | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def batch_shape(self) -> torch.Size:
        return self.layers[0].batch_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].output.dtype

    def numel(self) -> int:
        """Numbers held by the state (per the full batch)."""
        return sum(t.numel() for t in self.tensors())

    def tensors(self) -> list[Tensor]:
        out = [t for s in self.layers for t in (s.log_norm, s.output)]
        for memory in self.memories():
            out += memory.tensors() if memory is not None else []
        return out

    def memories(self) -> tuple[RegressionStats | None, ...]:
        """The statistics of the regression, polynomial and hypothesis memories, in that order
        (``None`` where the network has no such memory)."""
        return (self.regression, self.polynomial, self.hypothesis)

    def expand(self, batch_shape: torch.Size | tuple[int, ...]) -> ContextState:
        """The same context broadcast to ``batch_shape`` (a view; no copy)."""
        batch_shape = torch.Size(batch_shape)
        return ContextState(
            tuple(s.expand(batch_shape) for s in self.layers),
            self.num_points,
            *(m.expand(batch_shape) if m is not None else None for m in self.memories()),
        )


class CMAB(nn.Module):
    """Constant Memory Attention Block.

    1. ``E = CrossAttn(L_B <- D)``: the only sub-layer that reads the context ``D``; streamed.
    2. ``E = SelfAttn(E)``.
    3. ``X = CrossAttn(L_I <- E)``, ``L_O = SelfAttn(X)``.
    """

    def __init__(self, cfg: CMANPConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.block_latents = nn.Parameter(torch.randn(cfg.num_block_latents, d) * 0.5)
        self.read = CrossAttentionLayer(d, cfg.num_heads, cfg.d_ff)
        self.mix_block = SelfAttentionLayer(d, cfg.num_heads, cfg.d_ff)
        self.write = CrossAttentionLayer(d, cfg.num_heads, cfg.d_ff)
        self.mix_out = SelfAttentionLayer(d, cfg.num_heads, cfg.d_ff)

    def context_stats(self, tokens: Tensor) -> AttentionStats:
        """Statistics of ``L_B`` attending to ``tokens`` (``batch_shape x n x d``)."""
        return self.read.stats(self.block_latents, tokens)

    def absorb(self, stats: AttentionStats, tokens: Tensor) -> AttentionStats:
        return self.read.absorb(stats, self.block_latents, tokens)

    def forward(self, inputs: Tensor, stats: AttentionStats) -> Tensor:
        """Output latents from input latents ``L_I`` (``batch_shape x L x d``) and the stats."""
        block = self.read.finish(self.block_latents, stats)
        block = self.mix_block(block)
        return self.mix_out(self.write(inputs, block))


class CMANP(NeuralProcess):
    """Constant Memory Attentive Neural Process.

    Embedders, decoder and heads come from ``NeuralProcess``; the encoder is a stack of CMABs fed
    with ``num_latents`` model latents.

    Example:
        >>> net = CMANP(CMANPConfig(dim_x=1, dim_y=1))
        >>> state = net.encode(x, y, block_size=1024)   # batch x n x 1 each
        >>> state = net.update(state, x_new, y_new)
        >>> net.predict(state, x_query).mean            # batch x m x 1
    """

    arch = "cmanp"
    incremental_update = True

    def _build_encoder(self, cfg: CMANPConfig) -> None:
        self.model_latents = nn.Parameter(torch.randn(cfg.num_latents, cfg.d_model) * 0.5)
        self.encoder = nn.ModuleList(CMAB(cfg) for _ in range(cfg.num_layers))
        self.regression = (
            RegressionMemory(
                cfg.dim_x,
                cfg.regression_features,
                cfg.regression_lengthscales,
                cfg.regression_noise,
            )
            if cfg.regression_features
            else None
        )
        self.polynomial = PolynomialMemory(cfg.dim_x) if cfg.polynomial_memory else None
        self.hypothesis = (
            HypothesisMemory(
                cfg.dim_x,
                cfg.hypothesis_count,
                cfg.hypothesis_features,
                short_share=cfg.hypothesis_short_share,
                exact_points=cfg.hypothesis_exact_points,
                prior_dim=cfg.hypothesis_prior_dim,
            )
            if cfg.hypothesis_count
            else None
        )

    def for_task_dim(self, dim: int) -> CMANP:
        """This network for tasks of ``dim`` input dimensions (zero-padded to ``dim_x``).

        With ``hypothesis_task_dim``: a view that shares every parameter and buffer but the
        hypothesis memory, whose bank is drawn from ``dim``'s lengthscale hyperprior
        (``HypothesisMemory.for_prior_dim``), unless it already is (``dim_x``: the network
        itself); otherwise the network itself. The network keeps one view per ``dim`` (remade
        if its own bank's tensors were replaced, e.g. by ``.to``), so every model built on it
        for that ``dim`` gets the same object and ``StateCache`` can reuse its states. A state
        is only valid with the view that made it; save the network, not a view.
        """
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= self.cfg.dim_x:
            raise ValueError(f"dim must be an int in [1, {self.cfg.dim_x}], got {dim!r}")
        base = self.__dict__.get("_task_base", self)
        if not self.cfg.hypothesis_task_dim or base.hypothesis.prior_dim == dim:
            return base
        views = base.__dict__.setdefault("_task_views", {})
        bank = base.hypothesis.frequencies
        if dim in views and views[dim][0] is bank:
            return views[dim][1]
        view = copy.copy(base)
        view._modules = dict(base._modules)  # the parameters' modules stay shared
        view._modules["hypothesis"] = base.hypothesis.for_prior_dim(dim)
        object.__setattr__(view, "_task_base", base)  # not a submodule: not in its state dict
        views[dim] = (bank, view)
        return view

    @property
    def memories(self) -> tuple[nn.Module | None, ...]:
        """The regression, polynomial and hypothesis memories (``ContextState.memories``'s
        order; ``None`` where absent)."""
        return (self.regression, self.polynomial, self.hypothesis)

    @classmethod
    def query_extra_width(cls, cfg: CMANPConfig) -> int:
        width = readout_width(len(cfg.regression_lengthscales)) if cfg.regression_features else 0
        width += POLY_READOUT_WIDTH if cfg.polynomial_memory else 0
        return width + (HYPOTHESIS_READOUT_WIDTH if cfg.hypothesis_count else 0)

    def _query_inputs(self, state: ContextState, x: Tensor) -> Tensor:
        parts = [self._features(x)]  # then the readouts, in the order of query_extra_width
        for memory, stats in zip(self.memories, state.memories()):
            if memory is not None:
                parts.append(memory.readout(stats, state.num_points, x, state._cache))
        if len(parts) == 1:
            return parts[0]
        batch = torch.broadcast_shapes(*(t.shape[:-1] for t in parts))
        return torch.cat([t.expand(*batch, -1) for t in parts], dim=-1)

    def _head_outputs(self, out: Tensor, query: Tensor) -> Tensor:
        """With ``hypothesis_residual``, the hypothesis readout (the query's last
        ``HYPOTHESIS_READOUT_WIDTH`` inputs) is added to the head's mean and, through the
        inverse of ``_std``, to its function and noise stds."""
        if not self.cfg.hypothesis_residual:
            return out
        mean, log_f, log_noise = query[..., -HYPOTHESIS_READOUT_WIDTH:].unbind(-1)
        floor = torch.finfo(out.dtype).tiny ** 0.25  # keeps the inverse softplus finite
        raw = []
        for log_std in (log_f, log_noise):
            v = (log_std.exp() - self.cfg.min_std).clamp_min(floor)
            raw.append(v + (-torch.expm1(-v)).log())  # softplus^-1(v), stable for any v > 0
        offset = torch.stack([mean, *raw], -1)
        x = query[..., : self.cfg.dim_x]  # the query's inputs begin with x itself
        x = x.expand(*out.shape[:-1], self.cfg.dim_x)
        return torch.cat([out[..., :3] + offset, out[..., 3:], x], -1)

    def covariance_from_outputs(
        self, out_a: Tensor, out_b: Tensor, state: ContextState | None = None
    ) -> Tensor:
        """With ``hypothesis_residual``, the network's function stds times the hypothesis
        memory's correlation between the targets (``HypothesisMemory.readout_correlation``;
        the outputs end with the targets' inputs), instead of the head's learned one."""
        if not self.cfg.hypothesis_residual:
            return super().covariance_from_outputs(out_a, out_b, state)
        if state is None:
            raise ValueError("a hypothesis_residual network's covariance needs the context state")
        d = self.cfg.dim_x
        x_b = None if out_b is out_a else out_b[..., -d:]  # one set of targets: its terms once
        corr = self.hypothesis.readout_correlation(
            state.hypothesis, state.num_points, out_a[..., -d:], x_b, state._cache
        ).to(out_a.dtype)
        f_a, f_b = self._std(out_a[..., 1]), self._std(out_b[..., 1])
        return f_a.unsqueeze(-1) * corr * f_b.unsqueeze(-2)

    # ----------------------------------------------------------------------------- context
    def encode(self, x: Tensor, y: Tensor, block_size: int | None = None) -> ContextState:
        """Absorb a context set, all at once or streamed in blocks.

        Args:
            x: ``batch_shape x n x dim_x`` context inputs.
            y: ``batch_shape x n x dim_y`` context outputs.
            block_size: ``None``: one-shot softmax attention over all points (the training
                path; memory O(n)). An int: stream the points in blocks of that size through
                the update rule, starting from the empty state; peak memory is O(block_size),
                independent of n (inputs are also validated block by block). The result does
                not depend on the block size beyond rounding.

        Returns:
            The ``ContextState`` of the ``n`` points.
        """
        self._check_block_size(block_size)
        streamed = block_size is not None
        batch_shape = self._check_pair(x, y, finite=not streamed)
        n = x.shape[-2]
        if not streamed:
            tokens = self._context_tokens(x, y, batch_shape)
            layers = tuple(blk.context_stats(tokens) for blk in self.encoder)
            memories = (
                m.stats(x, y, batch_shape) if m is not None else None for m in self.memories
            )
            return ContextState(layers, n, *memories)
        state = self.empty_state(batch_shape)
        for start in range(0, n, block_size):
            xb, yb = x[..., start : start + block_size, :], y[..., start : start + block_size, :]
            check_finite(xb, "x")
            check_finite(yb, "y")
            state = self._absorb(state, xb, yb, batch_shape)
            del xb, yb  # free this block before the next one is embedded
        return state

    def _absorb(
        self, state: ContextState, x: Tensor, y: Tensor, batch_shape: torch.Size
    ) -> ContextState:
        tokens = self._context_tokens(x, y, batch_shape)
        layers = tuple(blk.absorb(s, tokens) for blk, s in zip(self.encoder, state.layers))
        # batch shapes broadcast inside the memories (fantasies share the gram)
        memories = (
            m.absorb(stats, x, y) if m is not None else None
            for m, stats in zip(self.memories, state.memories())
        )
        return ContextState(layers, state.num_points + x.shape[-2], *memories)

    def empty_state(self, batch_shape: torch.Size | tuple[int, ...] = ()) -> ContextState:
        """The state of no context at all (predictions are then the prior's).

        Args:
            batch_shape: batch shape of the state.
        """
        batch_shape = torch.Size(batch_shape)
        layers = tuple(
            blk.read.attn.empty_stats(blk.read.norm_q(blk.block_latents)).expand(batch_shape)
            for blk in self.encoder
        )
        memories = (m.empty(batch_shape) if m is not None else None for m in self.memories)
        return ContextState(layers, 0, *memories)

    def update(self, state: ContextState, x: Tensor, y: Tensor) -> ContextState:
        """Return a new state that also holds ``(x, y)``; the input state is not modified.

        Args:
            state: a state of this network.
            x: ``batch_shape' x u x dim_x`` new inputs.
            y: ``batch_shape'' x u x dim_y`` new outputs. All batch shapes broadcast; extra
                leading dims (e.g. fantasies) give a state of the broadcast batch shape.

        Returns:
            A ``ContextState`` with ``num_points = state.num_points + u``; cost O(u).
        """
        self._check_state(state)
        pair_batch = self._check_pair(x, y)
        batch_shape = broadcast_batch(state.batch_shape, pair_batch, "state", "x/y")
        return self._absorb(state, x, y, batch_shape)

    def _check_state(self, state: ContextState) -> None:
        if not isinstance(state, ContextState):
            raise TypeError(f"state must be a ContextState, got {type(state).__name__}")
        if len(state.layers) != len(self.encoder):
            raise ValueError(
                f"state has {len(state.layers)} layers but the network has {len(self.encoder)}"
            )
        if state.dtype != self.dtype:
            raise TypeError(f"state has dtype {state.dtype} but the network is {self.dtype}")
        for name, stats, memory in zip(
            ("regression memory", "polynomial memory", "hypothesis memory"),
            state.memories(),
            self.memories,
        ):
            if (stats is None) != (memory is None):
                raise ValueError(
                    f"state and network disagree on the {name} "
                    f"(state has {'none' if stats is None else 'one'}, the network "
                    f"{'none' if memory is None else 'one'})"
                )

    def latents(self, state: ContextState) -> list[Tensor]:
        """Output latents of every CMAB (``batch_shape x num_latents x d_model`` each).

        Cost is independent of ``state.num_points``. Cached on the state when no gradient
        flows into them (inference).
        """
        self._check_state(state)
        key = id(self)
        cached = state._cache.get(key)
        if cached is not None:
            return cached
        out, h = [], self.model_latents
        for blk, stats in zip(self.encoder, state.layers):
            h = blk(h.expand(*stats.batch_shape, *h.shape[-2:]), stats)
            out.append(h)
        if not any(t.requires_grad for t in out):
            state._cache[key] = out
        return out

    def representations(self, state: ContextState) -> list[Tensor]:
        """What the decoder reads: the output latents of every CMAB (see ``latents``)."""
        return self.latents(state)


def state_size_bytes(state: ContextState) -> int:
    return sum(t.numel() * t.element_size() for t in state.tensors())


__all__ = ["CMAB", "CMANP", "CMANPConfig", "ContextState"]
