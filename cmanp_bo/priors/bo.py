"""The d-dimensional prior the BO checkpoint is meta-trained on: GP functions on [0, 1]^d.

Every choice mirrors what a BoTorch user's default ``SingleTaskGP`` assumes, so that comparing
the two is fair, and covers what long BO runs see:

- kernel: Matern-5/2 or RBF (probability ``matern_share``), per-dimension lengthscales from
  BoTorch's dimension-scaled log-normal ``LogNormal(sqrt(2) + log(d) / 2, sqrt(3))``;
- optional short-lengthscale share: with probability ``short_share`` (default 0: off) a task's
  lengthscales are divided by ``short_factor`` (default 16). BoTorch's hyperprior puts the median
  lengthscale at 4-10x the cube's side for d = 2..10, so nearly all of its functions are close to
  monotone with the minimum on the boundary (experiments/results/boundary_probe.json); the share
  adds functions with interior optima, as benchmark and real objectives have;
- optional near-context targets: with probability ``near_share`` (default 0: off) a target is
  placed at a random context point plus Gaussian jitter of log-uniform std in
  ``[near_min, near_max]`` (clipped to the cube), with its own fresh noise. Uniform targets at
  d >= 3 rarely fall near an observation, so the loss barely teaches the network what it must
  get right for BO: its predictive at and around the points it has seen (the acquisition
  optimizer works near the incumbent);
- optional BO-like contexts: with probability ``cluster_share`` (default 0: off) a task's
  context is laid out as a BO run lays out its data: a uniform initial design of a random
  10-50% of the points, then the rest in ``cluster_rounds`` rounds, each placing its points
  around the best observations so far (one of the current top three, Gaussian jitter of
  log-uniform std in ``[near_min, near_max]``, clipped to the cube), where "best" is the
  largest or, with probability 1/2, the smallest noisy observation. The function is one GP
  draw: each round reads the values of the points already placed off the prefix of the same
  Cholesky factor and normals that give the final sample, so the data are exact GP samples at
  inputs that depend on earlier outcomes. Uniform contexts never show the network the dense
  clusters around the incumbent that BO data have (experiments/incumbent_probe.py);
- irrelevant dimensions: each dimension is dropped (constant function along it) with
  probability ``irrelevant_share``, keeping at least one relevant dimension;
- output scale ``~ LogNormal(0, 1)`` and mean ``~ N(0, 1)`` (removed again by the outcome frame,
  but they make the frame's own estimation error part of training);
- observation noise std = signal std x a log-uniform fraction in ``[noise_min, noise_max]``
  (near zero to 10% of the signal);
- context sizes log-uniform in ``[min_context, max_context]`` (1..512 by default), targets
  ``num_targets``; inputs uniform on the cube, ``d`` uniform in ``[min_dim, max_dim]`` per batch
  and zero-padded to ``pad_dim`` (default ``max_dim``; a constant input is an irrelevant one, the
  convention the BoTorch model uses for data with fewer dimensions than the network);
- y in the outcome frame of the context (``cmanp_bo.frame.OutcomeFrame``), exactly as the BoTorch
  model feeds the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cmanp_bo.frame import OutcomeFrame


@dataclass
class BOBatch:
    """``b x n x max_dim`` inputs and ``b x n x 1`` framed outcomes, with the truth."""

    xc: Tensor
    yc: Tensor
    xt: Tensor
    yt: Tensor
    dim: int
    lengthscales: Tensor  # b x dim (inf for irrelevant dimensions)
    noise_std: Tensor  # b, in frame units
    kernel: str
    signal_std: Tensor  # b, the GP's output std in frame units
    mean: Tensor  # b, the GP's constant mean in frame units


def lengthscale_hyperprior(dim: int) -> tuple[float, float]:
    """``(loc, scale)`` of BoTorch's dimension-scaled log-normal lengthscale prior for ``dim``
    inputs, the prior's per-dimension lengthscale distribution (before ``short_share``)."""
    return math.sqrt(2) + 0.5 * math.log(dim), math.sqrt(3)


