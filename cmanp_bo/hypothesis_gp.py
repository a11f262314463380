"""``HypothesisAveragedGP``: exact GP regression averaged over fixed lengthscale hypotheses.

CMANP's d = 3..6 networks read the context through ``cmanp_bo.nn.regression.HypothesisMemory``,
a constant-memory Bayesian model average of random-feature GP regressions over lengthscale
hypotheses. This model is the same average computed exactly (kernel form, an ``n x n`` factor per
hypothesis): nothing is fitted, as in CMANP, but the cost grows as ``H n^3`` to build. It is a
baseline that says what the hypotheses are worth without the random-feature approximation and the
network's decoder, and a fitting-free surrogate for small budgets.

Each hypothesis is a per-dimension lengthscale vector drawn once from BoTorch's dimension-scaled
log-normal hyperprior (``cmanp_bo.priors.bo.lengthscale_hyperprior``); a share ``short_share``
of them (evenly spread) is divided by ``short_factor``, as the networks' training prior does
(``BOPriorSampler(short_share=0.5)``): benchmark functions such as Hartmann and Ackley have
lengthscales of 0.2-0.8 on the unit cube, where the hyperprior alone puts little mass. Per
hypothesis, RBF and Matern-5/2 kernels; per kernel a noise-to-signal ratio ``r`` from
``HYPOTHESIS_NOISE_RATIOS`` and a signal variance ``s`` from ``HYPOTHESIS_SIGNAL_VARIANCES``
(frame units: ``Y`` standardised). With ``K`` the unit kernel plus 1 (a constant mean of prior
variance ``s``), ``C = K + r I`` and the covariance ``s C``:

    log evidence = -1/2 [y^T C^{-1} y / s + log det C + n log s + n log 2 pi],
    mean = k_*^T C^{-1} y,   cov_f = s (k_** - k_*^T C^{-1} k_*),   noise = s r,

weighted by ``softmax`` of the evidence over hypotheses x kernels x ratios x scales (a uniform
prior over the grid). Components below ``1e-4`` of the largest one's weight are dropped (at most
``max_components`` kept). The posterior is the mixture moment-matched jointly over the q points (a
``MultivariateNormal``), so every BoTorch acquisition function works with it; the mixture's own
samples are not Gaussian, and this is an approximation of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from botorch.acquisition.objective import PosteriorTransform
from botorch.exceptions.errors import InputDataError, UnsupportedError
from botorch.models.model import Model
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultivariateNormal
from torch import Tensor

from cmanp_bo.nn.regression import (
    HYPOTHESIS_KERNELS,
    HYPOTHESIS_NOISE_RATIOS,
    HYPOTHESIS_SIGNAL_VARIANCES,
)
from cmanp_bo.priors.bo import lengthscale_hypotheses, scaled_kernel

# Components kept: at least this share of the largest total weight ...
MIN_WEIGHT = 1e-4
# ... and hypotheses factorised at a time while scoring the evidence (bounds peak memory).
CHUNK = 64
# Added to the function variance's diagonal (frame units): keeps the covariance factorisable.
JITTER = 1e-9


def moment_match(weights: Tensor, means: Tensor, covs: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``batch_shape x q`` and covariance ``batch_shape x q x q`` of the mixture with
    ``k`` component ``weights`` (summing to 1), ``means`` ``k x batch_shape x q`` and
    covariances ``k x batch_shape x q x q``."""
    w = weights.reshape(-1, *(1,) * (means.dim() - 1))
    mean = (w * means).sum(0)
    dev = means - mean
    cov = (w.unsqueeze(-1) * (covs + dev.unsqueeze(-1) * dev.unsqueeze(-2))).sum(0)
    return mean, cov


@dataclass(frozen=True)
class _Component:
    """The kept (kernel, ratio) pairs of one kernel, stacked over ``k`` components."""

    kind: str
    lengthscales: Tensor  # k x d
    ratio: Tensor  # k
    scale: Tensor  # k, the expected signal variance given the component
    weight: Tensor  # k, normalised over all kept components
    chol: Tensor  # k x n x n, of C
    alpha: Tensor  # k x n, C^{-1} y


