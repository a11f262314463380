"""Pilot (issue 6): the hypothesis memory's own Bayesian model average as the BO surrogate.

The d = 3..6 networks read the context through ``HypothesisMemory`` (a constant-memory average of
random-feature GP regressions over lengthscale hypotheses) and then decode with a learned head
that infers noise std 0.2-0.3 of the data's spread on noise-free problems and does not refine the
incumbent (``incumbent_probe.py``). This pilot skips the head: the posterior is the memory's own
evidence-weighted mixture, moment-matched jointly over the q + baseline points, so it asks
whether the memory alone refines where the decoder does not.

``exact``: the same hypotheses in ``cmanp_bo.hypothesis_gp.HypothesisAveragedGP`` (kernel form, no
random features); ``short_every=k``: every k-th hypothesis 16 times shorter (exact mode only);
``features``: random features per hypothesis and kernel.

Runs the standard suite's replications (same problems, budgets, paired Sobol designs, qLogNEI with
the suite's settings) with this model, and writes one JSON per run to ``--out``.

    python experiments/memory_head_pilot.py --problems hartmann3 ackley4 --seeds 5 --out runs/mh
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import torch
from botorch.models.model import Model
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultivariateNormal
from torch import Tensor

from cmanp_bo.hypothesis_gp import HypothesisAveragedGP
from cmanp_bo.nn.regression import HypothesisMemory
from cmanp_bo.warp import warp_outcomes


class MemoryBMAModel(Model):
    """The hypothesis memory's posterior on ``(X, Y)`` (one output, maximised), moment-matched.

    Components (noise ratio, bank) whose evidence weight is below ``1e-4`` of the total are
    dropped (at most ``max_components`` kept); the scale grid is summed out exactly as in
    ``HypothesisMemory.readout``.
    """

    num_outputs = 1

    def __init__(self, X: Tensor, Y: Tensor, memory: HypothesisMemory, max_components=32):
        super().__init__()
        self.memory = memory
        self.ym, self.ys = Y.mean(), Y.std().clamp_min(1e-9)
        Yf = ((Y - self.ym) / self.ys).double()
        stats = memory.stats(X.double(), Yf, torch.Size([]))
        chol, alpha, w_rb, noise_w = memory._posterior(stats, X.shape[0])
        R, B = w_rb.shape
        w = w_rb.reshape(-1)
        keep = torch.argsort(w, descending=True)[:max_components]
        keep = keep[w[keep] >= 1e-4 * w.sum()]
        self.r_idx, self.b_idx = keep // B, keep % B
        wk = w[keep]
        self.w = wk / wk.sum()
        self.lam = noise_w.reshape(-1)[keep] / wk  # expected noise variance given (r, b)
        self.chol = chol[self.r_idx, self.b_idx]  # K x m x m
        self.alpha = alpha[self.r_idx, self.b_idx]  # K x m
        self.noise = (self.w * self.lam).sum()

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size([])

    def moments(self, X: Tensor) -> tuple[Tensor, Tensor]:
        phi = self.memory.features(X.double())[..., self.b_idx, :, :]  # ... x K x N x m
        mean_k = (phi @ self.alpha.unsqueeze(-1)).squeeze(-1)  # ... x K x N
        half = torch.linalg.solve_triangular(self.chol, phi.transpose(-1, -2), upper=False)
        w = self.w[:, None]
        mean = (w * mean_k).sum(-2)
        cov = ((self.w * self.lam)[:, None, None] * (half.transpose(-1, -2) @ half)).sum(-3)
        dev = mean_k - mean.unsqueeze(-2)
        cov = cov + (dev.transpose(-1, -2) @ (w * dev))
        return mean, cov

    def posterior(self, X, output_indices=None, observation_noise=False, posterior_transform=None):
        mean, cov = self.moments(X)
        n = cov.shape[-1]
        eye = torch.eye(n, dtype=cov.dtype)
        cov = cov + (1e-8 + (self.noise if observation_noise else 0.0)) * eye
        mean = (mean * self.ys + self.ym).to(X.dtype)
        cov = (cov * self.ys**2).to(X.dtype)
        post = GPyTorchPosterior(MultivariateNormal(mean, cov))
        if posterior_transform is not None:
            return posterior_transform(post)
        return post


def make_surrogate_class():
    from surrogates.registry import Surrogate

    class MemoryHeadSurrogate(Surrogate):
        name = "memory-bma"

        def __init__(
            self,
            dim,
            seed,
            acquisition=None,
            warp=None,
            hypotheses=64,
            features=64,
            exact=False,
            short_every=0,
        ):
            super().__init__(dim, seed, acquisition)
            self.warp = warp
            self.exact = exact
            self.memory = HypothesisMemory(dim, hypotheses, features, seed=0)
            if short_every:  # every k-th hypothesis 16 times shorter (the training prior's)
                self.memory.lengthscales[::short_every] /= 16.0

        def ask(self, X, y):
            Y = warp_outcomes(-y, self.warp)[:, None]
            if self.exact:  # the same hypotheses, exact (cmanp_bo.hypothesis_gp)
                model = HypothesisAveragedGP(X, Y, hypotheses=self.memory.lengthscales)
            else:
                model = MemoryBMAModel(X, Y, self.memory)
            return self._optimize(model, X, y)

    return MemoryHeadSurrogate


def run_one(args):
    problem, seed, options, out = args
    from cmanp_bo.bench import runner
    from cmanp_bo.bench.store import RunKey
    from surrogates import registry

    cls = make_surrogate_class()
    registry.SURROGATES[cls.name] = cls
    settings = {
        "budget": None,
        "acquisition": {"num_restarts": 5, "raw_samples": 256},
        "options": options,
        "time_cap_s": None,
    }
    key = RunKey.make("standard", problem, cls.name, seed, settings)
    t0 = time.time()
    _, run, steps = runner.run_replication(key, threads=1)
    run["seconds"] = time.time() - t0
    run["steps"] = [{k: s[k] for k in ("value", "best", "regret", "x")} for s in steps]
    path = Path(out) / f"{problem}_{seed}.json"
    path.write_text(json.dumps(run))
    return problem, seed, run["best_value"], run["seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", nargs="+", required=True)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--options", default="{}")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    jobs = [
        (prob, s, json.loads(a.options), a.out)
        for prob in a.problems
        for s in range(a.first_seed, a.first_seed + a.seeds)
        if not (Path(a.out) / f"{prob}_{s}.json").exists()
    ]
    with mp.get_context("fork").Pool(a.workers) as pool:
        for res in pool.imap_unordered(run_one, jobs):
            print(*res, flush=True)


if __name__ == "__main__":
    main()
