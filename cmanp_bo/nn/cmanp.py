"""Constant Memory Attentive Neural Process (CMANP) with an optional joint (AND) head.

``state = net.encode(x, y)``, ``state = net.update(state, x, y)``, ``net.predict(state, x)``.
The only part of the network that reads the context is the first cross-attention of every CMAB;
its softmax statistics are the whole context state, so the state has a constant size and an
update costs O(new points), never re-reading old ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import MultivariateNormal, Normal

from cmanp_bo.nn.attention import AttentionStats
from cmanp_bo.nn.layers import CrossAttentionLayer, SelfAttentionLayer, mlp


@dataclass
class CMANPConfig:
    """Architecture of a CMANP. Defaults are the paper's 1-D GP settings.

    Attributes:
        dim_x: input dimension.
        dim_y: output dimension (the joint head needs ``dim_y == 1``).
        d_model: token and latent width.
        embed_depth: linear layers in the context and query embedders.
        d_ff: hidden width of the GEGLU feed-forwards.
        num_heads: attention heads.
        num_layers: CMABs in the encoder, and cross-attention layers in the decoder.
        num_latents: model latents fed to the first CMAB.
        num_block_latents: latents ``L_B`` of each CMAB (the size of the streamed state).
        joint_head: add the AND head, a joint Gaussian over a block of targets.
        joint_rank: width of the per-target features that define correlations in the AND head.
        min_std: floor of every predicted standard deviation.
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
        if not self.min_std > 0:
            raise ValueError(f"CMANPConfig.min_std must be > 0, got {self.min_std!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class ContextState:
    """The absorbed context: per CMAB, the softmax statistics of its context cross-attention.

    An immutable value. ``update`` returns a new state; the old one stays valid. Its size depends
    on the architecture and the batch shape only, never on ``num_points``.
    """

    layers: tuple[AttentionStats, ...]
    num_points: int
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def batch_shape(self) -> torch.Size:
        return self.layers[0].batch_shape

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].output.dtype

    def numel(self) -> int:
        """Numbers held by the state (per the full batch)."""
        return sum(s.log_norm.numel() + s.output.numel() for s in self.layers)

    def tensors(self) -> list[Tensor]:
        return [t for s in self.layers for t in (s.log_norm, s.output)]

    def expand(self, batch_shape: torch.Size | tuple[int, ...]) -> ContextState:
        """The same context broadcast to ``batch_shape`` (a view; no copy)."""
        return ContextState(
            tuple(s.expand(torch.Size(batch_shape)) for s in self.layers), self.num_points
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


class CMANP(nn.Module):
    """Constant Memory Attentive Neural Process.

    Example:
        >>> net = CMANP(CMANPConfig(dim_x=1, dim_y=1))
        >>> state = net.encode(x, y, block_size=1024)   # batch x n x 1 each
        >>> state = net.update(state, x_new, y_new)
        >>> net.predict(state, x_query).mean            # batch x m x 1
    """

    def __init__(self, cfg: CMANPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.embed_context = mlp(cfg.dim_x + cfg.dim_y, d, cfg.embed_depth)
        self.embed_query = mlp(cfg.dim_x, d, cfg.embed_depth)
        self.model_latents = nn.Parameter(torch.randn(cfg.num_latents, d) * 0.5)
        self.encoder = nn.ModuleList(CMAB(cfg) for _ in range(cfg.num_layers))
        self.decoder = nn.ModuleList(
            CrossAttentionLayer(d, cfg.num_heads, cfg.d_ff) for _ in range(cfg.num_layers)
        )
        # marginal: mean and std per output; joint: mean, function std, noise std, 2 feature sets
        num_out = 3 + 2 * cfg.joint_rank if cfg.joint_head else 2 * cfg.dim_y
        self.head = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, d), nn.ReLU(), nn.Linear(d, num_out)
        )
        if cfg.joint_head:
            self.kernel_mix_logit = nn.Parameter(torch.zeros(()))

    @property
    def dtype(self) -> torch.dtype:
        return self.model_latents.dtype

    # ----------------------------------------------------------------------------- validation
    def _check_inputs(
        self, x: Tensor, name: str, width: int, width_name: str, finite: bool = True
    ) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dtype != self.dtype:
            raise TypeError(
                f"{name} has dtype {x.dtype} but the network is {self.dtype}; "
                f"cast the input or the network (net.to({x.dtype}))"
            )
        if x.dim() < 2:
            raise ValueError(
                f"{name} must have shape batch_shape x n x {width_name}, got {tuple(x.shape)}"
            )
        if x.shape[-1] != width:
            raise ValueError(
                f"{name} has last dimension {x.shape[-1]} but the network expects "
                f"{width_name}={width}"
            )
        if x.shape[-2] == 0:
            raise ValueError(f"{name} is empty: it holds no points (shape {tuple(x.shape)})")
        if finite:
            _check_finite(x, name)

    def _check_pair(self, x: Tensor, y: Tensor, finite: bool = True) -> torch.Size:
        self._check_inputs(x, "x", self.cfg.dim_x, "dim_x", finite)
        self._check_inputs(y, "y", self.cfg.dim_y, "dim_y", finite)
        if x.shape[-2] != y.shape[-2]:
            raise ValueError(f"x holds {x.shape[-2]} points but y holds {y.shape[-2]}")
        return _broadcast_batch(x.shape[:-2], y.shape[:-2], "x", "y")

    # ----------------------------------------------------------------------------- context
    def _context_tokens(self, x: Tensor, y: Tensor, batch_shape: torch.Size) -> Tensor:
        x = x.expand(*batch_shape, *x.shape[-2:])
        y = y.expand(*batch_shape, *y.shape[-2:])
        return self.embed_context(torch.cat([x, y], dim=-1))

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
        if block_size is not None and (
            not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1
        ):
            raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
        streamed = block_size is not None
        batch_shape = self._check_pair(x, y, finite=not streamed)
        n = x.shape[-2]
        if not streamed:
            tokens = self._context_tokens(x, y, batch_shape)
            return ContextState(tuple(blk.context_stats(tokens) for blk in self.encoder), n)
        state = self.empty_state(batch_shape)
        layers = state.layers
        for start in range(0, n, block_size):
            xb, yb = x[..., start : start + block_size, :], y[..., start : start + block_size, :]
            _check_finite(xb, "x")
            _check_finite(yb, "y")
            tokens = self._context_tokens(xb, yb, batch_shape)
            layers = tuple(blk.absorb(s, tokens) for blk, s in zip(self.encoder, layers))
            del tokens, xb, yb  # free this block before the next one is embedded
        return ContextState(layers, n)

    def empty_state(self, batch_shape: torch.Size | tuple[int, ...] = ()) -> ContextState:
        """The state of no context at all (predictions are then the prior's).

        Args:
            batch_shape: batch shape of the state.
        """
        layers = tuple(
            blk.read.attn.empty_stats(blk.read.norm_q(blk.block_latents)).expand(
                torch.Size(batch_shape)
            )
            for blk in self.encoder
        )
        return ContextState(layers, 0)

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
        batch_shape = _broadcast_batch(state.batch_shape, pair_batch, "state", "x/y")
        tokens = self._context_tokens(x, y, batch_shape)
        layers = tuple(blk.absorb(s, tokens) for blk, s in zip(self.encoder, state.layers))
        return ContextState(layers, state.num_points + x.shape[-2])

    def _check_state(self, state: ContextState) -> None:
        if not isinstance(state, ContextState):
            raise TypeError(f"state must be a ContextState, got {type(state).__name__}")
        if len(state.layers) != len(self.encoder):
            raise ValueError(
                f"state has {len(state.layers)} layers but the network has {len(self.encoder)}"
            )
        if state.dtype != self.dtype:
            raise TypeError(f"state has dtype {state.dtype} but the network is {self.dtype}")

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

    # ----------------------------------------------------------------------------- targets
    def _decode(self, state: ContextState, x: Tensor) -> Tensor:
        self._check_inputs(x, "x", self.cfg.dim_x, "dim_x")
        latents = self.latents(state)
        batch_shape = _broadcast_batch(state.batch_shape, x.shape[:-2], "state", "x")
        h = self.embed_query(x).expand(*batch_shape, x.shape[-2], self.cfg.d_model)
        for layer, lat in zip(self.decoder, latents):
            h = layer(h, lat)
        return self.head(h)

    def _std(self, raw: Tensor) -> Tensor:
        return self.cfg.min_std + F.softplus(raw)

    def predict(self, state: ContextState, x: Tensor) -> Normal:
        """Marginal predictive distribution of ``y`` at ``x`` (``batch_shape x m x dim_x``).

        Returns:
            ``Normal`` with ``batch_shape x m x dim_y`` mean and std (noise included). Each
            target depends on the context only, never on the other targets.
        """
        out = self._decode(state, x)
        if self.cfg.joint_head:
            mean, f_std, noise_std = self._joint_marginals(out)
            return Normal(mean.unsqueeze(-1), (f_std**2 + noise_std**2).sqrt().unsqueeze(-1))
        mean, raw = out.chunk(2, dim=-1)
        return Normal(mean, self._std(raw))

    def _joint_marginals(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return out[..., 0], self._std(out[..., 1]), self._std(out[..., 2])

    def joint_moments(self, state: ContextState, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Joint moments over a block of targets from the AND head.

        The function covariance is ``diag(s) C diag(s)`` with the correlation
        ``C = w K_rbf(z_i, z_j) + (1 - w) cos(u_i, u_j)``: positive semi-definite by construction,
        exactly 1 on the diagonal (identical inputs are perfectly correlated), and consistent
        under marginalisation because every per-target feature depends on its own input and the
        context only.

        Args:
            state: the context.
            x: ``batch_shape x m x dim_x`` targets.

        Returns:
            ``(mean, function_covariance, noise_variance)`` of shapes ``batch_shape x m``,
            ``batch_shape x m x m`` and ``batch_shape x m``.
        """
        if not self.cfg.joint_head:
            raise RuntimeError("this network has no joint head (CMANPConfig.joint_head=False)")
        out = self._decode(state, x)
        mean, f_std, noise_std = self._joint_marginals(out)
        r = self.cfg.joint_rank
        z = out[..., 3 : 3 + r]
        u = F.normalize(out[..., 3 + r : 3 + 2 * r], dim=-1)
        # ||z_i - z_j||^2 without the m x m x rank intermediate (Ax predicts 4096 points at once)
        sq_norm = z.pow(2).sum(-1)
        sq_dist = sq_norm.unsqueeze(-1) + sq_norm.unsqueeze(-2) - 2 * z @ z.transpose(-1, -2)
        sq_dist = sq_dist.clamp_min(0)
        w = torch.sigmoid(self.kernel_mix_logit)
        corr = w * torch.exp(-0.5 * sq_dist) + (1 - w) * (u @ u.transpose(-1, -2))
        cov = f_std.unsqueeze(-1) * corr * f_std.unsqueeze(-2)
        return mean, cov, noise_std**2

    def predict_joint(self, state: ContextState, x: Tensor) -> MultivariateNormal:
        """Joint predictive distribution of ``y`` over the ``m`` targets (noise included).

        Returns:
            ``MultivariateNormal`` with ``batch_shape x m`` mean and ``batch_shape x m x m``
            covariance.
        """
        mean, cov, noise_var = self.joint_moments(state, x)
        return MultivariateNormal(mean, cov + torch.diag_embed(noise_var))

    # ----------------------------------------------------------------------------- likelihoods
    def log_likelihood(self, state: ContextState, x: Tensor, y: Tensor) -> Tensor:
        """Mean marginal log-likelihood per target point: ``batch_shape``."""
        self._check_pair(x, y)
        return self.predict(state, x).log_prob(y).sum(-1).mean(-1)

    def joint_log_likelihood(
        self, state: ContextState, x: Tensor, y: Tensor, block_size: int | None = None
    ) -> Tensor:
        """Block-autoregressive joint log-likelihood per target point: ``batch_shape``.

        Blocks of ``block_size`` targets are scored jointly; the TRUE ``(x, y)`` of each block is
        then folded into the state before the next one (``None``: one block).
        """
        self._check_pair(x, y)
        m = x.shape[-2]
        block_size = m if block_size is None else block_size
        total = 0.0
        for start in range(0, m, block_size):
            xb, yb = x[..., start : start + block_size, :], y[..., start : start + block_size, :]
            total = total + self.predict_joint(state, xb).log_prob(yb.squeeze(-1))
            if start + block_size < m:
                state = self.update(state, xb, yb)
        return total / m

    def loss(self, xc: Tensor, yc: Tensor, xt: Tensor, yt: Tensor) -> Tensor:
        """Training loss: negative mean target log-likelihood on the one-shot path.

        For the AND head, the mean of the joint and the marginal terms (from one decoder pass).
        """
        state = self.encode(xc, yc)
        if not self.cfg.joint_head:
            return -self.log_likelihood(state, xt, yt).mean()
        self._check_pair(xt, yt)
        mean, cov, noise_var = self.joint_moments(state, xt)
        y = yt.squeeze(-1)
        var = torch.diagonal(cov, dim1=-2, dim2=-1) + noise_var
        marginal = Normal(mean, var.sqrt()).log_prob(y).mean(-1)
        joint = (
            MultivariateNormal(mean, cov + torch.diag_embed(noise_var)).log_prob(y) / y.shape[-1]
        )
        return -0.5 * (marginal + joint).mean()


def _check_finite(x: Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")


def _broadcast_batch(a: torch.Size, b: torch.Size, name_a: str, name_b: str) -> torch.Size:
    try:
        return torch.broadcast_shapes(a, b)
    except RuntimeError:
        raise ValueError(
            f"batch shapes do not match: {name_a} has {tuple(a)}, {name_b} has {tuple(b)}"
        ) from None


def state_size_bytes(state: ContextState) -> int:
    return sum(t.numel() * t.element_size() for t in state.tensors())


__all__ = ["CMAB", "CMANP", "CMANPConfig", "ContextState"]