class HypothesisAveragedGP(Model):
    """Exact GP regression averaged over fixed lengthscale hypotheses by evidence; nothing is
    fitted (module docstring).

    Example:
        >>> model = HypothesisAveragedGP(train_X, train_Y)   # n x d in [0, 1]^d, n x 1
        >>> acqf = qLogNoisyExpectedImprovement(model, X_baseline=train_X)
    """

    _num_outputs = 1

    def __init__(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        *,
        hypotheses: int | Tensor = 256,
        short_share: float = 0.5,
        short_factor: float = 16.0,
        max_components: int = 32,
        seed: int = 0,
    ) -> None:
        """
        Args:
            train_X: ``n x d`` inputs in the unit cube.
            train_Y: ``n x 1`` outcomes (maximised by BoTorch's acquisitions).
            hypotheses: how many lengthscale vectors ``H`` to draw
                (``cmanp_bo.priors.bo.lengthscale_hypotheses``), or the ``H x d`` vectors.
            short_share, short_factor: the share of the drawn ones made shorter, and by how much.
            max_components: components kept in the posterior.
            seed: seed of the hypotheses.
        """
        super().__init__()
        if train_X.dim() != 2 or train_Y.dim() != 2 or train_Y.shape[-1] != 1:
            raise UnsupportedError(
                "HypothesisAveragedGP takes unbatched n x d inputs and n x 1 outcomes, got "
                f"{tuple(train_X.shape)} and {tuple(train_Y.shape)}"
            )
        if train_X.shape[0] != train_Y.shape[0] or train_X.shape[0] < 1:
            raise InputDataError(
                f"need n >= 1 rows in both, got {train_X.shape[0]} and {train_Y.shape[0]}"
            )
        if not (torch.isfinite(train_X).all() and torch.isfinite(train_Y).all()):
            raise InputDataError("train_X and train_Y must be finite")
        if max_components < 1:
            raise ValueError(f"max_components must be >= 1, got {max_components}")
        self._dtype = train_X.dtype
        X, Y = train_X.double(), train_Y.double()
        n = X.shape[0]
        self._offset = Y.mean()
        std = Y.std() if n > 1 else torch.ones((), dtype=torch.float64)
        self._scale = torch.where(std > 0, std, torch.ones_like(std))
        y = (Y - self._offset) / self._scale  # n x 1
        self._train_X = X
        if isinstance(hypotheses, Tensor):
            if hypotheses.dim() != 2 or hypotheses.shape[-1] != X.shape[-1]:
                raise InputDataError(
                    f"hypotheses must be H x {X.shape[-1]} lengthscales, got "
                    f"{tuple(hypotheses.shape)}"
                )
            if not (hypotheses > 0).all():
                raise InputDataError("lengthscale hypotheses must be positive")
            self.hypotheses = hypotheses.double()
        else:
            gen = torch.Generator().manual_seed(seed)
            self.hypotheses = lengthscale_hypotheses(
                X.shape[-1], hypotheses, short_share, short_factor, gen
            ).double()
        log_ev = self._log_evidence(X, y)  # kernels x ratios x scales x H
        w = torch.softmax(log_ev.flatten(), 0).reshape(log_ev.shape)
        scales = torch.tensor(HYPOTHESIS_SIGNAL_VARIANCES, dtype=torch.float64)
        w_comp = w.sum(2)  # kernels x ratios x H
        scale_comp = (w * scales[:, None]).sum(2) / w_comp.clamp_min(1e-300)
        flat = w_comp.flatten()
        keep = torch.argsort(flat, descending=True)[:max_components]
        keep = keep[flat[keep] >= MIN_WEIGHT * flat[keep[0]]]
        total = flat[keep].sum()
        ratios = torch.tensor(HYPOTHESIS_NOISE_RATIOS, dtype=torch.float64)
        n_r, n_h = len(ratios), self.hypotheses.shape[0]
        self._components = []
        for k, kind in enumerate(HYPOTHESIS_KERNELS):
            mine = keep[keep // (n_r * n_h) == k]
            if mine.numel() == 0:
                continue
            r_idx, h_idx = (mine // n_h) % n_r, mine % n_h
            ls = self.hypotheses[h_idx]
            z = X / ls[:, None, :]
            eye = torch.eye(n, dtype=torch.float64)
            cov = scaled_kernel(kind, z, z) + 1.0 + ratios[r_idx, None, None] * eye
            chol = torch.linalg.cholesky(cov)
            alpha = torch.cholesky_solve(y.expand(len(mine), n, 1), chol).squeeze(-1)
            self._components.append(
                _Component(
                    kind,
                    ls,
                    ratios[r_idx],
                    scale_comp.flatten()[mine],
                    flat[mine] / total,
                    chol,
                    alpha,
                )
            )
        #: expected noise variance of the average (frame units)
        self.noise_variance = sum((c.weight * c.scale * c.ratio).sum() for c in self._components)

    def _log_evidence(self, X: Tensor, y: Tensor) -> Tensor:
        """``kernels x ratios x scales x H`` log evidence of every setting."""
        n = X.shape[0]
        ratios = torch.tensor(HYPOTHESIS_NOISE_RATIOS, dtype=torch.float64)
        s = torch.tensor(HYPOTHESIS_SIGNAL_VARIANCES, dtype=torch.float64)[:, None]
        eye = torch.eye(n, dtype=torch.float64)
        out = []
        for kind in HYPOTHESIS_KERNELS:
            per_ratio = [[] for _ in ratios]
            for start in range(0, self.hypotheses.shape[0], CHUNK):
                ls = self.hypotheses[start : start + CHUNK]
                z = X / ls[:, None, :]
                k_cc = scaled_kernel(kind, z, z) + 1.0
                yb = y.expand(ls.shape[0], n, 1)
                for i, r in enumerate(ratios.tolist()):
                    chol = torch.linalg.cholesky(k_cc + r * eye)
                    fit = (yb * torch.cholesky_solve(yb, chol)).sum((-1, -2))  # h
                    logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
                    per_ratio[i].append(
                        -0.5 * (fit / s + logdet + n * s.log() + n * math.log(2 * math.pi))
                    )
            out.append(torch.stack([torch.cat(p, -1) for p in per_ratio]))
        return torch.stack(out)

    # ------------------------------------------------------------------------------- basics
    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size([])

    @property
    def num_components(self) -> int:
        """Components kept in the posterior."""
        return sum(c.weight.numel() for c in self._components)

    def moments(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Moment-matched mean ``batch_shape x q`` and function covariance
        ``batch_shape x q x q`` at ``X`` (``batch_shape x q x d``), in frame units (float64)."""
        X = X.double()
        extra = (1,) * (X.dim() - 2)
        means, covs, weights = [], [], []
        for c in self._components:  # the kept components, grouped by kernel
            ls = c.lengthscales.reshape(-1, *extra, 1, X.shape[-1])  # k x 1.. x 1 x d
            z = X.unsqueeze(0) / ls  # k x batch x q x d
            zc = self._train_X / ls  # k x 1.. x n x d
            k_tc = scaled_kernel(c.kind, z, zc) + 1.0  # k x batch x q x n
            k_tt = scaled_kernel(c.kind, z, z) + 1.0
            means.append((k_tc @ c.alpha.reshape(-1, *extra, c.alpha.shape[-1], 1)).squeeze(-1))
            chol = c.chol.reshape(-1, *extra, *c.chol.shape[-2:])
            half = torch.linalg.solve_triangular(chol, k_tc.transpose(-1, -2), upper=False)
            scale = c.scale.reshape(-1, *extra, 1, 1)
            covs.append(scale * (k_tt - half.transpose(-1, -2) @ half))
            weights.append(c.weight)
        return moment_match(torch.cat(weights), torch.cat(means), torch.cat(covs))

    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform: PosteriorTransform | None = None,
        **kwargs,
    ) -> GPyTorchPosterior:
        """Joint posterior of ``f`` (or ``y`` with ``observation_noise=True``) at
        ``batch_shape x q x d`` points, in the outcome's units."""
        if output_indices not in (None, [0]):
            raise UnsupportedError(f"one output only, got output_indices={output_indices}")
        if X.dim() < 2 or X.shape[-1] != self._train_X.shape[-1]:
            raise InputDataError(
                f"X must be batch_shape x q x {self._train_X.shape[-1]}, got {tuple(X.shape)}"
            )
        mean, cov = self.moments(X)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        cov = cov + JITTER * eye
        if isinstance(observation_noise, Tensor):  # known noise variances, outcome units
            cov = cov + torch.diag_embed(observation_noise.squeeze(-1).double()) / self._scale**2
        elif observation_noise:
            cov = cov + self.noise_variance * eye
        mvn = MultivariateNormal(
            (mean * self._scale + self._offset).to(self._dtype),
            (cov * self._scale**2).to(self._dtype),
        )
        post = GPyTorchPosterior(mvn)
        return posterior_transform(post) if posterior_transform is not None else post


__all__ = ["HypothesisAveragedGP", "moment_match"]
