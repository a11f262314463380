"""What every attentive neural process here shares: inputs, decoder, predictive heads, losses.

A ``NeuralProcess`` embeds context points ``(x, y)`` and target inputs ``x`` (optionally with random
Fourier features of ``x``), lets an architecture-specific encoder turn the context into one
representation per layer, and decodes every target by cross-attending to those representations,
layer by layer, then mapping its features to a predictive distribution:

- marginal head: mean and standard deviation per output;
- joint (AND) head: mean, function std and noise std per target, plus per-target features whose
  kernel gives a correlation matrix, so a block of targets gets a joint Gaussian.

Subclasses (``CMANP`` here; ``TNPD`` and ``LBANP`` in ``surrogates``) provide the encoder
(``_build_encoder``, ``encode``, ``update``, ``empty_state``) and ``representations(state)``.
The module and parameter names set here are part of the checkpoint format.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import MultivariateNormal, Normal

from cmanp_bo.nn.layers import CrossAttentionLayer, mlp

if TYPE_CHECKING:
    from cmanp_bo.nn.cmanp import CMANPConfig


def shared_columns(flat: Tensor) -> Tensor:
    """``m``: which of the ``m`` target columns of ``flat`` (``b x m x d``) are the same point in
    every batch element (an acquisition's baseline, concatenated to each candidate)."""
    return (flat == flat[:1]).all(-1).all(0)


class NeuralProcess(nn.Module):
    """Base of the attentive neural processes: a ``CMANPConfig`` architecture with either head.

    Construction order (and so the random initialisation under a seed): Fourier matrix, context
    and query embedders, the subclass's encoder (``_build_encoder``), decoder, head.
    """

    #: Architecture name stored in checkpoints (see ``cmanp_bo.architectures``).
    arch: ClassVar[str]
    #: ``update`` costs O(new points) (``True``) or re-encodes the whole context (``False``).
    incremental_update: ClassVar[bool]

    def __init__(self, cfg: CMANPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        width_x = cfg.dim_x + 2 * cfg.fourier_features
        if cfg.fourier_features:
            self.register_buffer(
                "fourier_matrix", torch.randn(cfg.dim_x, cfg.fourier_features) * cfg.fourier_scale
            )
        self.embed_context = mlp(width_x + cfg.dim_y, d, cfg.embed_depth)
        self.embed_query = mlp(width_x + self.query_extra_width(cfg), d, cfg.embed_depth)
        self._build_encoder(cfg)
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
        return self.embed_query[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_query[0].weight.device

    # ----------------------------------------------------------------------------- encoder API
    @classmethod
    def query_extra_width(cls, cfg: CMANPConfig) -> int:
        """Width of the context readout that ``_query_inputs`` appends to a target's features."""
        if cfg.regression_features or cfg.polynomial_memory or cfg.hypothesis_count:
            raise ValueError(
                f"the {cls.arch} architecture has no regression memory "
                "(CMANPConfig.regression_features and hypothesis_count must be 0 and "
                "polynomial_memory false)"
            )
        return 0

    def _query_inputs(self, state: Any, x: Tensor) -> Tensor:
        """What the query embedder reads for targets ``x`` (``batch_shape x m x dim_x``)."""
        return self._features(x)

    def _build_encoder(self, cfg: CMANPConfig) -> None:
        """Create the encoder's modules (called between the embedders and the decoder)."""
        raise NotImplementedError

    def encode(self, x: Tensor, y: Tensor, block_size: int | None = None) -> Any:
        """The state of the context ``(x, y)`` (``batch_shape x n x dim_x``, ``... x dim_y``)."""
        raise NotImplementedError

    def update(self, state: Any, x: Tensor, y: Tensor) -> Any:
        """A new state that also holds ``(x, y)``; the input state is not modified."""
        raise NotImplementedError

    def empty_state(self, batch_shape: torch.Size | tuple[int, ...] = ()) -> Any:
        """The state of no context at all (predictions are then the prior's)."""
        raise NotImplementedError

    def representations(self, state: Any) -> Sequence[Tensor]:
        """Per decoder layer, the ``batch_shape x k x d_model`` tensor the targets attend to."""
        raise NotImplementedError

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
            check_finite(x, name)

    def _check_pair(self, x: Tensor, y: Tensor, finite: bool = True) -> torch.Size:
        """Validate a context pair; returns the broadcast batch shape of ``x`` and ``y``."""
        self._check_inputs(x, "x", self.cfg.dim_x, "dim_x", finite)
        self._check_inputs(y, "y", self.cfg.dim_y, "dim_y", finite)
        if x.shape[-2] != y.shape[-2]:
            raise ValueError(f"x holds {x.shape[-2]} points but y holds {y.shape[-2]}")
        return broadcast_batch(x.shape[:-2], y.shape[:-2], "x", "y")

    @staticmethod
    def _check_block_size(block_size: int | None) -> None:
        if block_size is not None and (
            not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1
        ):
            raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")

    # ----------------------------------------------------------------------------- inputs
    def _features(self, x: Tensor) -> Tensor:
        """``x`` and, if configured, its random Fourier features."""
        if not self.cfg.fourier_features:
            return x
        proj = (2 * math.pi) * (x @ self.fourier_matrix.to(x.dtype))
        return torch.cat([x, torch.sin(proj), torch.cos(proj)], dim=-1)

    def _context_tokens(self, x: Tensor, y: Tensor, batch_shape: torch.Size) -> Tensor:
        x = x.expand(*batch_shape, *x.shape[-2:])
        y = y.expand(*batch_shape, *y.shape[-2:])
        return self.embed_context(torch.cat([self._features(x), y], dim=-1))

    # ----------------------------------------------------------------------------- targets
    def _decode(self, state: Any, x: Tensor) -> Tensor:
        """Head outputs ``batch_shape x m x num_out``: targets read each layer's representation.

        Every target is decoded independently of the others, so target columns that are the same
        point in every batch element (an acquisition's baseline, concatenated to each candidate)
        are decoded once and broadcast: the result is the same, the cost is that of the distinct
        points. Gradients of such a shared column reach its copy in the first batch element (their
        sum over the batch is exact); in an acquisition function the shared columns are the
        constant baseline, whose gradient is discarded anyway.
        """
        self._check_inputs(x, "x", self.cfg.dim_x, "dim_x")
        memory = self.representations(state)  # validates the state
        if x.dim() >= 3 and len(state.batch_shape) == 0 and x.shape[:-2].numel() > 1:
            flat = x.reshape(-1, *x.shape[-2:])
            shared = shared_columns(flat)
            if shared.any():
                out = self._decode_with_shared(state, memory, flat, shared)
                return out.reshape(*x.shape[:-1], -1)
        return self._decode_points(state, memory, x)

    def _decode_with_shared(
        self, state: Any, memory: list[Tensor], x: Tensor, shared: Tensor
    ) -> Tensor:
        b = x.shape[0]
        idx_shared, idx_rest = shared.nonzero().squeeze(-1), (~shared).nonzero().squeeze(-1)
        out_shared = self._decode_points(state, memory, x[:1, idx_shared])
        parts = [out_shared.expand(b, *out_shared.shape[1:])]
        if idx_rest.numel():
            parts.append(self._decode_points(state, memory, x[:, idx_rest]))
        order = torch.cat([idx_shared, idx_rest]).argsort()
        return torch.cat(parts, dim=-2)[:, order]

    def _decode_points(self, state: Any, memory: list[Tensor], x: Tensor) -> Tensor:
        if len(state.batch_shape) == 0 and x.dim() > 2 and x.shape[:-2].numel() > 1:
            # Targets are decoded independently, so the t-batch of an unbatched context is
            # decoded as one set of targets: the same outputs, without copying the context's
            # representation into every batch element (qLogNEI's raw samples: b x 1 x d).
            out = self._run_decoder(state, memory, x.reshape(-1, x.shape[-1]))
            return out.reshape(*x.shape[:-1], out.shape[-1])
        return self._run_decoder(state, memory, x)

    def _run_decoder(self, state: Any, memory: list[Tensor], x: Tensor) -> Tensor:
        batch_shape = broadcast_batch(state.batch_shape, x.shape[:-2], "state", "x")
        query = self._query_inputs(state, x)
        h = self.embed_query(query)
        h = h.expand(*batch_shape, x.shape[-2], self.cfg.d_model)
        for layer, rep in zip(self.decoder, memory, strict=True):
            h = layer(h, rep)
        return self._head_outputs(self.head(h), query)

    def _head_outputs(self, out: Tensor, query: Tensor) -> Tensor:
        """The head's outputs from its last layer's (``out``) and the query's inputs; the
        identity here (``CMANP`` may add a readout to them)."""
        return out

    def _std(self, raw: Tensor) -> Tensor:
        return self.cfg.min_std + F.softplus(raw)

    def predict(self, state: Any, x: Tensor) -> Normal:
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

    def joint_moments(self, state: Any, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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
        return self.moments_from_outputs(self._decode(state, x), state)

    def head_outputs(self, state: Any, x: Tensor) -> Tensor:
        """The head's raw outputs ``batch_shape x m x num_out`` at the targets ``x``.

        Every target's outputs depend on its own input and the context only, so outputs of
        different calls can be concatenated and passed to ``moments_from_outputs``.
        """
        return self._decode(state, x)

    def moments_from_outputs(self, out: Tensor, state: Any = None) -> tuple[Tensor, Tensor, Tensor]:
        """``joint_moments`` from the head outputs (``head_outputs``) of ``m`` targets on the
        context ``state`` (needed only by a network whose correlation reads the context)."""
        mean, _, noise_std = self._joint_marginals(out)
        return mean, self.covariance_from_outputs(out, out, state), noise_std**2

    def for_task_dim(self, dim: int) -> NeuralProcess:
        """This network for tasks of ``dim`` input dimensions, zero-padded to ``dim_x``: the
        network itself unless a subclass adapts to the task's width
        (``CMANP.for_task_dim``)."""
        return self

    def covariance_from_outputs(self, out_a: Tensor, out_b: Tensor, state: Any = None) -> Tensor:
        """Function covariance ``batch_shape x m x p`` between the targets whose head outputs are
        ``out_a`` (``... x m x num_out``) and ``out_b`` (``... x p x num_out``; batch shapes
        broadcast): the block of the joint covariance of all ``m + p`` targets that
        ``moments_from_outputs`` of their concatenation would give, computed alone (``m p``
        entries, not ``(m + p)^2``). Here the correlation is the head's own (``state`` is not
        read); ``CMANP`` with ``hypothesis_residual`` takes it from its hypothesis memory."""
        r = self.cfg.joint_rank
        f_a, f_b = self._std(out_a[..., 1]), self._std(out_b[..., 1])
        z_a, z_b = out_a[..., 3 : 3 + r], out_b[..., 3 : 3 + r]
        u_a = F.normalize(out_a[..., 3 + r : 3 + 2 * r], dim=-1)
        u_b = F.normalize(out_b[..., 3 + r : 3 + 2 * r], dim=-1)
        # ||z_i - z_j||^2 without the m x p x rank intermediate (Ax predicts 4096 points at once)
        sq_a, sq_b = z_a.pow(2).sum(-1), z_b.pow(2).sum(-1)
        sq_dist = sq_a.unsqueeze(-1) + sq_b.unsqueeze(-2) - 2 * z_a @ z_b.transpose(-1, -2)
        sq_dist = sq_dist.clamp_min(0)
        w = torch.sigmoid(self.kernel_mix_logit)
        corr = w * torch.exp(-0.5 * sq_dist) + (1 - w) * (u_a @ u_b.transpose(-1, -2))
        return f_a.unsqueeze(-1) * corr * f_b.unsqueeze(-2)

    def predict_joint(self, state: Any, x: Tensor) -> MultivariateNormal:
        """Joint predictive distribution of ``y`` over the ``m`` targets (noise included).

        Returns:
            ``MultivariateNormal`` with ``batch_shape x m`` mean and ``batch_shape x m x m``
            covariance.
        """
        mean, cov, noise_var = self.joint_moments(state, x)
        return MultivariateNormal(mean, cov + torch.diag_embed(noise_var))

    # ----------------------------------------------------------------------------- likelihoods
    def log_likelihood(self, state: Any, x: Tensor, y: Tensor) -> Tensor:
        """Mean marginal log-likelihood per target point: ``batch_shape``."""
        self._check_pair(x, y)
        return self.predict(state, x).log_prob(y).sum(-1).mean(-1)

    def joint_log_likelihood(
        self, state: Any, x: Tensor, y: Tensor, block_size: int | None = None
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
        """Training loss: negative mean target log-likelihood on the one-shot path (a scalar,
        the mean of ``task_losses``)."""
        return self.task_losses(xc, yc, xt, yt).mean()

    def task_losses(self, xc: Tensor, yc: Tensor, xt: Tensor, yt: Tensor) -> Tensor:
        """Negative mean target log-likelihood per task: ``batch_shape``.

        For the AND head, the mean of the joint and the marginal terms (from one decoder pass).
        """
        state = self.encode(xc, yc)
        if not self.cfg.joint_head:
            return -self.log_likelihood(state, xt, yt)
        self._check_pair(xt, yt)
        mean, cov, noise_var = self.joint_moments(state, xt)
        y = yt.squeeze(-1)
        var = torch.diagonal(cov, dim1=-2, dim2=-1) + noise_var
        marginal = Normal(mean, var.sqrt()).log_prob(y).mean(-1)
        joint = (
            MultivariateNormal(mean, cov + torch.diag_embed(noise_var)).log_prob(y) / y.shape[-1]
        )
        return -0.5 * (marginal + joint)


def soft_cap(loss: Tensor, cap: float) -> Tensor:
    """``cap * asinh(loss / cap)``: the identity for ``|loss| << cap``, logarithmic beyond.

    Meta-training tasks framed from one to three context points can have targets hundreds of
    frame units away (an unbiased std of two nearly equal outcomes is tiny); their losses reach
    1e3 to 1e5 nats per point and, even with gradient clipping, dominate the batch's gradient
    direction and inflate Adam's second moments for hundreds of steps. Capping each task's loss
    softly keeps their gradient bounded (``|d/dloss| <= 1``, about ``cap / loss`` far out) while
    leaving ordinary tasks' objective unchanged.
    """
    if cap <= 0:
        raise ValueError(f"cap must be positive, got {cap}")
    return cap * torch.asinh(loss / cap)


def check_finite(x: Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")


def broadcast_batch(a: torch.Size, b: torch.Size, name_a: str, name_b: str) -> torch.Size:
    try:
        return torch.broadcast_shapes(a, b)
    except RuntimeError:
        raise ValueError(
            f"batch shapes do not match: {name_a} has {tuple(a)}, {name_b} has {tuple(b)}"
        ) from None


__all__ = ["NeuralProcess", "broadcast_batch", "check_finite", "soft_cap"]
