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
- ``bma_rff``: ``cmanp_bo.nn.regression.HypothesisMemory`` on its own (the same hypotheses and
  grid on ``m`` random Fourier features per kernel, plus a constant): a Bayesian linear
  regression per setting whose statistics (``sum phi phi^T``, ``sum phi y``, ``sum y^2``)
  stream in constant memory. It says what the network's hypothesis memory can read out.

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

from cmanp_bo.nn.regression import (  # noqa: E402
    HYPOTHESIS_KERNELS,
    HYPOTHESIS_NOISE_RATIOS,
    HYPOTHESIS_SIGNAL_VARIANCES,
    HypothesisMemory,
)
from cmanp_bo.priors.bo import bo_kernel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FITTED_GP_CSV = RESULTS / "prior_fit_bo_default.csv"
KERNELS = HYPOTHESIS_KERNELS
S_GRID = HYPOTHESIS_SIGNAL_VARIANCES
R_GRID = HYPOTHESIS_NOISE_RATIOS


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
        hyp: ``K x d`` lengthscale hypotheses (``HypothesisMemory.lengthscales``).

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


def bma_rff(xc: Tensor, yc: Tensor, xt: Tensor, memory: HypothesisMemory) -> tuple[Tensor, Tensor]:
    """The hypothesis memory's model-averaged predictive of the noisy targets, from its
    streamable statistics alone: ``t`` means and ``t`` variances (function + noise)."""
    stats = memory.stats(xc, yc[:, None], torch.Size([]))
    out = memory.readout(stats, xc.shape[0], xt)
    return out[:, 0], (2 * out[:, 1]).exp() + (2 * out[:, 2]).exp()


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


def score_cell(
    pool, net, dim: int, size: int, tasks: int, memory: HypothesisMemory
) -> tuple[dict, dict, dict]:
    """Per model, task -> marginal LL on the first ``tasks`` tasks of the cell; seconds per task
    per model; quantiles of the tasks' signal variance in frame units."""
    rows, _ = evaluate_cell(net, dim, size, tasks, tasks_gp=0, pool=pool)
    per: dict[str, dict[int, float]] = {"network": {}, "ceiling": {}, "bma_exact": {}}
    per["bma_rff"] = {}
    for r in rows:
        key = {"cmanp_marginal": "network", "exact_gp_marginal": "ceiling"}.get(r["model"])
        if key:
            per[key][int(r["task"])] = float(r["ll"])
    seconds = {"bma_exact": 0.0, "bma_rff": 0.0}
    signal_var = []
    for task, batch in enumerate(pool[:tasks]):
        c = context_prefix(batch, size)
        signal_var.append(c.signal_std.item() ** 2)
        xc, yc, xt, yt = c.xc[0, :, :dim], c.yc[0, :, 0], c.xt[0, :, :dim], c.yt[0, :, 0]
        for name, fn, arg in (
            ("bma_exact", bma_exact, memory.lengthscales),
            ("bma_rff", bma_rff, memory),
        ):
            t0 = time.perf_counter()
            mean, var = fn(xc, yc, xt, arg)
            seconds[name] += time.perf_counter() - t0
            per[name][task] = gaussian_ll(mean, var, yt)
    quantiles = torch.tensor(signal_var, dtype=torch.float64).quantile(
        torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    )
    signal = dict(zip(("q10", "median", "q90"), quantiles.tolist()))
    return per, {k: v / tasks for k, v in seconds.items()}, signal


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
        memory = HypothesisMemory(dim, args.hypotheses, args.features)
        for size in args.sizes:
            per, seconds, signal = score_cell(pool, nets[dim], dim, size, args.tasks, memory)
            gp = {t: v for t, v in fitted.get((dim, size), {}).items() if t < args.tasks}
            cell = {"d": dim, "n": size, "tasks": args.tasks, "seconds_per_task": seconds}
            # the tasks' GP signal variance in the frame of their n context points: what the
            # grid of signal variances has to cover
            cell["signal_variance_in_frame"] = signal
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
            "memory": "cmanp_bo.nn.regression.HypothesisMemory(d, hypotheses, features, seed=0)",
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
    text = json.dumps(result, indent=2) + "\n"
    args.out.write_text(text)
    result = json.loads(text)  # what the file holds (tuples as lists, keys as strings)
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
