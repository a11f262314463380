"""How much of the gap to the fitted GP is lengthscale inference: a Bayesian model average over
per-dimension (ARD) lengthscale hypotheses, on prior_fit.py's held-out tasks (issue 4).

The networks' regression memory (``cmanp_bo.nn.regression.RegressionMemory``) averages 4 banks of
isotropic random Fourier features; the prior draws a lengthscale per dimension, and the fitted
SingleTaskGP infers one per dimension. This script scores, with nothing trained or fitted:

- ``bma_exact``: the evidence-weighted average of exact GP posteriors over K lengthscale vectors
  drawn from the prior's own hyperprior (BoTorch's dimension-scaled log-normal), both kernels
  (RBF, Matern-5/2), a grid of signal variances ``S_GRID`` (frame units) and noise-to-signal
  ratios ``R_GRID``, and a constant mean of the signal's variance. Not constant memory (one n x n
  factor per hypothesis and ratio); it says what the hypotheses are worth.
- ``bma_rff``: the same hypotheses and grid on ``m`` random Fourier features (random phase, plus
  a constant feature): a Bayesian linear regression per setting whose statistics
  (``sum phi phi^T``, ``sum phi y``, ``sum y^2``) stream in constant memory, as the regression
  memory's do. It says what a constant-memory state with ARD hypotheses could read out.

next to the routed network (recomputed here on the same tasks), the exact GP with the true
hyperparameters (the ceiling) and the fitted SingleTaskGP (its per-task rows in
``prior_fit_bo_default.csv``, the first 30 tasks of each cell; at n = 1024 only 4). Every
difference is paired on the tasks both models scored.

    python experiments/hypothesis_bma.py [--dims 2 4 6 8] [--sizes 16 64 256] [--tasks 30]
        [--hypotheses 64] [--features 64] [--out experiments/results/hypothesis_bma.json]

Marginal LL per target point (nats, frame units), as prior_fit.py's ``*_marginal`` rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prior_fit import (  # noqa: E402
    EVAL_SEED,
    POOL_N,
    context_prefix,
    evaluate_cell,
    load_networks,
    sample_pool,
)

from cmanp_bo.priors.bo import bo_kernel, lengthscale_hyperprior  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FITTED_GP_CSV = RESULTS / "prior_fit_bo_default.csv"
KERNELS = ("rbf", "matern")
# Signal variances s (frame units): the frame scales the context to unit spread, but a long
# lengthscale makes the in-cube spread a small part of the signal (the held-out tasks' signal
# variance in frame units has median 25-200 and 90% quantile 220-3200 at d = 2..6).
S_GRID = tuple(4.0**k for k in range(-2, 8))
# Noise variance over signal variance r: the prior's noise std is 0.1% to 10% of the signal's.
R_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
MATERN_NU = 2.5


def lengthscale_hypotheses(dim: int, count: int, seed: int = 0) -> Tensor:
    """``count x dim`` lengthscale vectors drawn from the prior's hyperprior (float64)."""
    loc, scale = lengthscale_hyperprior(dim)
    gen = torch.Generator().manual_seed(seed)
    return (loc + scale * torch.randn(count, dim, generator=gen, dtype=torch.float64)).exp()


def _average(means: list[Tensor], variances: list[Tensor], log_evidence: list[Tensor]):
    """Moment-matched mixture over settings: ``(mean, variance)`` per target."""
    mu, var, le = torch.cat(means), torch.cat(variances), torch.cat(log_evidence)
    w = torch.softmax(le, 0)[:, None]
    mean = (w * mu).sum(0)
    return mean, ((w * (var + mu.pow(2))).sum(0) - mean.pow(2)).clamp_min(1e-12)


def bma_exact(xc: Tensor, yc: Tensor, xt: Tensor, hyp: Tensor) -> tuple[Tensor, Tensor]:
    """Model-averaged exact GP predictive of the noisy targets.

    Args:
        xc, yc, xt: ``n x d`` inputs, ``n`` framed outputs, ``t x d`` targets (float64).
        hyp: ``K x d`` lengthscale hypotheses.

    Returns:
        ``t`` means and ``t`` variances (noise included).
    """
    n, k = xc.shape[0], hyp.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    y = yc[None, :, None].expand(k, n, 1)
    s = torch.tensor(S_GRID, dtype=torch.float64)[:, None]  # the scale factors out: S x 1
    means, variances, log_evidence = [], [], []
    for kind in KERNELS:
        k_cc = bo_kernel(kind, xc.expand(k, -1, -1), xc.expand(k, -1, -1), hyp) + 1.0
        k_tc = bo_kernel(kind, xt.expand(k, -1, -1), xc.expand(k, -1, -1), hyp) + 1.0
        for r in R_GRID:  # covariance s (k + 1 + r I): one factor per ratio, any s
            chol = torch.linalg.cholesky(k_cc + r * eye)
            alpha = torch.cholesky_solve(y, chol)
            logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)  # K
            fit = (y * alpha).sum((-1, -2))  # K
            ev = -0.5 * (fit / s + logdet + n * s.log() + n * math.log(2 * math.pi))  # S x K
            mean = (k_tc @ alpha).squeeze(-1)  # K x t
            half = torch.linalg.solve_triangular(chol, k_tc.transpose(-1, -2), upper=False)
            unit_var = (2.0 - half.pow(2).sum(-2)).clamp_min(0) + r  # K x t
            log_evidence.append(ev.reshape(-1))
            means.append(mean.expand(len(S_GRID), -1, -1).reshape(-1, mean.shape[-1]))
            variances.append((s[:, :, None] * unit_var).reshape(-1, mean.shape[-1]))
    return _average(means, variances, log_evidence)


