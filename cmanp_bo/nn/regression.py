"""A streamed Bayesian linear regression on random Fourier features: a per-target readout of the
context in constant memory.

A CMANP target reads the context only through fixed latents, a lossy summary that a small network
learns slowly (ours reproduced their own observations poorly at d >= 3). A Bayesian linear
regression on features ``phi(x)`` reads the context at each target exactly, and its sufficient
statistics are sums over the points, so they stream like the attention statistics:

    gram = sum_j phi(x_j) phi(x_j)^T,   moment = sum_j phi(x_j) y_j,   sq_sum = sum_j y_j^2

(``banks x m x m``, ``banks x m`` and a scalar per task: independent of n, exact under updates in
any grouping and order, never re-reading old points). With weights ``w ~ N(0, I)`` and noise
variance ``lam``, ``A = gram + lam I`` gives at a target ``x``

    mean = phi(x)^T A^{-1} moment,   var_f = lam phi(x)^T A^{-1} phi(x)

and the log evidence of the context,
``-1/2 [(sq_sum - moment^T A^{-1} moment) / lam + logdet A + (n - m) log lam + n log 2 pi]``.

Each bank uses random Fourier features of an RBF kernel with its own lengthscale
(``phi(x) = sqrt(2/m) cos(x W + b)``, ``W ~ N(0, 1/l^2)``); the banks' evidences give Bayesian
model-averaging weights. The network receives, per target, every bank's mean and log std, the
weights, and the averaged mean and log std (``readout``); the frequencies and noise levels are
trained with the network. This is the idea of a meta-learned Bayesian last layer (ALPaCA, Harrison
et al. 2018) used as an input to the neural process rather than as its output.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cmanp_bo.priors.bo import lengthscale_hypotheses, scaled_kernel

# Floor of every bank's noise variance (frame units): keeps A well conditioned.
MIN_NOISE = 1e-4
# Added to variances before their log is taken.
LOG_FLOOR = 1e-6
# Least variance a correlation is divided by (float64; far below any posterior variance).
CORRELATION_FLOOR = 1e-20


def readout_width(num_banks: int) -> int:
    """Features per target: mean and log std per bank, the banks' weights, averaged mean and std."""
    return 3 * num_banks + 2


@dataclass(frozen=True)
class RegressionStats:
    """Sufficient statistics of the absorbed points, kept in float64 whatever the network's dtype
    (sums of squares feed a linear solve; float32 rounding would be amplified by its condition).

    The three batch shapes broadcast to the state's; each is only as large as its inputs need:
    ``gram`` depends on x alone, so fantasies (extra batch dims of y only) share it.

    Attributes:
        gram: ``batch_shape x banks x m x m``, ``sum phi phi^T``.
        moment: ``batch_shape x banks x m``, ``sum phi y``.
        sq_sum: ``batch_shape``, ``sum y^2``.
    """

    gram: Tensor
    moment: Tensor
    sq_sum: Tensor

    @property
    def batch_shape(self) -> torch.Size:
        return torch.broadcast_shapes(
            self.gram.shape[:-3], self.moment.shape[:-2], self.sq_sum.shape
        )

    def expand(self, batch_shape: torch.Size) -> RegressionStats:
        return RegressionStats(
            self.gram.expand(*batch_shape, *self.gram.shape[-3:]),
            self.moment.expand(*batch_shape, *self.moment.shape[-2:]),
            self.sq_sum.expand(batch_shape),
        )

    def tensors(self) -> list[Tensor]:
        return [self.gram, self.moment, self.sq_sum]


@dataclass(frozen=True)
class HypothesisStats(RegressionStats):
    """``HypothesisMemory``'s statistics, and the context's points themselves while it holds at
    most the memory's ``exact_points`` of them (then ``x`` and ``y`` are ``None`` for good).

    Attributes:
        x: ``batch_shape x n x dim_x`` context inputs (float64), or ``None``.
        y: ``batch_shape x n x 1`` context outputs (float64), or ``None``.
    """

    x: Tensor | None = None
    y: Tensor | None = None

    def expand(self, batch_shape: torch.Size) -> HypothesisStats:
        base = RegressionStats.expand(self, batch_shape)
        if self.x is None:
            return HypothesisStats(*base.tensors())
        x = self.x.expand(*batch_shape, *self.x.shape[-2:])
        return HypothesisStats(*base.tensors(), x, self.y.expand(*batch_shape, *self.y.shape[-2:]))

    def tensors(self) -> list[Tensor]:
        extra = [self.x, self.y] if self.x is not None else []
        return RegressionStats.tensors(self) + extra


def _empty_stats(batch_shape: torch.Size, banks: int, m: int, device) -> RegressionStats:
    dtype = torch.float64
    return RegressionStats(
        torch.zeros(banks, m, m, dtype=dtype, device=device).expand(*batch_shape, banks, m, m),
        torch.zeros(banks, m, dtype=dtype, device=device).expand(*batch_shape, banks, m),
        torch.zeros((), dtype=dtype, device=device).expand(batch_shape),
    )


def _absorb_features(stats: RegressionStats, phi: Tensor, y: Tensor) -> RegressionStats:
    """``stats`` plus the points with features ``phi`` (``x's batch x banks x u x m``) and
    outputs ``y`` (``y's batch x u x 1``); the batch shapes broadcast."""
    y = y.double()
    gram = phi.transpose(-1, -2) @ phi
    moment = (phi.transpose(-1, -2) @ y.unsqueeze(-3)).squeeze(-1)
    sq = y.pow(2).sum((-1, -2))
    return RegressionStats(stats.gram + gram, stats.moment + moment, stats.sq_sum + sq)


