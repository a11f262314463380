"""The paper's 1-D GP meta-regression protocol.

x ~ U[-2, 2]; per batch Nc ~ U{3..max_context}, Nt ~ U{3..max_points-Nc}; per task a kernel
lengthscale ~ U[0.1, 0.6) and output scale (std) ~ U[0.1, 1.0); y = f + N(0, 0.02^2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

KERNELS = ("rbf", "matern", "periodic")
NOISE_STD = 0.02


@dataclass
class Batch:
    """A batch of tasks: ``b x n x 1`` context and target tensors and the true hyperparameters."""

    xc: Tensor
    yc: Tensor
    xt: Tensor
    yt: Tensor
    lengthscale: Tensor  # b
    scale: Tensor  # b
    period: Tensor | None = None  # b, periodic kernel only


def kernel_matrix(
    kind: str,
    x1: Tensor,
    x2: Tensor,
    lengthscale: Tensor,
    scale: Tensor,
    period: Tensor | None = None,
) -> Tensor:
    """Kernel matrix ``b x n1 x n2`` for 1-D inputs ``b x n x 1`` and per-task hyperparameters."""
    ls, sc = lengthscale[:, None, None], scale[:, None, None]
    diff = (x1 - x2.transpose(-1, -2)).abs()
    if kind == "rbf":
        k = torch.exp(-0.5 * (diff / ls) ** 2)
    elif kind == "matern":
        r = math.sqrt(5.0) * diff / ls
        k = (1 + r + r**2 / 3) * torch.exp(-r)
    elif kind == "periodic":
        if period is None:
            raise ValueError("the periodic kernel needs a period")
        k = torch.exp(-2 * torch.sin(math.pi * diff / period[:, None, None]) ** 2 / ls**2)
    else:
        raise ValueError(f"unknown kernel {kind!r}; choose one of {KERNELS}")
    return sc**2 * k


class GPSampler:
    """Seeded sampler of 1-D GP tasks.

    Args:
        kernel: ``"rbf"``, ``"matern"`` or ``"periodic"``.
        max_points: upper bound on context + target points (49 in the paper).
        min_context / max_context: range of the context size (3..46 in the paper).
        seed: seed of the sampler's own generator (reproducible regardless of global RNG).
    """

    def __init__(
        self,
        kernel: str = "rbf",
        max_points: int = 49,
        min_context: int = 3,
        max_context: int = 46,
        min_target: int = 3,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")
        if not (1 <= min_context <= max_context and max_context + min_target <= max_points):
            raise ValueError(
                "need 1 <= min_context <= max_context and max_context + min_target <= max_points"
            )
        self.kernel, self.max_points = kernel, max_points
        self.min_context, self.max_context, self.min_target = min_context, max_context, min_target
        self.dtype = dtype
        self.gen = torch.Generator().manual_seed(seed)

    def _uniform(self, n: int, low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, generator=self.gen, dtype=torch.float64)

    def _randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=self.gen))

    def sample(self, batch_size: int) -> Batch:
        nc = self._randint(self.min_context, self.max_context)
        nt = self._randint(self.min_target, self.max_points - nc)
        n = nc + nt
        x = self._uniform(batch_size * n, -2.0, 2.0).view(batch_size, n, 1)
        ls = self._uniform(batch_size, 0.1, 0.6)
        sc = self._uniform(batch_size, 0.1, 1.0)
        period = self._uniform(batch_size, 0.1, 0.5) if self.kernel == "periodic" else None
        cov = kernel_matrix(self.kernel, x, x, ls, sc, period)
        cov = cov + NOISE_STD**2 * torch.eye(n, dtype=cov.dtype)
        chol = torch.linalg.cholesky(cov)
        eps = torch.randn(batch_size, n, 1, generator=self.gen, dtype=torch.float64)
        y = chol @ eps
        c = lambda t: t.to(self.dtype)  # noqa: E731
        return Batch(c(x[:, :nc]), c(y[:, :nc]), c(x[:, nc:]), c(y[:, nc:]), ls, sc, period)


def exact_gp_log_likelihood(kind: str, batch: Batch) -> Tensor:
    """Mean marginal target log-likelihood per point of the exact GP with the true
    hyperparameters (the ceiling): ``b``."""
    xc, yc = batch.xc.double(), batch.yc.double()
    xt, yt = batch.xt.double(), batch.yt.double()
    args = (batch.lengthscale, batch.scale, batch.period)
    kcc = kernel_matrix(kind, xc, xc, *args) + NOISE_STD**2 * torch.eye(
        xc.shape[-2], dtype=xc.dtype
    )
    ktc = kernel_matrix(kind, xt, xc, *args)
    chol = torch.linalg.cholesky(kcc)
    a = torch.cholesky_solve(yc, chol)
    mean = (ktc @ a).squeeze(-1)
    v = torch.linalg.solve_triangular(chol, ktc.transpose(-1, -2), upper=False)
    var = batch.scale[:, None] ** 2 - v.pow(2).sum(-2) + NOISE_STD**2
    normal = torch.distributions.Normal(mean, var.clamp_min(1e-12).sqrt())
    return normal.log_prob(yt.squeeze(-1)).mean(-1)