def lengthscale_hypotheses(
    dim: int,
    count: int,
    short_share: float = 0.0,
    short_factor: float = 16.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``count x dim`` lengthscale vectors drawn from ``lengthscale_hyperprior(dim)``, a share
    ``short_share`` of the rows (evenly spread, deterministic) divided by ``short_factor``, as
    ``BOPriorSampler(short_share=...)`` shortens a share of its tasks (float32; one normal draw
    per entry from ``generator``)."""
    if dim < 1 or count < 1:
        raise ValueError(f"need dim >= 1 and count >= 1, got {dim} and {count}")
    if not (0.0 <= short_share <= 1.0 and short_factor > 0):
        raise ValueError(
            f"need 0 <= short_share <= 1 and short_factor > 0, got {short_share} and {short_factor}"
        )
    loc, scale = lengthscale_hyperprior(dim)
    ls = (loc + scale * torch.randn(count, dim, generator=generator)).exp()
    i = torch.arange(count, dtype=torch.float64)
    short = torch.floor((i + 1) * short_share) > torch.floor(i * short_share)
    return torch.where(short[:, None], ls / short_factor, ls)


def bo_kernel(kind: str, x1: Tensor, x2: Tensor, lengthscales: Tensor) -> Tensor:
    """Unit-variance kernel ``b x n1 x n2`` for ``b x n x d`` inputs, ``b x d`` lengthscales."""
    # scaled inputs + cdist: no b x n1 x n2 x d intermediate (inf lengthscales give 0 columns)
    scale = lengthscales[:, None, :]
    return scaled_kernel(kind, x1 / scale, x2 / scale)


def scaled_kernel(kind: str, z1: Tensor, z2: Tensor) -> Tensor:
    """Unit-variance kernel ``... x n1 x n2`` of inputs already divided by their lengthscales
    (``... x n x d``; batch shapes broadcast)."""
    dist = torch.cdist(z1, z2, compute_mode="donot_use_mm_for_euclid_dist")
    r2 = dist.pow(2)
    if kind == "rbf":
        return torch.exp(-0.5 * r2)
    if kind == "matern":
        r = math.sqrt(5.0) * r2.clamp_min(1e-30).sqrt()
        return (1 + r + r**2 / 3) * torch.exp(-r)
    raise ValueError(f"unknown kernel {kind!r}; choose 'rbf' or 'matern'")


class BOPriorSampler:
    """Seeded sampler of BO tasks on the unit cube (see the module docstring)."""

    def __init__(
        self,
        max_dim: int = 10,
        min_dim: int = 1,
        pad_dim: int | None = None,
        min_context: int = 1,
        max_context: int = 512,
        num_targets: int = 64,
        matern_share: float = 0.5,
        irrelevant_share: float = 0.2,
        noise_min: float = 1e-3,
        noise_max: float = 0.1,
        short_share: float = 0.0,
        short_factor: float = 16.0,
        near_share: float = 0.0,
        near_min: float = 1e-3,
        near_max: float = 0.2,
        cluster_share: float = 0.0,
        cluster_rounds: int = 4,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not (1 <= min_context <= max_context and num_targets >= 1 and max_dim >= 1):
            raise ValueError("need 1 <= min_context <= max_context, num_targets >= 1, max_dim >= 1")
        if not 1 <= min_dim <= max_dim:
            raise ValueError(f"need 1 <= min_dim <= max_dim, got {min_dim} and {max_dim}")
        pad_dim = max_dim if pad_dim is None else pad_dim
        if pad_dim < max_dim:
            raise ValueError(f"pad_dim ({pad_dim}) must be at least max_dim ({max_dim})")
        if not (0 < noise_min <= noise_max):
            raise ValueError("need 0 < noise_min <= noise_max")
        if not (0.0 <= short_share <= 1.0 and short_factor > 0):
            raise ValueError(
                "need 0 <= short_share <= 1 and short_factor > 0, "
                f"got {short_share} and {short_factor}"
            )
        if not (0.0 <= near_share <= 1.0 and 0 < near_min <= near_max):
            raise ValueError(
                "need 0 <= near_share <= 1 and 0 < near_min <= near_max, "
                f"got {near_share}, {near_min} and {near_max}"
            )
        if not (0.0 <= cluster_share <= 1.0 and cluster_rounds >= 1):
            raise ValueError(
                "need 0 <= cluster_share <= 1 and cluster_rounds >= 1, "
                f"got {cluster_share} and {cluster_rounds}"
            )
        self.max_dim, self.min_dim, self.pad_dim = max_dim, min_dim, pad_dim
        self.num_targets = num_targets
        self.min_context, self.max_context = min_context, max_context
        self.matern_share, self.irrelevant_share = matern_share, irrelevant_share
        self.noise_min, self.noise_max = noise_min, noise_max
        self.short_share, self.short_factor = short_share, short_factor
        self.near_share, self.near_min, self.near_max = near_share, near_min, near_max
        self.cluster_share, self.cluster_rounds = cluster_share, cluster_rounds
        self.dtype = dtype
        self.gen = torch.Generator().manual_seed(seed)

    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(*shape, generator=self.gen, dtype=torch.float64)

    def _log_uniform(self, low: float, high: float, *shape: int) -> Tensor:
        return torch.exp(math.log(low) + (math.log(high) - math.log(low)) * self._rand(*shape))

    def hyperparameters(self, batch_size: int, dim: int) -> tuple[str, Tensor]:
        """A kernel (shared by the batch) and ``batch_size x dim`` lengthscales (inf where a
        dimension is irrelevant; at least one relevant dimension per task)."""
        b, d = batch_size, dim
        kernel = "matern" if self._rand(1).item() < self.matern_share else "rbf"
        loc, scale = lengthscale_hyperprior(d)
        normal = torch.randn(b, d, generator=self.gen, dtype=torch.float64)
        ls = torch.exp(loc + scale * normal)
        irrelevant = self._rand(b, d) < self.irrelevant_share
        irrelevant[torch.arange(b), torch.randint(0, d, (b,), generator=self.gen)] = False
        if self.short_share > 0:  # drawn only when on: the default stream stays as it was
            short = self._rand(b, 1) < self.short_share
            ls = torch.where(short, ls / self.short_factor, ls)
        return kernel, torch.where(irrelevant, torch.full_like(ls, math.inf), ls)

    def _near_context_targets(self, x: Tensor, nc: int) -> Tensor:
        """Move a ``near_share`` of the targets (``x[:, nc:]``) next to random context points."""
        b, n, d = x.shape
        nt = n - nc
        near = self._rand(b, nt, 1) < self.near_share
        anchor = (self._rand(b, nt) * nc).floor().long().clamp_max(nc - 1)
        base = torch.gather(x[:, :nc], 1, anchor[..., None].expand(b, nt, d))
        std = self._log_uniform(self.near_min, self.near_max, b, nt, 1)
        jitter = std * torch.randn(b, nt, d, generator=self.gen, dtype=torch.float64)
        moved = (base + jitter).clamp(0.0, 1.0)
        return torch.cat([x[:, :nc], torch.where(near, moved, x[:, nc:])], dim=1)

    def _clustered_context(
        self, x: Tensor, nc: int, kernel: str, ls: Tensor, z: Tensor, noise: Tensor
    ) -> Tensor:
        """Re-place the context points of a ``cluster_share`` of the tasks as a BO run would:
        a uniform initial design, then rounds around the best (noisy) values so far. ``z`` are
        the normals the final sample is ``L z`` of and ``noise`` the observation noise, so the
        values read here are the ones the task will have."""
        b, n, d = x.shape
        clustered = self._rand(b, 1, 1) < self.cluster_share
        sign = torch.where(self._rand(b, 1) < 0.5, -1.0, 1.0).to(x)
        n_init = max(1, int(nc * (0.1 + 0.4 * self._rand(1).item())))
        bounds = torch.linspace(n_init, nc, self.cluster_rounds + 1).round().long().tolist()
        x = x.clone()
        jitter = 1e-8 * torch.eye(nc, dtype=x.dtype)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            if stop <= start:
                continue
            seen = x[:, :start]
            chol = torch.linalg.cholesky(bo_kernel(kernel, seen, seen, ls) + jitter[:start, :start])
            y = (chol @ z[:, :start] + noise[:, :start]).squeeze(-1) * sign
            top = y.topk(min(3, start), dim=1).indices  # b x k
            pick = (self._rand(b, stop - start) * top.shape[1]).floor().long()
            centre = torch.gather(top, 1, pick)  # b x m
            base = torch.gather(seen, 1, centre[..., None].expand(-1, -1, d))
            std = self._log_uniform(self.near_min, self.near_max, b, stop - start, 1)
            step = std * torch.randn(b, stop - start, d, generator=self.gen, dtype=x.dtype)
            moved = (base + step).clamp(0.0, 1.0)
            x[:, start:stop] = torch.where(clustered, moved, x[:, start:stop])
        return x

    def sample(
        self, batch_size: int, dim: int | None = None, num_context: int | None = None
    ) -> BOBatch:
        """A batch of tasks sharing ``dim`` and the context size (drawn when not given)."""
        d = dim or int(torch.randint(self.min_dim, self.max_dim + 1, (1,), generator=self.gen))
        if not 1 <= d <= self.pad_dim:
            raise ValueError(f"dim must be in [1, {self.pad_dim}], got {d}")
        nc = num_context or int(
            self._log_uniform(self.min_context, self.max_context + 1, 1).floor()
        )
        nc = min(nc, self.max_context)
        n = nc + self.num_targets
        b = batch_size
        kernel, ls = self.hyperparameters(b, d)
        x = self._rand(b, n, d)
        if self.cluster_share > 0:  # drawn only when on: the default stream stays as it was
            return self._sample_clustered(x, nc, d, kernel, ls)
        if self.near_share > 0:  # drawn only when on: the default stream stays as it was
            x = self._near_context_targets(x, nc)
        cov = bo_kernel(kernel, x, x, ls)
        out_scale = torch.exp(torch.randn(b, generator=self.gen, dtype=torch.float64))
        noise_frac = self._log_uniform(self.noise_min, self.noise_max, b)
        jitter = 1e-8 * torch.eye(n, dtype=torch.float64)
        f = torch.linalg.cholesky(cov + jitter) @ torch.randn(
            b, n, 1, generator=self.gen, dtype=torch.float64
        )
        mean = torch.randn(b, 1, 1, generator=self.gen, dtype=torch.float64)
        noise = noise_frac[:, None, None] * torch.randn(
            b, n, 1, generator=self.gen, dtype=torch.float64
        )
        return self._batch(x, f, noise, mean, out_scale, noise_frac, nc, d, ls, kernel)

    def _sample_clustered(self, x: Tensor, nc: int, d: int, kernel: str, ls: Tensor) -> BOBatch:
        """``sample`` with BO-like contexts on (its draws in their own order)."""
        b, n, _ = x.shape
        out_scale = torch.exp(torch.randn(b, generator=self.gen, dtype=torch.float64))
        noise_frac = self._log_uniform(self.noise_min, self.noise_max, b)
        z = torch.randn(b, n, 1, generator=self.gen, dtype=torch.float64)
        noise = noise_frac[:, None, None] * torch.randn(
            b, n, 1, generator=self.gen, dtype=torch.float64
        )
        mean = torch.randn(b, 1, 1, generator=self.gen, dtype=torch.float64)
        x = self._clustered_context(x, nc, kernel, ls, z, noise)
        if self.near_share > 0:
            x = self._near_context_targets(x, nc)
        jitter = 1e-8 * torch.eye(n, dtype=torch.float64)
        f = torch.linalg.cholesky(bo_kernel(kernel, x, x, ls) + jitter) @ z
        return self._batch(x, f, noise, mean, out_scale, noise_frac, nc, d, ls, kernel)

    def _batch(
        self,
        x: Tensor,
        f: Tensor,
        noise: Tensor,
        mean: Tensor,
        out_scale: Tensor,
        noise_frac: Tensor,
        nc: int,
        d: int,
        ls: Tensor,
        kernel: str,
    ) -> BOBatch:
        """Scale, frame, pad and package a sampled batch."""
        b = x.shape[0]
        y = mean + out_scale[:, None, None] * (f + noise)
        frame = OutcomeFrame.from_data(y[:, :nc])
        y = frame.apply(y)
        x = torch.nn.functional.pad(x, (0, self.pad_dim - d))
        c = lambda t: t.to(self.dtype)  # noqa: E731
        return BOBatch(
            c(x[:, :nc]),
            c(y[:, :nc]),
            c(x[:, nc:]),
            c(y[:, nc:]),
            d,
            ls,
            noise_frac * out_scale / frame.std,
            kernel,
            out_scale / frame.std,
            (mean.view(b) - frame.mean) / frame.std,
        )