def _cached_posterior(
    memory: nn.Module,
    name: str,
    stats: RegressionStats,
    num_points: int,
    cache: dict | None,
    compute: str = "_posterior",
) -> tuple[Tensor, ...]:
    """``memory._posterior(stats, num_points)`` (or the method named ``compute``), kept in
    ``cache`` (the state's) when nothing in it needs gradients, so repeated predictions on one
    context factor it once."""
    key = (name, id(memory))
    post = cache.get(key) if cache is not None else None
    if post is None:
        post = getattr(memory, compute)(stats, num_points)
        if cache is not None and not any(t.requires_grad for t in post):
            cache[key] = post
    return post


def _keep_heaviest(
    weights: Tensor, coef: Tensor, count: int, min_share: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``count`` heaviest of ``weights`` (``batch x C``) with at least ``min_share`` of the
    heaviest one's weight: their indices, weights and ``coef`` renormalised over the kept
    ones (dropped slots: weight and coefficient 0), the heaviest first. Only as many slots as
    the task keeping the most needs are returned: a slot no task keeps would be computed for
    nothing."""
    top, idx = weights.topk(min(count, weights.shape[-1]), -1)
    weight, kept_coef = _keep_leading(top, coef.gather(-1, idx), min_share)
    return idx[..., : weight.shape[-1]], weight, kept_coef


def _keep_leading(top: Tensor, coef: Tensor, min_share: float) -> tuple[Tensor, Tensor]:
    """``_keep_heaviest`` on weights already sorted, the heaviest first (``top``, with their
    ``coef``): those with at least ``min_share`` of the first, renormalised, in as many
    leading slots as the task keeping the most needs."""
    kept = top >= min_share * top[..., :1]
    slots = max(int(kept.sum(-1).max()), 1) if kept.numel() else top.shape[-1]
    top, coef, kept = top[..., :slots], coef[..., :slots], kept[..., :slots]
    top = top * kept
    total = top.sum(-1, keepdim=True)
    return top / total, coef * kept / total


def _mixture_readout(
    mean: Tensor, var: Tensor, weight: Tensor, coef: Tensor, noise: Tensor, dtype: torch.dtype
) -> Tensor:
    """The hypothesis memory's readout from its kept components: per target the mixture's
    mean, log std of the function and log std of the noise (``... x t x 3`` in ``dtype``).
    ``mean`` and ``var`` (each component's mean and unit-scale variance) are ``... x k x t``,
    ``weight`` and ``coef`` (the variance's coefficient) ``... x k``, ``noise`` ``...``."""
    w = weight.unsqueeze(-1)
    avg_mean = (w * mean).sum(-2)
    second = (w * mean.pow(2)).sum(-2)
    avg_var = ((coef.unsqueeze(-1) * var).sum(-2) + second - avg_mean.pow(2)).clamp_min(0)
    noise = noise[..., None].expand_as(avg_mean)
    parts = [avg_mean, 0.5 * (avg_var + LOG_FLOOR).log(), 0.5 * noise.log()]
    return torch.stack(parts, -1).to(dtype)


def _gather_components(values: Tensor, idx: Tensor, trailing: int) -> Tensor:
    """``values`` (``batch x C x ...`` with ``trailing`` trailing dims) at the component
    indices ``idx`` (``batch x k``)."""
    shape = values.shape[-trailing:]
    return values.gather(
        -1 - trailing, idx.reshape(*idx.shape, *(1,) * trailing).expand(*idx.shape, *shape)
    )


class _StreamedStatistics(nn.Module):
    """What every memory shares: statistics of ``features`` (``banks x m`` per point) summed
    over the context. Subclasses define ``features``, ``num_banks`` and ``num_features``."""

    num_features: int

    @property
    def num_banks(self) -> int:
        raise NotImplementedError

    def features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def empty(self, batch_shape: torch.Size) -> RegressionStats:
        device = next(self.buffers()).device
        return _empty_stats(batch_shape, self.num_banks, self.num_features, device)

    def stats(self, x: Tensor, y: Tensor, batch_shape: torch.Size) -> RegressionStats:
        """Statistics of the points ``x`` (``... x n x dim_x``), ``y`` (``... x n x 1``)."""
        return self.absorb(self.empty(batch_shape), x, y)

    def absorb(self, stats: RegressionStats, x: Tensor, y: Tensor) -> RegressionStats:
        """Add a block of points to ``stats``; cost O(u m^2) per bank."""
        return _absorb_features(stats, self.features(x), y)


class RegressionMemory(_StreamedStatistics):
    """Banks of random-Fourier-feature Bayesian linear regressions over the context.

    Args:
        dim_x: input dimension (a zero, padded, input contributes nothing).
        num_features: features ``m`` per bank.
        lengthscales: one RBF lengthscale per bank (units of x), the initial frequency scale.
        noise: initial noise variance of every bank (frame units).
    """

    def __init__(
        self, dim_x: int, num_features: int, lengthscales: Sequence[float], noise: float
    ) -> None:
        super().__init__()
        ls = torch.tensor([float(v) for v in lengthscales])
        self.num_features = num_features
        self.frequencies = nn.Parameter(
            torch.randn(len(ls), dim_x, num_features) / ls[:, None, None]
        )
        self.register_buffer("phases", torch.rand(len(ls), 1, num_features) * (2 * math.pi))
        self.log_noise = nn.Parameter(torch.full((len(ls),), math.log(noise - MIN_NOISE)))

    @property
    def num_banks(self) -> int:
        return self.frequencies.shape[0]

    @property
    def readout_width(self) -> int:
        return readout_width(self.num_banks)

    def noise(self) -> Tensor:
        """Noise variance per bank: ``banks``."""
        return MIN_NOISE + self.log_noise.exp()

    def features(self, x: Tensor) -> Tensor:
        """``batch_shape x n x dim_x`` -> ``batch_shape x banks x n x m``, in float64."""
        proj = x.double().unsqueeze(-3) @ self.frequencies.double() + self.phases.double()
        return math.sqrt(2.0 / self.num_features) * torch.cos(proj)

    # ----------------------------------------------------------------------------- targets
    def _posterior(self, stats: RegressionStats, num_points: int) -> tuple[Tensor, ...]:
        """Noise variances, the Cholesky factor of ``A``, ``A^{-1} moment`` and the banks' log
        weights (float64)."""
        lam = self.noise().double()
        gram = 0.5 * (stats.gram + stats.gram.transpose(-1, -2))
        eye = torch.eye(self.num_features, dtype=torch.float64, device=gram.device)
        chol = torch.linalg.cholesky(gram + lam[:, None, None] * eye)
        moment = stats.moment.unsqueeze(-1)
        alpha = torch.cholesky_solve(moment, chol).squeeze(-1)
        quad = stats.sq_sum.unsqueeze(-1) - (moment.squeeze(-1) * alpha).sum(-1)
        logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        n, m = num_points, self.num_features
        log_evidence = -0.5 * (
            quad / lam + logdet + (n - m) * lam.log() + n * math.log(2 * math.pi)
        )
        return lam, chol, alpha, torch.log_softmax(log_evidence, dim=-1)

    def readout(
        self, stats: RegressionStats, num_points: int, x: Tensor, cache: dict | None = None
    ) -> Tensor:
        """Per-target features ``batch_shape x n x (3 banks + 2)`` in ``x``'s dtype.

        Per bank the posterior mean and log std of the function, then the banks' model-averaging
        weights (from their evidence) and the averaged mean and log std. Each target's features
        depend on its own input and the context only.

        Args:
            stats: the context's statistics.
            num_points: how many points they hold.
            x: ``batch_shape' x n x dim_x`` targets.
            cache: where to keep the context-only factors between calls (inference).
        """
        lam, chol, alpha, log_w = _cached_posterior(self, "regression", stats, num_points, cache)
        phi = self.features(x)  # batch x banks x n x m
        mean = (phi @ alpha.unsqueeze(-1)).squeeze(-1)  # batch x banks x n
        half = torch.linalg.solve_triangular(chol, phi.transpose(-1, -2), upper=False)
        var = lam[:, None] * half.pow(2).sum(-2)
        w = log_w.exp().unsqueeze(-1)  # batch x banks x 1
        avg_mean = (w * mean).sum(-2)
        avg_var = ((w * (var + mean.pow(2))).sum(-2) - avg_mean.pow(2)).clamp_min(0)
        parts = [
            mean.transpose(-1, -2),
            0.5 * (var + LOG_FLOOR).log().transpose(-1, -2),
            w.transpose(-1, -2),
            avg_mean.unsqueeze(-1),
            0.5 * (avg_var + LOG_FLOOR).log().unsqueeze(-1),
        ]
        batch = torch.broadcast_shapes(*(t.shape[:-2] for t in parts))
        n = x.shape[-2]
        return torch.cat([t.expand(*batch, n, t.shape[-1]) for t in parts], -1).to(x.dtype)


# The polynomial memory's grid: prior variances of the weights and noise variances (frame
# units). 5 x 6 settings, 10 distinct ratios noise / prior variance, so 10 factorisations.
POLY_PRIOR_VARIANCES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
POLY_NOISES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: Features per target of ``PolynomialMemory.readout``.
POLY_READOUT_WIDTH = 3


class PolynomialMemory(_StreamedStatistics):
    """A Bayesian quadratic regression over the context, model-averaged over a grid of prior
    and noise variances, streamed in constant memory.

    With ``u = 2 x - 1`` the features are ``phi(x) = [1, u_i, r u_i u_j (i <= j)]``
    (``m = 1 + d + d (d + 1) / 2``; ``r = interaction``), the weights ``w ~ N(0, s I)`` and the
    noise variance ``lam``. The functions of BoTorch's lengthscale hyperprior are long compared with
    the cube (median 4-13 times its side for d = 2..10), so over the cube most are close to a
    quadratic; on its own this readout scores 0.1-0.7 nats per point above the networks
    trained without it at d = 6..10 and n >= 64 on held-out prior tasks
    (experiments/polynomial_baseline.py). The settings ``(s, lam)`` share one statistic
    ``G = sum phi phi^T``, ``M = sum phi y``, ``sum y^2``: with ``rho = lam / s``

        mean = phi^T (G + rho I)^{-1} M,    var_f = lam phi^T (G + rho I)^{-1} phi,
        log evidence = -1/2 [(sum y^2 - M^T (G + rho I)^{-1} M) / lam + n log lam
                             + logdet(G + rho I) - m log rho + n log 2 pi],

    so the grid costs one Cholesky factor per distinct ``rho``. The readout is the evidence-
    weighted (Bayesian model-averaged) mean, log std of the function and log std of the noise.
    It has no trainable weights: the network learns how far to trust it.

    A zero-padded input dimension (``u = -1``) adds features that repeat the bias and the linear
    terms: they raise those terms' prior variance, which the grid over ``s`` absorbs.

    Args:
        dim_x: input dimension.
        prior_variances / noises: the grid (``POLY_PRIOR_VARIANCES`` x ``POLY_NOISES``).
        interaction: scale ``r`` of the quadratic features relative to the linear ones.
    """

    def __init__(
        self,
        dim_x: int,
        prior_variances: Sequence[float] = POLY_PRIOR_VARIANCES,
        noises: Sequence[float] = POLY_NOISES,
        interaction: float = 0.5,
    ) -> None:
        super().__init__()
        if not (prior_variances and noises and interaction > 0):
            raise ValueError("need a non-empty grid and interaction > 0")
        if min(*prior_variances, *noises) <= 0:
            raise ValueError("prior variances and noises must be > 0")
        self.dim_x, self.interaction = dim_x, float(interaction)
        rows, cols = torch.triu_indices(dim_x, dim_x)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        self.num_features = 1 + dim_x + rows.numel()
        grid_s = torch.tensor([float(v) for v in prior_variances], dtype=torch.float64)
        grid_lam = torch.tensor([float(v) for v in noises], dtype=torch.float64)
        s, lam = torch.meshgrid(grid_s, grid_lam, indexing="ij")
        log_rho = (lam / s).log().reshape(-1)
        # distinct ratios up to rounding (the grid is usually in decades)
        ratios, which = torch.unique(log_rho.mul(1e6).round(), return_inverse=True)
        self.register_buffer("rho", (ratios / 1e6).exp(), persistent=False)
        self.register_buffer("which", which, persistent=False)
        self.register_buffer("lam", lam.reshape(-1), persistent=False)

    def features(self, x: Tensor) -> Tensor:
        """``batch_shape x n x dim_x`` -> ``batch_shape x 1 x n x m``, in float64."""
        u = 2 * x.double() - 1
        pairs = self.interaction * u[..., self.pair_rows] * u[..., self.pair_cols]
        ones = torch.ones_like(u[..., :1])
        return torch.cat([ones, u, pairs], dim=-1).unsqueeze(-3)

    num_banks = 1

    def _posterior(self, stats: RegressionStats, num_points: int) -> tuple[Tensor, ...]:
        """Per distinct ratio the Cholesky factor of ``G + rho I`` and ``(G + rho I)^{-1} M``,
        and the settings' log weights (float64)."""
        m, n = self.num_features, num_points
        gram = 0.5 * (stats.gram + stats.gram.transpose(-1, -2))  # batch x 1 x m x m
        eye = torch.eye(m, dtype=torch.float64, device=gram.device)
        chol = torch.linalg.cholesky(gram + self.rho[:, None, None] * eye)  # batch x R x m x m
        moment = stats.moment.unsqueeze(-1)  # batch x 1 x m x 1
        alpha = torch.cholesky_solve(moment, chol).squeeze(-1)  # batch x R x m
        fit = stats.sq_sum.unsqueeze(-1) - (moment.squeeze(-1) * alpha).sum(-1)  # batch x R
        logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1) - m * self.rho.log()
        lam = self.lam
        log_evidence = -0.5 * (
            fit[..., self.which] / lam
            + n * lam.log()
            + logdet[..., self.which]
            + n * math.log(2 * math.pi)
        )
        return chol, alpha, torch.log_softmax(log_evidence, dim=-1)

    def readout(
        self, stats: RegressionStats, num_points: int, x: Tensor, cache: dict | None = None
    ) -> Tensor:
        """Per-target ``batch_shape x n x 3``: the model-averaged mean, log std of the function
        and log std of the noise, in ``x``'s dtype (a target's features depend on its own input
        and the context only)."""
        chol, alpha, log_w = _cached_posterior(self, "polynomial", stats, num_points, cache)
        phi = self.features(x)  # batch x 1 x n x m
        mean = (phi @ alpha.unsqueeze(-1)).squeeze(-1)  # batch x R x n
        half = torch.linalg.solve_triangular(chol, phi.transpose(-1, -2), upper=False)
        quad = half.pow(2).sum(-2)  # batch x R x n
        w = log_w.exp().unsqueeze(-1)  # batch x K x 1
        mean_k, var_k = mean[..., self.which, :], self.lam[:, None] * quad[..., self.which, :]
        avg_mean = (w * mean_k).sum(-2)
        avg_var = ((w * (var_k + mean_k.pow(2))).sum(-2) - avg_mean.pow(2)).clamp_min(0)
        noise = (w * self.lam[:, None]).sum(-2).expand_as(avg_mean)
        parts = [avg_mean, 0.5 * (avg_var + LOG_FLOOR).log(), 0.5 * noise.log()]
        return torch.stack(parts, -1).to(x.dtype)


# The hypothesis memory's grids. Signal variances s in frame units: the frame scales the context
# to unit spread, but a long lengthscale makes the in-cube spread a small part of the signal
# (held-out prior tasks: median 24-214 frame units at d = 2..6, experiments/hypothesis_bma.py).
# Noise-to-signal variance ratios r: the prior's noise std is 0.1% to 10% of the signal's. The
# scale s factors out of the posterior, so the grid costs one factorisation per bank and ratio.
HYPOTHESIS_SIGNAL_VARIANCES = tuple(4.0**k for k in range(-2, 8))
HYPOTHESIS_NOISE_RATIOS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
HYPOTHESIS_KERNELS = ("rbf", "matern")
#: Features per target of ``HypothesisMemory.readout``.
HYPOTHESIS_READOUT_WIDTH = 3
MATERN_NU = 2.5


class HypothesisMemory(_StreamedStatistics):
    """A Bayesian model average of random-feature GP regressions over per-dimension (ARD)
    lengthscale hypotheses, streamed in constant memory.

    ``RegressionMemory``'s banks are isotropic; the prior (and a fitted GP) has a lengthscale per
    dimension, and most of the networks' gap to a fitted GP on held-out prior tasks is there
    (experiments/hypothesis_bma.py). Here each bank is one hypothesis: ``hypotheses``
    lengthscale vectors drawn once from BoTorch's dimension-scaled log-normal hyperprior
    (``cmanp_bo.priors.bo.lengthscale_hyperprior(dim_x)``), each with RBF and Matern-5/2 random
    Fourier features (``m`` features plus a constant for the mean). With weights ``N(0, s)`` and
    noise variance ``r s``, ``A = G + r I`` (``G = sum phi phi^T``, ``M = sum phi y``):

        mean = phi^T A^{-1} M,   var_f = r s phi^T A^{-1} phi,
        log evidence = -1/2 [(sum y^2 - M^T A^{-1} M) / (r s) + n log(r s)
                             + logdet A - m log r + n log 2 pi],

    averaged over the banks x ``HYPOTHESIS_NOISE_RATIOS`` x ``HYPOTHESIS_SIGNAL_VARIANCES`` by
    evidence. Nothing is trained: the frequencies are fixed buffers (saved with the network).
    A zero-padded input adds nothing to ``x W``.

    Args:
        dim_x: input dimension (the hyperprior's d).
        hypotheses: lengthscale vectors K (banks: ``K x len(HYPOTHESIS_KERNELS)``).
        num_features: random features m per bank.
        seed: seed of the hypotheses and features.
        short_share: share of the hypotheses divided by ``short_factor`` (evenly spread;
            ``cmanp_bo.priors.bo.lengthscale_hypotheses``), to match a training prior that
            shortens that share of its tasks (``BOPriorSampler(short_share=...)``).
        prior_dim: draw the hypotheses from the hyperprior of this many dimensions instead
            of ``dim_x``'s (0: ``dim_x``): the same draws times ``sqrt(prior_dim / dim_x)``, as
            the hyperprior's median grows as ``sqrt(d)``. A network padded to ``dim_x`` inputs
            draws its bank for ``dim_x``, too long for a task of fewer dimensions.
        exact_points: while the context holds at most this many points, the state keeps them
            too and the readout is the same average computed exactly, in kernel form (an
            ``n x n`` factor per bank and ratio; ``exact_readout``), instead of on the random
            features. 0: never. Beyond it the points are dropped and the streamed statistics,
            kept all along, take over; so the state is bounded by ``exact_points``, not n.
    """

    #: components (ratio, bank) kept per task in the exact readout, the heaviest first, and
    #: their least share of the heaviest one's weight
    EXACT_COMPONENTS = 32
    EXACT_MIN_WEIGHT = 1e-4
    #: the marginal readout on the random features keeps every (ratio, bank) component with
    #: at least this share of the heaviest one's weight: the dropped ones' total is at most
    #: ``R B`` times it (6.4e-10 for 5 ratios x 128 banks), below float32's resolution, and
    #: as the evidence sharpens with n few components are left (hartmann6, uniform points:
    #: 162 of 640 at n = 130, 95 at 300, 6 at 600; experiments/readout_pruning.py)
    MARGINAL_MIN_WEIGHT = 1e-12

    def __init__(
        self,
        dim_x: int,
        hypotheses: int,
        num_features: int,
        seed: int = 0,
        short_share: float = 0.0,
        short_factor: float = 16.0,
        exact_points: int = 0,
        prior_dim: int = 0,
    ) -> None:
        super().__init__()
        if hypotheses < 1 or num_features < 1:
            raise ValueError("need hypotheses >= 1 and num_features >= 1")
        if exact_points < 0:
            raise ValueError(f"exact_points must be >= 0, got {exact_points!r}")
        if prior_dim < 0:
            raise ValueError(f"prior_dim must be >= 0, got {prior_dim!r}")
        self.exact_points = exact_points
        self.prior_dim = prior_dim or dim_x
        gen = torch.Generator().manual_seed(seed)
        ls = lengthscale_hypotheses(dim_x, hypotheses, short_share, short_factor, gen)
        if prior_dim:  # the same draws from the hyperprior of prior_dim dimensions
            ls = ls * math.sqrt(prior_dim / dim_x)
        freqs, phases = [], []
        for kind in HYPOTHESIS_KERNELS:
            z = torch.randn(hypotheses, dim_x, num_features, generator=gen)
            if kind == "matern":  # multivariate t with 2 nu degrees of freedom
                dof = int(2 * MATERN_NU)
                chi2 = torch.randn(hypotheses, 1, num_features, dof, generator=gen).pow(2).sum(-1)
                z = z * (2 * MATERN_NU / chi2).sqrt()
            freqs.append(z / ls[:, :, None])
            phases.append(torch.rand(hypotheses, 1, num_features, generator=gen) * 2 * math.pi)
        self.num_features = num_features + 1  # and the constant
        self.register_buffer("lengthscales", ls.double(), persistent=False)  # K x dim_x
        self.register_buffer("frequencies", torch.cat(freqs).double())
        self.register_buffer("phases", torch.cat(phases).double())
        grid = [HYPOTHESIS_NOISE_RATIOS, HYPOTHESIS_SIGNAL_VARIANCES]
        r, s = (torch.tensor(g, dtype=torch.float64) for g in grid)
        self.register_buffer("ratios", r, persistent=False)
        self.register_buffer("scales", s, persistent=False)

    @property
    def num_banks(self) -> int:
        return self.frequencies.shape[0]

    def for_prior_dim(self, prior_dim: int) -> HypothesisMemory:
        """A copy whose bank holds the same draws from the hyperprior of ``prior_dim``
        dimensions (as ``prior_dim=`` at construction): lengthscales times
        ``sqrt(prior_dim / self.prior_dim)``, frequencies over it; the phases are shared."""
        if isinstance(prior_dim, bool) or not isinstance(prior_dim, int) or prior_dim < 1:
            raise ValueError(f"prior_dim must be a positive int, got {prior_dim!r}")
        factor = math.sqrt(prior_dim / self.prior_dim)
        new = copy.copy(self)
        new._buffers = dict(self._buffers)
        new.lengthscales = self.lengthscales * factor
        new.frequencies = self.frequencies / factor
        new.prior_dim = prior_dim
        return new

    def empty(self, batch_shape: torch.Size) -> HypothesisStats:
        base = super().empty(batch_shape)
        if not self.exact_points:
            return HypothesisStats(*base.tensors())
        dev, dim = base.gram.device, self.frequencies.shape[-2]
        x = torch.zeros(*batch_shape, 0, dim, dtype=torch.float64, device=dev)
        return HypothesisStats(*base.tensors(), x, x[..., :1])

    def absorb(self, stats: RegressionStats, x: Tensor, y: Tensor) -> HypothesisStats:
        """Add a block of points to ``stats``; the points themselves are kept while the context
        holds at most ``exact_points`` (batch shapes broadcast)."""
        base = super().absorb(stats, x, y)
        old_x = getattr(stats, "x", None)
        if old_x is None or old_x.shape[-2] + x.shape[-2] > self.exact_points:
            return HypothesisStats(*base.tensors())
        old_y, x, y = stats.y, x.double(), y.double()
        batch = torch.broadcast_shapes(
            old_x.shape[:-2], old_y.shape[:-2], x.shape[:-2], y.shape[:-2]
        )
        xs = torch.cat([old_x.expand(*batch, -1, -1), x.expand(*batch, -1, -1)], -2)
        ys = torch.cat([old_y.expand(*batch, -1, -1), y.expand(*batch, -1, -1)], -2)
        return HypothesisStats(*base.tensors(), xs, ys)

    def features(self, x: Tensor) -> Tensor:
        """``batch_shape x n x dim_x`` -> ``batch_shape x banks x n x (m + 1)``, in float64."""
        m = self.frequencies.shape[-1]
        proj = x.double().unsqueeze(-3) @ self.frequencies.double() + self.phases.double()
        phi = math.sqrt(2.0 / m) * torch.cos(proj)
        return torch.cat([phi, torch.ones_like(phi[..., :1])], -1)

    def _gram(self, stats: RegressionStats) -> Tensor:
        """``G``, symmetrised: ``batch x B x m x m`` (float64)."""
        return 0.5 * (stats.gram + stats.gram.transpose(-1, -2))

    def _posterior(
        self, stats: RegressionStats, num_points: int, gram: Tensor | None = None
    ) -> tuple[Tensor, ...]:
        """Per ratio and bank ``A^{-1} M`` and two sums of the settings' evidence weights over
        the scales: the weight of each (ratio, bank), which the mean needs, and its expected
        noise variance ``sum_s w r s``, which scales the function variance (float64, ``batch
        x R x B``). The Cholesky factors of ``G + r I`` are made one ratio at a time and not
        kept (all of them are 5 x 128 x 65^2 doubles, 22 MB per task, for 64 hypotheses of
        64 features); ``_factors`` remakes those of the components a readout keeps.
        ``gram``: ``_gram(stats)``, where the caller has it."""
        m, n = self.num_features, num_points
        r, s = self.ratios, self.scales
        gram = self._gram(stats) if gram is None else gram  # b x B x m x m
        eye = torch.eye(m, dtype=torch.float64, device=gram.device)
        moment = stats.moment.unsqueeze(-1)  # b x B x m x 1
        alphas, fits, logdets = [], [], []
        for ratio in r:
            chol = torch.linalg.cholesky(gram + ratio * eye)  # b x B x m x m
            alpha = torch.cholesky_solve(moment, chol).squeeze(-1)  # batches broadcast
            alphas.append(alpha)
            fits.append(stats.sq_sum[..., None] - (moment.squeeze(-1) * alpha).sum(-1))
            logdets.append(2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1))
            del chol
        alpha = torch.stack(alphas, -3)  # b x R x B x m
        fit = torch.stack(fits, -2)  # b x R x B
        logdet = torch.stack(logdets, -2) - m * r.log()[:, None]  # b x R x B
        lam = (r[:, None] * s)[:, :, None]  # R x S x 1
        log_ev = -0.5 * (
            fit.unsqueeze(-2) / lam
            + n * lam.log()
            + logdet.unsqueeze(-2)
            + n * math.log(2 * math.pi)
        )  # b x R x S x B
        shape = log_ev.shape
        w = torch.softmax(log_ev.flatten(-3), -1).reshape(shape)  # b x R x S x B
        noise_w = (w * lam).sum(-2)  # b x R x B
        return alpha, w.sum(-2), noise_w

    def _factors(self, gram: Tensor, idx: Tensor) -> Tensor:
        """Cholesky factors of ``G + r I`` (``gram``: ``_gram(stats)``) for the (ratio, bank)
        components ``idx`` (``batch x k``, indices into the flattened ``R x B`` grid):
        ``batch x k x m x m``."""
        n_b, m = self.num_banks, self.num_features
        gram = _gather_components(gram.expand(*idx.shape[:-1], n_b, m, m), idx % n_b, 2)
        eye = torch.eye(m, dtype=torch.float64, device=gram.device)
        ratio = self.ratios[idx // n_b]  # batch x k
        return torch.linalg.cholesky(gram + ratio[..., None, None] * eye)

    def readout(
        self, stats: RegressionStats, num_points: int, x: Tensor, cache: dict | None = None
    ) -> Tensor:
        """Per-target ``batch_shape x n x 3``: the model-averaged mean, log std of the function
        and log std of the noise, in ``x``'s dtype (a target's features depend on its own input
        and the context only). Exact (``exact_readout``) while the state holds the points."""
        if getattr(stats, "x", None) is not None and num_points > 0:
            return self.exact_readout(stats, x, cache)
        post = _cached_posterior(
            self, "hypothesis-marginal", stats, num_points, cache, "_marginal_feature_components"
        )
        mean, half = self._feature_terms(post, x.double())  # b x k x n, b x k x m x n
        weight, coef = post[2], post[3]  # the mean does not depend on s
        return _mixture_readout(mean, half.pow(2).sum(-2), weight, coef, coef.sum(-1), x.dtype)

    def _exact_posterior(self, stats: HypothesisStats, num_points: int) -> tuple[Tensor, ...]:
        """The kernel form of ``_posterior`` on the kept points (the random features' limit):
        per task the ``EXACT_COMPONENTS`` heaviest (ratio, bank) components' factors of
        ``C = K + 1 + r I``, ``C^{-1} y``, lengthscales and kernel, their weights and expected
        signal variances (renormalised over the kept ones), and the expected noise variance.
        A factorisation that fails gets no weight."""
        xc, yc = stats.x, stats.y
        batch = torch.broadcast_shapes(xc.shape[:-2], yc.shape[:-2])
        xc, yc = xc.expand(*batch, -1, -1), yc.expand(*batch, -1, -1)
        n, hyps = xc.shape[-2], self.lengthscales.shape[0]
        ls = self.lengthscales.double()  # a float32 network casts its buffers
        z = xc.unsqueeze(-3) / ls[:, None, :]  # b x K x n x d
        kcc = torch.cat([scaled_kernel(kind, z, z) for kind in HYPOTHESIS_KERNELS], -3) + 1.0
        r, s = self.ratios.double(), self.scales.double()
        y = yc.unsqueeze(-3)  # b x 1 x n x 1
        alphas, fits, logdets, fails = [], [], [], []
        for ratio in r:  # one ratio's factors at a time: all R x B are 84 MB at n = 128
            chol, failed = self._kernel_factors(kcc, ratio)  # b x B x n x n, b x B
            alpha = torch.cholesky_solve(y.expand(*chol.shape[:-1], 1), chol)  # b x B x n x 1
            alphas.append(alpha.squeeze(-1))
            fits.append((y * alpha).sum((-1, -2)))
            logdets.append(2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1))
            fails.append(failed)
            del chol
        alpha, fit = torch.stack(alphas, -3), torch.stack(fits, -2)  # b x R x B (x n)
        logdet, failed = torch.stack(logdets, -2), torch.stack(fails, -2)
        s_ = s[:, None]  # S x 1
        log_ev = -0.5 * (
            fit.unsqueeze(-2) / s_ + logdet.unsqueeze(-2) + n * s_.log() + n * math.log(2 * math.pi)
        )  # b x R x S x B
        log_ev = log_ev.masked_fill(failed.unsqueeze(-2), -math.inf)
        shape = log_ev.shape
        w = torch.softmax(log_ev.flatten(-3), -1).reshape(shape)
        w_rb, sw_rb = w.sum(-2).flatten(-2), (w * s_).sum(-2)  # b x RB, b x R x B
        noise = (sw_rb * r[:, None]).sum((-2, -1))  # b
        idx, weight, sig = _keep_heaviest(
            w_rb, sw_rb.flatten(-2), self.EXACT_COMPONENTS, self.EXACT_MIN_WEIGHT
        )
        alpha_k = _gather_components(alpha.flatten(-3, -2), idx, 1)  # b x k x n
        n_b = kcc.shape[-3]  # banks: len(HYPOTHESIS_KERNELS) x hyps
        bank = idx % n_b
        chol_k, _ = self._kernel_factors(_gather_components(kcc, bank, 2), r[idx // n_b])
        matern = bank >= hyps  # HYPOTHESIS_KERNELS' order: rbf banks, then matern
        return chol_k, alpha_k, weight, sig, ls[bank % hyps], matern, noise, xc

    @staticmethod
    def _kernel_factors(kcc: Tensor, ratio: Tensor) -> tuple[Tensor, Tensor]:
        """Cholesky factors of ``kcc + ratio I`` (``ratio`` a scalar or one per matrix) and
        where the factorisation failed (those factors: the identity)."""
        eye = torch.eye(kcc.shape[-1], dtype=kcc.dtype, device=kcc.device)
        ratio = ratio[..., None, None] if ratio.dim() else ratio
        chol, info = torch.linalg.cholesky_ex(kcc + ratio * eye)
        failed = info > 0
        return torch.where(failed[..., None, None], eye, chol), failed

    def exact_readout(self, stats: HypothesisStats, x: Tensor, cache: dict | None = None) -> Tensor:
        """``readout`` computed exactly on the points the state holds: each (ratio, bank) an
        exact GP with that bank's kernel plus 1 (the constant feature), weighted by its exact
        evidence over the ratio and scale grids; the heaviest ``EXACT_COMPONENTS`` components
        per task are kept (at least ``EXACT_MIN_WEIGHT`` of the heaviest), renormalised."""
        n = stats.x.shape[-2]
        noise = _cached_posterior(self, "hypothesis-exact", stats, n, cache, "_exact_posterior")[6]
        _, mean, half, _, weight, sig, _ = self._component_terms(stats, n, x, cache)
        var_k = (2.0 - half.pow(2).sum(-2)).clamp_min(0)  # unit kernel + 1 at the target
        return _mixture_readout(mean, var_k, weight, sig, noise, x.dtype)

    # ------------------------------------------------------------------ joint covariance
    def _marginal_feature_components(self, stats: RegressionStats, num_points: int) -> tuple:
        """The random-feature posterior's (ratio, bank) components that the marginal readout
        sums: every one with at least ``MARGINAL_MIN_WEIGHT`` of the heaviest one's weight
        (the rest hold at most ``R B MARGINAL_MIN_WEIGHT`` of the total between them), the
        heaviest first: factors of ``G + r I``, ``A^{-1} M``, weights and coefficients
        ``E[r s]`` (renormalised over the kept ones) and bank indices."""
        gram = self._gram(stats)
        alpha, w_rb, noise_w = self._posterior(stats, num_points, gram)
        batch, (n_r, n_b), m = w_rb.shape[:-2], w_rb.shape[-2:], alpha.shape[-1]
        idx, weight, coef = _keep_heaviest(
            w_rb.flatten(-2), noise_w.flatten(-2), n_r * n_b, self.MARGINAL_MIN_WEIGHT
        )
        alpha_k = _gather_components(alpha.expand(*batch, n_r, n_b, m).flatten(-3, -2), idx, 1)
        return self._factors(gram, idx), alpha_k, weight, coef, idx % n_b

    def _kept_feature_components(self, marginal: tuple) -> tuple:
        """The joint correlation's components, as ``_exact_posterior`` keeps them: of the
        marginal readout's (``marginal``, the heaviest first), the ``EXACT_COMPONENTS``
        heaviest with at least ``EXACT_MIN_WEIGHT`` of the heaviest one's weight,
        renormalised over them."""
        chol, alpha, weight, coef, bank = marginal
        count = min(self.EXACT_COMPONENTS, weight.shape[-1])
        weight, coef = _keep_leading(weight[..., :count], coef[..., :count], self.EXACT_MIN_WEIGHT)
        k = weight.shape[-1]
        return chol[..., :k, :, :], alpha[..., :k, :], weight, coef, bank[..., :k]

    def _feature_terms(self, post: tuple, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, half)`` of the kept random-feature components ``post`` at ``x`` (``b' x t x
        d``, float64): ``phi(x)^T A^{-1} M`` (``b' x k x t``) and ``L^{-1} phi(x)`` (``b' x k
        x m x t``)."""
        chol, alpha, bank = post[0], post[1], post[4]
        freq, phase = self.frequencies.double()[bank], self.phases.double()[bank]
        proj = x.unsqueeze(-3) @ freq + phase
        phi = math.sqrt(2.0 / freq.shape[-1]) * torch.cos(proj)
        basis = torch.cat([phi, torch.ones_like(phi[..., :1])], -1)  # b' x k x t x m
        mean = (basis @ alpha.unsqueeze(-1)).squeeze(-1)
        return mean, torch.linalg.solve_triangular(chol, basis.transpose(-1, -2), upper=False)

    def _component_terms(self, stats: RegressionStats, num_points: int, x: Tensor, cache):
        """Per kept component at ``x`` (``b' x t x d``): ``(exact, mean, half, z, weight,
        coef, matern)`` with ``mean`` ``b' x k x t``, ``half = L^{-1} k(X, x)`` (or
        ``L^{-1} phi(x)``) ``b' x k x n x t`` and ``z`` the inputs over the lengthscales
        (exact only)."""
        x = x.double()
        if getattr(stats, "x", None) is None or num_points == 0:
            marginal = _cached_posterior(
                self,
                "hypothesis-marginal",
                stats,
                num_points,
                cache,
                "_marginal_feature_components",
            )
            post = self._kept_feature_components(marginal)  # leading slots: views, no copy
            mean, half = self._feature_terms(post, x)
            return False, mean, half, None, post[2], post[3], None
        n = stats.x.shape[-2]
        post = _cached_posterior(self, "hypothesis-exact", stats, n, cache, "_exact_posterior")
        chol, alpha, weight, coef, ls, matern, _, xc = post
        scaled = ls.unsqueeze(-2)
        z, zc = x.unsqueeze(-3) / scaled, xc.unsqueeze(-3) / scaled
        m = matern[..., None, None]
        basis = torch.where(m, scaled_kernel("matern", z, zc), scaled_kernel("rbf", z, zc)) + 1
        mean = (basis @ alpha.unsqueeze(-1)).squeeze(-1)
        half = torch.linalg.solve_triangular(chol, basis.transpose(-1, -2), upper=False)
        return True, mean, half, z, weight, coef, matern

    def readout_correlation(
        self,
        stats: RegressionStats,
        num_points: int,
        x_a: Tensor,
        x_b: Tensor | None = None,
        cache: dict | None = None,
    ) -> Tensor:
        """Correlation ``b x t_a x t_b`` of the function between ``x_a`` and ``x_b`` (``None``:
        ``x_a`` again, its terms computed once) under the memory's mixture (its kept
        components, exact or on the random features; the mixture's covariance, means' spread
        included, over the product of its stds): positive semi-definite, 1 at equal points."""
        ta = self._component_terms(stats, num_points, x_a, cache)
        tb = ta if x_b is None else self._component_terms(stats, num_points, x_b, cache)
        exact, weight, coef, matern = ta[0], ta[4], ta[5], ta[6]
        c = coef[..., None, None]

        def spread(mean: Tensor) -> Tensor:  # b' x k x t, deviation from the mixture's mean
            return mean - (weight.unsqueeze(-1) * mean).sum(-2, keepdim=True)

        def variance(terms) -> Tensor:
            quad = terms[2].pow(2).sum(-2)
            comp = (2.0 - quad).clamp_min(0) if exact else quad
            dev = spread(terms[1])
            return (coef.unsqueeze(-1) * comp).sum(-2) + (weight.unsqueeze(-1) * dev.pow(2)).sum(-2)

        cross = ta[2].transpose(-1, -2) @ tb[2]  # b' x k x t_a x t_b
        if exact:
            m = matern[..., None, None]
            za, zb = ta[3], tb[3]
            kern = torch.where(m, scaled_kernel("matern", za, zb), scaled_kernel("rbf", za, zb))
            comp = kern + 1.0 - cross
        else:
            comp = cross
        dev_a, dev_b = spread(ta[1]), spread(tb[1])
        spread_ab = dev_a.unsqueeze(-1) * dev_b.unsqueeze(-2)
        cov = (c * comp).sum(-3) + (weight[..., None, None] * spread_ab).sum(-3)
        floor = CORRELATION_FLOOR
        std_a = variance(ta).clamp_min(floor).sqrt()
        std_b = std_a if tb is ta else variance(tb).clamp_min(floor).sqrt()
        return cov / (std_a.unsqueeze(-1) * std_b.unsqueeze(-2))


__all__ = [
    "HYPOTHESIS_READOUT_WIDTH",
    "HypothesisMemory",
    "HypothesisStats",
    "POLY_READOUT_WIDTH",
    "PolynomialMemory",
    "RegressionMemory",
    "RegressionStats",
    "readout_width",
]