def rff_frequencies(hyp: Tensor, features: int, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    """Per kernel, ``K x d x m`` frequencies and ``K x 1 x m`` phases of its random Fourier
    features under each hypothesis (Matern-5/2: Gaussian frequencies over a chi-square scale,
    i.e. multivariate t with 5 degrees of freedom)."""
    gen = torch.Generator().manual_seed(seed)
    k, d = hyp.shape
    out = []
    for kind in KERNELS:
        z = torch.randn(k, d, features, generator=gen, dtype=torch.float64)
        if kind == "matern":
            chi2 = torch.randn(k, 1, features, int(2 * MATERN_NU), generator=gen).pow(2).sum(-1)
            z = z * (2 * MATERN_NU / chi2.double()).sqrt()
        phase = torch.rand(k, 1, features, generator=gen, dtype=torch.float64) * 2 * math.pi
        out.append((z / hyp[:, :, None], phase))
    return out


def _rff_features(x: Tensor, freq: Tensor, phase: Tensor) -> Tensor:
    """``n x d`` -> ``K x n x (m + 1)``: the random features and a constant (the mean)."""
    m = freq.shape[-1]
    phi = math.sqrt(2.0 / m) * torch.cos(x @ freq + phase)
    return torch.cat([phi, torch.ones_like(phi[..., :1])], -1)


def bma_rff(
    xc: Tensor, yc: Tensor, xt: Tensor, freqs: list[tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """Model-averaged Bayesian linear regression on the features of ``rff_frequencies``, from
    the streamable statistics alone (weights ``N(0, s)``, noise variance ``r s``)."""
    n = xc.shape[0]
    sq_sum = yc.pow(2).sum()
    s = torch.tensor(S_GRID, dtype=torch.float64)[:, None]
    means, variances, log_evidence = [], [], []
    for freq, phase in freqs:
        pc, pt = _rff_features(xc, freq, phase), _rff_features(xt, freq, phase)
        m = pc.shape[-1]
        gram = pc.transpose(-1, -2) @ pc
        moment = pc.transpose(-1, -2) @ yc[:, None]
        eye = torch.eye(m, dtype=torch.float64)
        for r in R_GRID:  # weights N(0, s), noise r s: A = gram + r I for every s
            chol = torch.linalg.cholesky(gram + r * eye)
            alpha = torch.cholesky_solve(moment, chol)
            fit = sq_sum - (moment * alpha).sum((-1, -2))  # K
            logdet = 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1) - m * math.log(r)
            lam = r * s  # S x 1
            ev = -0.5 * (fit / lam + n * lam.log() + logdet + n * math.log(2 * math.pi))
            mean = (pt @ alpha).squeeze(-1)  # K x t
            half = torch.linalg.solve_triangular(chol, pt.transpose(-1, -2), upper=False)
            unit_var = r * (half.pow(2).sum(-2) + 1.0)  # K x t, times s
            log_evidence.append(ev.reshape(-1))
            means.append(mean.expand(len(S_GRID), -1, -1).reshape(-1, mean.shape[-1]))
            variances.append((s[:, :, None] * unit_var).reshape(-1, mean.shape[-1]))
    return _average(means, variances, log_evidence)


def gaussian_ll(mean: Tensor, var: Tensor, y: Tensor) -> float:
    return (-0.5 * ((y - mean).pow(2) / var + var.log() + math.log(2 * math.pi))).mean().item()


def fitted_gp_lls(path: Path = FITTED_GP_CSV) -> dict[tuple[int, int], dict[int, float]]:
    """Per cell ``(d, n)``, task -> the fitted SingleTaskGP's marginal LL (prior_fit rows)."""
    out: dict[tuple[int, int], dict[int, float]] = {}
    if not path.exists():
        return out
    with path.open() as f:
        for r in csv.DictReader(f):
            if r["model"] == "fitted_gp_marginal" and r["ll"] not in ("", "nan"):
                out.setdefault((int(r["d"]), int(r["n"])), {})[int(r["task"])] = float(r["ll"])
    return out


def _mean_se(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    se = t.std().item() / math.sqrt(len(t)) if len(t) > 1 else math.nan
    return t.mean().item(), se


def _paired(a: dict[int, float], b: dict[int, float]) -> dict | None:
    tasks = sorted(set(a) & set(b))
    if not tasks:
        return None
    mean, se = _mean_se([a[t] - b[t] for t in tasks])
    return {"diff": mean, "se": se, "tasks": len(tasks)}


def score_cell(pool, net, dim: int, size: int, tasks: int, hyp: Tensor, freqs) -> dict:
    """Per model, task -> marginal LL on the first ``tasks`` tasks of the cell."""
    rows, _ = evaluate_cell(net, dim, size, tasks, tasks_gp=0, pool=pool)
    per: dict[str, dict[int, float]] = {"network": {}, "ceiling": {}, "bma_exact": {}}
    per["bma_rff"] = {}
    for r in rows:
        key = {"cmanp_marginal": "network", "exact_gp_marginal": "ceiling"}.get(r["model"])
        if key:
            per[key][int(r["task"])] = float(r["ll"])
    seconds = {"bma_exact": 0.0, "bma_rff": 0.0}
    for task, batch in enumerate(pool[:tasks]):
        c = context_prefix(batch, size)
        xc, yc, xt, yt = c.xc[0, :, :dim], c.yc[0, :, 0], c.xt[0, :, :dim], c.yt[0, :, 0]
        for name, fn, arg in (("bma_exact", bma_exact, hyp), ("bma_rff", bma_rff, freqs)):
            t0 = time.perf_counter()
            mean, var = fn(xc, yc, xt, arg)
            seconds[name] += time.perf_counter() - t0
            per[name][task] = gaussian_ll(mean, var, yt)
    return per, {k: v / tasks for k, v in seconds.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 4, 6, 8])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--tasks", type=int, default=30)
    p.add_argument("--hypotheses", type=int, default=64, help="lengthscale vectors K")
    p.add_argument("--features", type=int, default=64, help="random features m (bma_rff)")
    p.add_argument("--out", type=Path, default=RESULTS / "hypothesis_bma.json")
    args = p.parse_args(argv)
    if max(args.sizes) > POOL_N or min(args.sizes) < 1 or args.tasks < 1:
        p.error(f"--sizes must be in [1, {POOL_N}] and --tasks >= 1")
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    nets, net_desc = load_networks(None, tuple(args.dims))
    fitted = fitted_gp_lls()
    cells = []
    for dim in args.dims:
        pool = sample_pool(dim, args.tasks, seed=EVAL_SEED)
        hyp = lengthscale_hypotheses(dim, args.hypotheses)
        freqs = rff_frequencies(hyp, args.features)
        for size in args.sizes:
            per, seconds = score_cell(pool, nets[dim], dim, size, args.tasks, hyp, freqs)
            gp = {t: v for t, v in fitted.get((dim, size), {}).items() if t < args.tasks}
            cell = {"d": dim, "n": size, "tasks": args.tasks, "seconds_per_task": seconds}
            for name, values in per.items():
                cell[name] = dict(zip(("ll", "se"), _mean_se(list(values.values()))))
            cell["fitted_gp"] = dict(zip(("ll", "se"), _mean_se(list(gp.values())))) | {
                "tasks": len(gp)
            }
            cell["paired"] = {
                f"{a}_minus_{b}": _paired(per[a], per[b] if b in per else gp)
                for a in ("bma_exact", "bma_rff")
                for b in ("network", "fitted_gp", "ceiling")
            }
            cells.append(cell)
            print(json.dumps(cell), flush=True)
    result = {
        "what": "marginal LL per target point (nats, frame units) on prior_fit.py's held-out "
        "tasks; paired differences on the tasks both models scored",
        "command": "python experiments/hypothesis_bma.py " + " ".join(sys.argv[1:] or []),
        "settings": {
            "hypotheses": args.hypotheses,
            "features": args.features,
            "kernels": KERNELS,
            "signal_variances": S_GRID,
            "noise_to_signal": R_GRID,
            "seed": EVAL_SEED,
        },
        "networks": net_desc.get("per_dim"),
        "machine": f"{platform.processor() or platform.machine()}, 1 torch thread",
        "seconds": round(time.perf_counter() - t_start, 1),
        "cells": cells,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| d | n | network | BMA exact | BMA RFF | fitted GP | ceiling |")
    print("|---|---|---|---|---|---|---|")
    for c in cells:
        print(
            f"| {c['d']} | {c['n']} | "
            + " | ".join(
                f"{c[k]['ll']:.2f}"
                for k in ("network", "bma_exact", "bma_rff", "fitted_gp", "ceiling")
            )
            + " |"
        )
    return result


if __name__ == "__main__":
    main()
