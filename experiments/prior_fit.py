"""Quality report of a BO checkpoint on held-out tasks of its own prior (issue 4).

For every input dimension d it draws held-out tasks from the BO prior
(``cmanp_bo.priors.BOPriorSampler``, seed ``--seed``, disjoint from the training seeds) with
``--pool-n`` (1024) context points; the cell (d, n) uses the first n of them, re-framed exactly
as the model would frame them, so every n sees the same functions and targets (LL vs n is
paired). Per task and cell it scores the mean predictive log-likelihood per target point
(``--targets`` targets, nats) of

* ``cmanp_marginal``: the network's marginal predictive (``net.predict``);
* ``cmanp_joint``: the joint (AND head) log-likelihood of all targets of a task as one block,
  divided by the number of targets (only for a network with a joint head);
* ``exact_gp_marginal`` / ``exact_gp_joint``: the exact GP posterior with the TRUE kernel,
  lengthscales, signal std, mean and noise (the ceiling; the joint one is the ceiling of
  ``cmanp_joint``);
* ``fitted_gp_marginal`` / ``fitted_gp_joint``: ``SingleTaskGP(train_X, train_Y)`` with BoTorch's
  defaults (Standardize, dimension-scaled lengthscale prior, RBF) on the context in frame units and
  the first d input columns, fitted by ``fit_gpytorch_mll``; predictive with observation noise.
  This is what a user would otherwise run;
* ``standard_normal``: N(0, 1) in the frame of the context (ignores x; the floor any model must
  beat once it has seen a few points);

and, for the marginal predictives, the coverage of the central 50% and 90% intervals (share of
target points inside). All numbers are in the outcome frame the network works in (the context's
mean and std), the same for every model, so the log-likelihoods are directly comparable.

Fitting the GP is the expensive part (on the 2-core CPU box: ~0.1-2 s per fit up to n = 256,
10-70 s at n = 1024 depending on d): ``--tasks-gp K`` fits it on the first K tasks of every cell,
``--gp-max-n N --tasks-gp-above K2`` on the first K2 tasks of cells with n > N (0: none). The
comparisons with the GP are then paired on the tasks it was fitted on, and the summary's notes
say so. Drawing a task with 1024 points costs 0.1-0.7 s (d = 1..10), the CMANP and the
ceiling ~0.05-0.2 s per task at n = 1024.
Results are written after every cell and a rerun with the same settings resumes (skips the cells
already done); ``--fresh`` starts over. Cells run cheapest first (n outer, d inner).

Usage:
    python experiments/prior_fit.py --quick                  # 3 d x 4 n, 24 tasks, minutes
    python experiments/prior_fit.py                          # the issue's grid: hours
    python experiments/prior_fit.py --gp-max-n 256 --tasks-gp-above 50   # GP cheaper at 1024
    python experiments/prior_fit.py --checkpoint bo-default  # a shipped name or a .pt path
    python experiments/prior_fit.py --report-only            # summary + plot from the CSV

Writes NAME.csv (one row per task x model x cell), NAME.json (per-cell summary, the issue's
target checks, timings) and NAME.png (LL vs n per d) to --out (default experiments/results;
NAME = prior_fit, or prior_fit_quick with --quick).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from cmanp_bo import pretrained  # noqa: E402
from cmanp_bo.checkpoint import load_checkpoint, read_card  # noqa: E402
from cmanp_bo.frame import OutcomeFrame  # noqa: E402
from cmanp_bo.nn import CMANP  # noqa: E402
from cmanp_bo.priors import BOBatch, BOPriorSampler, bo_kernel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PROTOCOL = 1  # bump when the task stream or a model's scoring changes (invalidates resumes)
EVAL_SEED = 20241205  # held out: training seeds are small integers
DIMS = (1, 2, 4, 6, 8, 10)
SIZES = (4, 16, 64, 256, 1024)
QUICK = {
    "dims": (1, 4, 10),
    "sizes": (4, 64, 256, 1024),
    "tasks": 24,
    "tasks_gp": 8,
    "gp_max_n": 256,
    "tasks_gp_above": 4,
}
POOL_N = 1024  # context points sampled per task; cells take prefixes (at least max n)
TRAINING_MAX_CONTEXT = 512  # BOPriorSampler's default max_context (beyond it: extrapolation)
Z50 = 0.6744897501960817  # central 50% interval of a standard normal: +- Z50
Z90 = 1.6448536269514722
JITTER = 1e-8  # the sampler draws f with cov K + 1e-8 I (unit variance); the truth includes it

MODELS = (
    "cmanp_marginal",
    "cmanp_joint",
    "exact_gp_marginal",
    "exact_gp_joint",
    "fitted_gp_marginal",
    "fitted_gp_joint",
    "standard_normal",
)
COLUMNS = (
    "d",
    "n",
    "task",
    "model",
    "ll",
    "cover50",
    "cover90",
    "seconds",
    "fit_ok",
    "note",
    "kernel",
    "signal_std",
    "noise_std",
    "relevant_dims",
)


# ------------------------------------------------------------------------------------- tasks
def pool_seed(seed: int, dim: int) -> int:
    """Seed of the task pool of dimension ``dim`` (independent of the network and of n)."""
    return seed + 1_000_003 * dim


def sample_pool(
    dim: int, tasks: int, targets: int = 64, seed: int = EVAL_SEED, pool_n: int = POOL_N
) -> list[BOBatch]:
    """The held-out tasks of dimension ``dim`` in float64, with ``pool_n`` context points each.

    Every cell (dim, n) uses the first n context points of these tasks (``context_prefix``), so
    all context sizes see the same functions and targets: LL vs n is a paired comparison.

    Returns:
        ``tasks`` one-task ``BOBatch``es (inputs ``1 x pool_n x dim``, not padded). One sampler
        call per task, so that every task draws its own kernel (the sampler shares it within a
        call). The first k tasks do not depend on ``tasks``.
    """
    sampler = BOPriorSampler(
        max_dim=dim,
        min_context=1,
        max_context=pool_n,
        num_targets=targets,
        seed=pool_seed(seed, dim),
        dtype=torch.float64,
    )
    return [sampler.sample(1, dim=dim, num_context=pool_n) for _ in range(tasks)]


def context_prefix(batch: BOBatch, num_context: int) -> BOBatch:
    """The same tasks with only their first ``num_context`` context points, in the frame of
    those points (as the model sees them), the truth mapped into that frame.

    Exact: a frame is affine, and the frame of affinely mapped data is the mapped frame (up to
    ``OutcomeFrame``'s unit std for a single point, where the pool frame's scale is kept).
    """
    if num_context == batch.xc.shape[1]:
        return batch
    if not 1 <= num_context <= batch.xc.shape[1]:
        raise ValueError(f"num_context must be in [1, {batch.xc.shape[1]}], got {num_context}")
    frame = OutcomeFrame.from_data(batch.yc[:, :num_context])
    return BOBatch(
        batch.xc[:, :num_context],
        frame.apply(batch.yc[:, :num_context]),
        batch.xt,
        frame.apply(batch.yt),
        batch.dim,
        batch.lengthscales,
        batch.noise_std / frame.std,
        batch.kernel,
        batch.signal_std / frame.std,
        (batch.mean - frame.mean) / frame.std,
    )


# ------------------------------------------------------------------------------------- scoring
def gaussian_scores(mean: Tensor, std: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-task mean marginal log-likelihood and 50% / 90% interval coverage.

    Args:
        mean, std, y: ``b x m`` predictive means, standard deviations and observed targets.

    Returns:
        ``(ll, cover50, cover90)``, each of shape ``b`` (coverage: share of the m targets).
    """
    mean, std, y = mean.double(), std.double(), y.double()
    z = (y - mean) / std
    ll = (-0.5 * z**2 - std.log() - 0.5 * math.log(2 * math.pi)).mean(-1)  # NaN in, NaN out
    return ll, (z.abs() <= Z50).double().mean(-1), (z.abs() <= Z90).double().mean(-1)


def mvn_log_likelihood(mean: Tensor, cov: Tensor, y: Tensor) -> Tensor:
    """Joint log density per target point: ``b`` from ``b x m`` mean and y, ``b x m x m`` cov.

    Adds diagonal jitter (relative 1e-10, growing) only where the Cholesky factorisation fails.
    """
    mean, cov, y = mean.double(), cov.double(), y.double()
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1)[:, None, None]
    chol, info = torch.linalg.cholesky_ex(cov)
    rel = 1e-10
    while (info > 0).any() and rel < 1e-2:
        chol, info = torch.linalg.cholesky_ex(cov + rel * scale * eye)
        rel *= 10
    if (info > 0).any():
        return torch.full(mean.shape[:-1], math.nan, dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(mean, scale_tril=chol, validate_args=False)
    return dist.log_prob(y) / y.shape[-1]


def exact_gp_posterior(batch: BOBatch) -> tuple[Tensor, Tensor]:
    """Exact GP posterior of the targets under the TRUE hyperparameters, noise included.

    Args:
        batch: float64 tasks, ``b x n x d`` inputs (only the first ``batch.dim`` columns used).

    Returns:
        ``b x m`` mean and ``b x m x m`` covariance of the noisy target outcomes (frame units).
    """
    d = batch.dim
    xc, xt = batch.xc[..., :d].double(), batch.xt[..., :d].double()
    yc = batch.yc.squeeze(-1).double()
    s2 = (batch.signal_std.double() ** 2)[:, None, None]
    n2 = (batch.noise_std.double() ** 2)[:, None, None]
    mu = batch.mean.double()[:, None]
    ls = batch.lengthscales.double()
    eye_c = torch.eye(xc.shape[1], dtype=torch.float64)
    eye_t = torch.eye(xt.shape[1], dtype=torch.float64)
    k_cc = s2 * (bo_kernel(batch.kernel, xc, xc, ls) + JITTER * eye_c) + n2 * eye_c
    k_tc = s2 * bo_kernel(batch.kernel, xt, xc, ls)
    k_tt = s2 * (bo_kernel(batch.kernel, xt, xt, ls) + JITTER * eye_t) + n2 * eye_t
    chol, info = torch.linalg.cholesky_ex(k_cc)
    rel = 1e-10
    while (info > 0).any() and rel < 1e-4:  # never needed in practice: noise >= 1e-3 x signal
        chol, info = torch.linalg.cholesky_ex(k_cc + rel * s2 * eye_c)
        rel *= 10
    a = torch.linalg.solve_triangular(chol, k_tc.transpose(-1, -2), upper=False)  # b x n x m
    alpha = torch.linalg.solve_triangular(chol, (yc - mu).unsqueeze(-1), upper=False)
    mean = mu + (a.transpose(-1, -2) @ alpha).squeeze(-1)
    cov = k_tt - a.transpose(-1, -2) @ a
    return mean, cov


def _marginal_std(cov: Tensor) -> Tensor:
    return torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(1e-12).sqrt()


def fit_single_task_gp(xc: Tensor, yc: Tensor, xt: Tensor) -> tuple[Tensor, Tensor, bool, str]:
    """``SingleTaskGP(xc, yc)`` with BoTorch's defaults, fitted by ``fit_gpytorch_mll``.

    Args:
        xc: ``n x d`` float64 context inputs (the task's own d columns).
        yc: ``n x 1`` context outcomes (frame units).
        xt: ``m x d`` targets.

    Returns:
        ``(mean, cov, fit_ok, note)``: ``m`` mean and ``m x m`` covariance of the noisy targets
        (observation noise included, frame units; ``None`` when even the posterior fails),
        whether the fit succeeded, and the names of the warnings or errors raised (empty when
        none). A failed fit is evaluated with the hyperparameters BoTorch leaves in place (as a
        user would get them).
    """
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from gpytorch.mlls import ExactMarginalLogLikelihood

    notes: set[str] = set()
    ok = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gp = SingleTaskGP(xc, yc)
        try:
            fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        except Exception as e:  # ModelFittingError, NotPSDError, ...: recorded, not fatal
            ok = False
            notes.add(type(e).__name__)
        gp.eval()
        try:
            with torch.no_grad():
                post = gp.posterior(xt, observation_noise=True)
                mean = post.mean.squeeze(-1).detach()
                cov = post.distribution.covariance_matrix.detach()  # lazy: may carry a graph
        except Exception as e:  # a broken fit: the rows get NaN log-likelihoods
            ok, mean, cov = False, None, None
            notes.add(type(e).__name__)
    notes.update(w.category.__name__ for w in caught)
    return mean, cov, ok, ";".join(sorted(notes))


def _pad(x: Tensor, width: int, dtype: torch.dtype) -> Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[-1])).to(dtype)


def evaluate_cell(
    net: CMANP,
    dim: int,
    num_context: int,
    tasks: int,
    *,
    tasks_gp: int | None = None,
    targets: int = 64,
    seed: int = EVAL_SEED,
    pool: list[BOBatch] | None = None,
    fitted_gp_rows: list[dict] | None = None,
) -> tuple[list[dict], dict[str, float]]:
    """Score every model on the held-out tasks of one cell.

    Args:
        net: a CMANP with ``dim_x >= dim`` (inputs are zero-padded to ``dim_x``, as in
            training and in ``CMANPModel``).
        dim, num_context: the cell.
        tasks: held-out tasks (rows per model).
        tasks_gp: fit the SingleTaskGP on the first ``tasks_gp`` tasks only (``None``: all;
            0: none).
        targets: target points per task.
        seed: base seed of the held-out tasks.
        pool: ``sample_pool(dim, >= tasks, targets, seed, pool_n)`` when already drawn (the
            cells of one d share it); drawn here with ``pool_n = max(POOL_N, num_context)``
            when ``None``.
        fitted_gp_rows: the ``fitted_gp_*`` rows of this cell from an earlier run on the same
            tasks (``load_fitted_gp_rows``): used instead of fitting the GP again (the fit does
            not depend on the network).

    Returns:
        ``(rows, seconds)``: one dict per task x model with the keys of ``COLUMNS`` (``ll`` in
        nats per target point; coverage empty for joint rows), and wall seconds per stage
        (``fitted_gp_cpu``: process CPU seconds of the GP fits, steadier on a shared machine).
    """
    if net.cfg.dim_x < dim:
        raise ValueError(f"the network takes dim_x={net.cfg.dim_x} inputs, the cell needs {dim}")
    tasks_gp = tasks if tasks_gp is None else min(tasks_gp, tasks)
    seconds = defaultdict(float)
    rows: list[dict] = []
    t0 = time.perf_counter()
    if pool is None:
        pool = sample_pool(dim, tasks, targets, seed, max(POOL_N, num_context))
    if len(pool) < tasks or pool[0].xt.shape[1] != targets:
        raise ValueError("the pool holds fewer tasks or other targets than asked for")
    batches = [context_prefix(batch, num_context) for batch in pool[:tasks]]
    seconds["prefix"] = time.perf_counter() - t0
    first = 0
    for batch in batches:
        b = batch.xc.shape[0]
        task_ids = range(first, first + b)
        first += b
        info = {
            "kernel": batch.kernel,
            "signal_std": batch.signal_std.tolist(),
            "noise_std": batch.noise_std.tolist(),
            "relevant_dims": torch.isfinite(batch.lengthscales).sum(-1).tolist(),
        }
        yt = batch.yt.squeeze(-1)
        scores: dict[str, tuple] = {}  # model -> (ll, cover50, cover90, seconds per task)

        # ---- CMANP
        t0 = time.perf_counter()
        with torch.no_grad():
            xc, xt = (_pad(x, net.cfg.dim_x, net.dtype) for x in (batch.xc, batch.xt))
            yc, yt_net = batch.yc.to(net.dtype), batch.yt.to(net.dtype)
            task_net = net.for_task_dim(dim)  # its hypothesis bank for d (where it has one)
            state = task_net.encode(xc, yc)
            pred = task_net.predict(state, xt)
            scores["cmanp_marginal"] = gaussian_scores(
                pred.mean.squeeze(-1), pred.stddev.squeeze(-1), yt
            )
            if net.cfg.joint_head:
                joint = task_net.joint_log_likelihood(state, xt, yt_net).double()
                scores["cmanp_joint"] = (joint, None, None)
        dt = time.perf_counter() - t0
        seconds["cmanp"] += dt
        for key in ("cmanp_marginal", "cmanp_joint"):
            if key in scores:
                scores[key] = (*scores[key], dt / b)

        # ---- exact GP with the true hyperparameters, and the N(0, 1) floor
        t0 = time.perf_counter()
        mean, cov = exact_gp_posterior(batch)
        scores["exact_gp_marginal"] = gaussian_scores(mean, _marginal_std(cov), yt)
        scores["exact_gp_joint"] = (mvn_log_likelihood(mean, cov, yt), None, None)
        dt = time.perf_counter() - t0
        seconds["exact_gp"] += dt
        for key in ("exact_gp_marginal", "exact_gp_joint"):
            scores[key] = (*scores[key], dt / b)
        scores["standard_normal"] = (
            *gaussian_scores(torch.zeros_like(yt), torch.ones_like(yt), yt),
            0.0,
        )

        for model, (ll, c50, c90, sec) in scores.items():
            for i, task in enumerate(task_ids):
                rows.append(_row(dim, num_context, task, model, ll[i], c50, c90, i, sec, info))

        # ---- SingleTaskGP fitted with BoTorch defaults, one task at a time
        for i, task in enumerate(task_ids):
            if task >= tasks_gp or fitted_gp_rows is not None:
                break
            t0, c0 = time.perf_counter(), time.process_time()
            mean, cov, ok, note = fit_single_task_gp(
                batch.xc[i, :, :dim], batch.yc[i], batch.xt[i, :, :dim]
            )
            if mean is None:
                mean = torch.full_like(yt[i], math.nan)
                cov = torch.diag_embed(torch.ones_like(mean))
            marg = gaussian_scores(mean[None], _marginal_std(cov[None]), yt[i : i + 1])
            joint = mvn_log_likelihood(mean[None], cov[None], yt[i : i + 1])
            if not ok and not torch.isfinite(marg[0]).all():  # no coverage for a failed fit
                marg = (marg[0], None, None)
            dt = time.perf_counter() - t0
            seconds["fitted_gp"] += dt
            seconds["fitted_gp_cpu"] += time.process_time() - c0
            extra = {"fit_ok": int(ok), "note": note}
            for model, ll, c50, c90, sec in (
                ("fitted_gp_marginal", marg[0][0], marg[1], marg[2], dt),
                ("fitted_gp_joint", joint[0], None, None, 0.0),
            ):
                rows.append(
                    _row(dim, num_context, task, model, ll, c50, c90, 0, sec, info, i, **extra)
                )
    if fitted_gp_rows is not None:
        rows.extend(fitted_gp_rows)
        seconds["fitted_gp_reused"] = 1.0
    seconds["tasks_gp"] = min(tasks_gp, tasks)
    return rows, dict(seconds)


def load_fitted_gp_rows(csv_path: Path, config: dict) -> dict[tuple[int, int], list[dict]]:
    """The ``fitted_gp_*`` rows per finished cell of an earlier run (``NAME.csv`` with its
    ``NAME.json``) on exactly the same held-out tasks and GP settings as ``config``."""
    meta = json.loads(csv_path.with_suffix(".json").read_text())
    before = meta.get("config", {})
    same = ("protocol", "seed", "pool_n", "targets", "tasks", "tasks_gp", "gp_max_n")
    same += ("tasks_gp_above",)
    diff = [k for k in same if before.get(k) != config.get(k)]
    if diff:
        sys.exit(f"--reuse-gp {csv_path}: made with other settings ({', '.join(diff)} differ)")
    done = {tuple(c) for c in meta.get("cells_done", [])}
    out: dict[tuple[int, int], list[dict]] = {cell: [] for cell in done}
    for r in read_rows(csv_path):
        cell = (int(r["d"]), int(r["n"]))
        if cell in done and r["model"].startswith("fitted_gp"):
            out[cell].append(r)
    return out


def _row(
    dim: int,
    num_context: int,
    task: int,
    model: str,
    ll: Tensor,
    cover50: Tensor | None,
    cover90: Tensor | None,
    index: int,
    seconds: float,
    info: dict,
    info_index: int | None = None,
    fit_ok: int | str = "",
    note: str = "",
) -> dict:
    j = index if info_index is None else info_index
    return {
        "d": dim,
        "n": num_context,
        "task": task,
        "model": model,
        "ll": float(ll),
        "cover50": "" if cover50 is None else float(cover50[index]),
        "cover90": "" if cover90 is None else float(cover90[index]),
        "seconds": float(seconds),
        "fit_ok": fit_ok,
        "note": note,
        "kernel": info["kernel"],
        "signal_std": float(info["signal_std"][j]),
        "noise_std": float(info["noise_std"][j]),
        "relevant_dims": int(info["relevant_dims"][j]),
    }


# ------------------------------------------------------------------------------------- summary
def _mean_se(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, math.nan
    var = sum((v - m) ** 2 for v in vals) / (len(vals) - 1)
    return m, math.sqrt(var / len(vals))


def _by_cell(rows: list[dict]) -> dict[tuple[int, int, str], dict[int, dict]]:
    """``(d, n, model) -> {task: row}``."""
    out: dict[tuple[int, int, str], dict[int, dict]] = defaultdict(dict)
    for r in rows:
        out[(int(r["d"]), int(r["n"]), r["model"])][int(r["task"])] = r
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Per cell and model: tasks, mean LL and its standard error over tasks, mean coverage,
    non-finite LLs and failed fits (excluded from the mean / counted), summed seconds, and, where
    the GP was fitted on a subset of the tasks: ``ll_gp_tasks``, the mean LL on that subset, and
    for the fitted GP ``ll_paired``/``ll_paired_se``: the exact GP's mean on all tasks plus the
    paired difference fitted - exact on the subset (an estimate of the fitted GP's mean on all
    tasks, comparable with the other models'; the plot shows it)."""
    out = []
    cells = _by_cell(rows)
    gp_tasks = {(d, n): set(ts) for (d, n, m), ts in cells.items() if m == "fitted_gp_marginal"}
    order = {m: i for i, m in enumerate(MODELS)}
    keys = sorted(cells, key=lambda k: (k[0], k[1], order.get(k[2], len(order))))
    for d, n, model in keys:
        by_task = cells[(d, n, model)]
        rs = list(by_task.values())
        ll, se = _mean_se([float(r["ll"]) for r in rs])
        entry = {"d": d, "n": n, "model": model, "tasks": len(rs), "ll": ll, "ll_se": se}
        for key in ("cover50", "cover90"):
            vals = [float(r[key]) for r in rs if r[key] not in ("", None)]
            if vals:
                entry[key] = sum(vals) / len(vals)
        entry["nonfinite"] = sum(not math.isfinite(float(r["ll"])) for r in rs)
        fits = [r for r in rs if r.get("fit_ok") not in ("", None)]
        if fits:
            entry["failed_fits"] = sum(int(r["fit_ok"]) == 0 for r in fits)
        subset = gp_tasks.get((d, n), set()) & set(by_task)
        if subset and len(subset) < len(by_task):  # the same tasks as the fitted GP's
            entry["ll_gp_tasks"] = _mean_se([float(by_task[t]["ll"]) for t in subset])[0]
        if model.startswith("fitted_gp") and subset:
            exact = cells.get((d, n, model.replace("fitted", "exact")), {})
            diff = _paired(cells, (d, n, model), (d, n, model.replace("fitted", "exact")))
            if diff is not None and len(exact) > diff["tasks"]:
                base, base_se = _mean_se([float(r["ll"]) for r in exact.values()])
                entry["ll_paired"] = base + diff["diff"]
                entry["ll_paired_se"] = math.hypot(base_se, diff["se"])
        entry["seconds"] = sum(float(r["seconds"]) for r in rs)
        out.append(entry)
    return out


def _paired(cells: dict, a: tuple[int, int, str], b: tuple[int, int, str]) -> dict | None:
    """Mean and standard error of ``LL(a) - LL(b)`` over the tasks both were scored on, for
    ``(d, n, model)`` keys ``a`` and ``b`` (cells of one d share their tasks)."""
    ra, rb = cells.get(a), cells.get(b)
    if not ra or not rb:
        return None
    common = sorted(set(ra) & set(rb))
    diffs = [float(ra[t]["ll"]) - float(rb[t]["ll"]) for t in common]
    m, se = _mean_se(diffs)
    return {"d": a[0], "n": a[1], "diff": m, "se": se, "tasks": len(common)}


def target_checks(
    rows: list[dict], dims: tuple[int, ...] = DIMS, sizes: tuple[int, ...] = SIZES
) -> dict:
    """The issue's targets, per cell, on the rows at hand (cells not evaluated are listed).

    All comparisons use the marginal LL (the joint LL per point of ``cmanp_joint`` is compared
    with its own ceiling ``exact_gp_joint`` in the summary, not here). Comparisons with the
    fitted GP are paired on the tasks it was fitted on. ``pass`` is ``None`` when no cell of a
    check was evaluated; ``shortfall`` is by how much a cell misses its target (0 if met).
    """
    cells = _by_cell(rows)
    present = {(d, n) for d, n, _ in cells}
    checks: dict[str, dict] = {}

    def finish(name: str, description: str, results: list[dict], wanted: list) -> None:
        judged = [r for r in results if not r.get("reference")]  # reference rows: context only
        ok = [r["pass"] for r in judged]
        seen = {(r["d"], r["n"]) for r in judged}
        checks[name] = {
            "description": description,
            "pass": None if not ok else all(ok),
            "worst_shortfall": max((r["shortfall"] for r in judged), default=None),
            "cells": results,
            "not_evaluated": [list(c) for c in wanted if c not in seen],
        }

    # 1. CMANP >= fitted SingleTaskGP for n <= 64 at every d <= 6
    wanted = [(d, n) for d in dims for n in sizes if d <= 6 and n <= 64]
    results = []
    for d, n in wanted:
        p = _paired(cells, (d, n, "cmanp_marginal"), (d, n, "fitted_gp_marginal"))
        if p is not None:
            p["shortfall"] = max(0.0, -p["diff"])
            p["pass"] = p["diff"] >= 0
            results.append(p)
    finish(
        "cmanp_ge_fitted_gp",
        "LL(cmanp_marginal) - LL(fitted_gp_marginal) >= 0 for n <= 64, d <= 6 (paired)",
        results,
        wanted,
    )

    # 2. within 0.15 nats/point of the ceiling for n <= 64 at d <= 4
    wanted = [(d, n) for d in dims for n in sizes if d <= 4 and n <= 64]
    results = []
    for d, n in wanted:
        p = _paired(cells, (d, n, "exact_gp_marginal"), (d, n, "cmanp_marginal"))
        if p is not None:
            p["shortfall"] = max(0.0, p["diff"] - 0.15)
            p["pass"] = p["diff"] <= 0.15
            results.append(p)
    finish(
        "cmanp_near_ceiling",
        "LL(exact_gp_marginal) - LL(cmanp_marginal) <= 0.15 for n <= 64, d <= 4 (paired)",
        results,
        wanted,
    )

    # 3. no collapse beyond the training range
    wanted = [(d, 1024) for d in dims if 256 in sizes and 1024 in sizes]
    results = []
    for d, _ in wanted:
        for model in ("cmanp_marginal", "cmanp_joint"):
            p = _paired(cells, (d, 1024, model), (d, 256, model))
            if p is None:
                continue
            ceiling = _paired(cells, (d, 1024, "exact_gp_marginal"), (d, 256, "exact_gp_marginal"))
            p["model"] = model
            p["ceiling_diff"] = math.nan if ceiling is None else ceiling["diff"]
            p["shortfall"] = max(0.0, -0.05 - p["diff"])
            p["pass"] = p["diff"] >= -0.05
            results.append(p)
    finish(
        "no_collapse_beyond_training",
        "LL(n=1024) - LL(n=256) >= -0.05 per d (paired: the n = 256 context is the first 256 "
        "points of the n = 1024 one; ceiling_diff is the exact GP's change)",
        results,
        wanted,
    )

    # 4. coverage within 5 points of nominal
    wanted = sorted(present)
    results = []
    for d, n in wanted:
        for model in ("cmanp_marginal", "fitted_gp_marginal"):
            rs = [r for r in cells.get((d, n, model), {}).values() if r["cover50"] != ""]
            if not rs:
                continue
            c50 = sum(float(r["cover50"]) for r in rs) / len(rs)
            c90 = sum(float(r["cover90"]) for r in rs) / len(rs)
            err = max(abs(c50 - 0.5), abs(c90 - 0.9))
            results.append(
                {
                    "d": d,
                    "n": n,
                    "model": model,
                    "cover50": c50,
                    "cover90": c90,
                    "tasks": len(rs),
                    "shortfall": max(0.0, err - 0.05),
                    "pass": err <= 0.05,
                    "reference": model != "cmanp_marginal",
                }
            )
    finish(
        "coverage",
        "|coverage - nominal| <= 0.05 for the 50% and 90% central intervals of cmanp_marginal, "
        "every cell (fitted_gp_marginal rows, reference: true, for comparison; not judged)",
        results,
        wanted,
    )
    return checks


# ------------------------------------------------------------------------------------- plot
def _plotted(entry: dict) -> dict:
    """The plotted mean of a summary entry: ``ll_paired`` where the GP saw fewer tasks."""
    if "ll_paired" in entry:
        return {**entry, "ll": entry["ll_paired"], "ll_se": entry["ll_paired_se"]}
    return entry


def plot(summary: list[dict], path: Path, title: str) -> None:
    """LL vs n, one panel per d: CMANP, the exact-GP ceiling and the fitted SingleTaskGP
    (marginal, solid), CMANP joint and its ceiling (dashed); error bars: standard error over
    tasks. Where the GP was fitted on fewer tasks than the others it is plotted as the ceiling's
    mean plus its paired difference to the ceiling (``ll_paired``). The y axis stops 4 nats
    below the lowest ceiling; points below are drawn on that edge as open triangles (an
    untrained network or a failed fit)."""
    table = {(e["d"], e["n"], e["model"]): e for e in summary}
    dims = sorted({e["d"] for e in summary})
    ncols = min(3, len(dims))
    nrows = math.ceil(len(dims) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    lines = (
        ("cmanp_marginal", "CMANP (marginal)", "tab:blue", "-", "o"),
        ("cmanp_joint", "CMANP (joint, AND head)", "tab:blue", "--", "x"),
        ("exact_gp_marginal", "exact GP, true hyperparameters (ceiling)", "black", "-", "o"),
        ("exact_gp_joint", "exact GP (joint ceiling)", "black", "--", "x"),
        ("fitted_gp_marginal", "SingleTaskGP fitted, BoTorch defaults", "tab:orange", "-", "o"),
    )
    for ax, d in zip(axes.flat, dims):
        sizes = sorted({e["n"] for e in summary if e["d"] == d})
        ceil = [table.get((d, n, "exact_gp_marginal")) for n in sizes]
        ceiling = [c["ll"] for c in ceil if c is not None]
        floor = min(ceiling) - 4 if ceiling and all(map(math.isfinite, ceiling)) else -math.inf
        for model, label, color, ls, marker in lines:
            pts = [table.get((d, n, model)) for n in sizes]
            pts = [_plotted(p) for p in pts if p is not None]
            pts = [p for p in pts if math.isfinite(p["ll"])]
            if not pts:
                continue
            ax.errorbar(
                [p["n"] for p in pts],
                [max(p["ll"], floor) for p in pts],
                yerr=[0 if math.isnan(p["ll_se"]) or p["ll"] < floor else p["ll_se"] for p in pts],
                color=color,
                ls=ls,
                marker=marker,
                ms=4,
                capsize=2,
                label=label,
            )
            low = [p["n"] for p in pts if p["ll"] < floor]
            if low:
                ax.plot(low, [floor] * len(low), "v", color=color, mfc="none", ms=9)
        if math.isfinite(floor):
            ax.set_ylim(bottom=floor - 0.2)
        if sizes and sizes[-1] > TRAINING_MAX_CONTEXT:
            ax.axvspan(TRAINING_MAX_CONTEXT, sizes[-1] * 1.3, color="0.92", zorder=0)
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_title(f"d = {d}")
        ax.set_xlabel("context points n")
        ax.set_ylabel("target LL (nats/point)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(dims) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    legend = "grey: n beyond the training range; triangles: below the axis"
    if any("ll_paired" in e for e in summary):
        legend += "; GP fitted on fewer tasks: ceiling + paired difference"
    fig.suptitle(f"{title}\n({legend})", fontsize=9)
    fig.tight_layout(rect=(0, 0.1 if nrows == 1 else 0.06, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------- I/O
def network_fingerprint(net: CMANP) -> str:
    """SHA-256 of the network's config and weights (identifies it for resumes)."""
    h = hashlib.sha256(json.dumps(net.cfg.to_dict(), sort_keys=True).encode())
    for key, value in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def load_network(spec: str | None, max_dim: int) -> tuple[CMANP, dict]:
    """The network to score and a description of it: ``spec`` is a ``.pt`` path, a shipped name,
    or ``None`` for ``pretrained.default_bo_network(max_dim)`` (an untrained placeholder until a
    BO checkpoint ships)."""
    if spec is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            net = pretrained.default_bo_network(max_dim)
        untrained = any("UNTRAINED" in str(w.message) for w in caught)
        desc = {"source": "pretrained.default_bo_network", "untrained_placeholder": untrained}
        if untrained:
            print("WARNING: no BO checkpoint ships yet: scoring an UNTRAINED placeholder network")
        else:
            name = pretrained.default_bo_name(max_dim)
            desc["source"] = f"pretrained:{name} (default for d={max_dim})"
            desc["card"] = _card_excerpt(pretrained.card(name))
    elif Path(spec).exists():
        net = load_checkpoint(spec)
        desc = {"source": str(spec), "card": _card_excerpt(read_card(spec))}
    else:
        net = pretrained.load(spec)
        desc = {"source": f"pretrained:{spec}", "card": _card_excerpt(pretrained.card(spec))}
    desc["config"] = net.cfg.to_dict()
    desc["fingerprint"] = network_fingerprint(net)
    return net.eval(), desc


def load_networks(spec: str | None, dims: tuple[int, ...]) -> tuple[dict[int, CMANP], dict]:
    """Per d, the network to score: ``spec`` for every d, or (``None``) the shipped checkpoint
    the BoTorch model uses by default for that d (``pretrained.default_bo_network``)."""
    if spec is not None:
        net, desc = load_network(spec, max(dims))
        return {d: net for d in dims}, desc
    nets, descs = {}, {}
    for d in dims:
        nets[d], descs[d] = load_network(None, d)
    sources = {d: descs[d]["source"] for d in dims}
    fingerprint = hashlib.sha256(
        json.dumps({d: descs[d]["fingerprint"] for d in dims}, sort_keys=True).encode()
    ).hexdigest()
    desc = {
        "source": "pretrained.default_bo_network per d",
        "per_dim": sources,
        "cards": {descs[d]["source"]: descs[d].get("card") for d in dims},
        "untrained_placeholder": any(descs[d].get("untrained_placeholder") for d in dims),
        "fingerprint": fingerprint,
    }
    return nets, desc


def _card_excerpt(card: dict) -> dict:
    keys = ("sha256", "steps", "wall_time_s", "hardware", "prior")
    return {k: card[k] for k in keys if k in card}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict], append: bool) -> None:
    new = not append or not path.exists()
    with open(path, "a" if append else "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3f}"


# ------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help=f"small grid: {QUICK}")
    p.add_argument("--dims", type=int, nargs="+", help=f"input dimensions (default {DIMS})")
    p.add_argument("--sizes", type=int, nargs="+", help=f"context sizes (default {SIZES})")
    p.add_argument("--tasks", type=int, help="held-out tasks per cell (default 200)")
    p.add_argument("--tasks-gp", type=int, help="fit the GP on the first K tasks of a cell")
    p.add_argument(
        "--gp-max-n", type=int, help="cells with n above this fit the GP on --tasks-gp-above tasks"
    )
    p.add_argument(
        "--tasks-gp-above", type=int, help="GP tasks per cell with n > --gp-max-n (default 0)"
    )
    p.add_argument("--targets", type=int, default=64, help="target points per task")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="held-out task seed")
    p.add_argument(
        "--pool-n",
        type=int,
        default=POOL_N,
        help="context points drawn per task; cells use prefixes (raised to the largest n)",
    )
    p.add_argument(
        "--checkpoint",
        help="a .pt path or a shipped name (default: per d, the shipped checkpoint CMANPModel "
        "uses by default)",
    )
    p.add_argument(
        "--reuse-gp",
        metavar="CSV",
        help="take the fitted-GP rows of the cells an earlier run (CSV + its JSON) finished on "
        "the same tasks and GP settings instead of fitting again",
    )
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--name", help="file stem (default prior_fit / prior_fit_quick)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fresh", action="store_true", help="discard earlier results of NAME")
    p.add_argument("--report-only", action="store_true", help="summary + plot from the CSV")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else {"dims": DIMS, "sizes": SIZES, "tasks": 200}
    args.dims = tuple(sorted(set(args.dims or defaults["dims"])))
    args.sizes = tuple(sorted(set(args.sizes or defaults["sizes"])))
    args.tasks = args.tasks or defaults["tasks"]
    if args.tasks_gp is None:
        args.tasks_gp = defaults.get("tasks_gp", args.tasks)
    args.tasks_gp = min(args.tasks_gp, args.tasks)
    if args.gp_max_n is None:
        args.gp_max_n = defaults.get("gp_max_n")
    if args.tasks_gp_above is None:
        args.tasks_gp_above = defaults.get("tasks_gp_above", 0)
    args.tasks_gp_above = min(args.tasks_gp_above, args.tasks_gp)
    if args.gp_max_n is None:
        args.tasks_gp_above = args.tasks_gp  # not used; keeps the config canonical
    args.name = args.name or ("prior_fit_quick" if args.quick else "prior_fit")
    if min(args.dims) < 1 or min(args.sizes) < 1 or args.tasks < 1 or args.targets < 1:
        p.error("dims, sizes, tasks and targets must be positive")
    return args


def _write_report(
    json_path: Path,
    png_path: Path | None,
    rows: list[dict],
    meta: dict,
    grid: tuple[tuple[int, ...], tuple[int, ...]],
) -> dict:
    """Summary, target checks and (with ``png_path``) the plot of ``rows``; ``meta`` carries the
    config, cells done, notes, network, machine and timings. The JSON is replaced atomically."""
    dims, sizes = grid
    summary = summarize(rows)
    complete = all([d, n] in meta["cells_done"] for d in dims for n in sizes)
    result = {
        **meta,
        "complete": complete,
        "grid": {"dims": list(dims), "sizes": list(sizes)},
        "targets": target_checks(rows, dims, sizes),
        "summary": summary,
    }
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, json_path)
    if png_path is not None:
        net = result["network"]
        cfg = result["config"]
        title = (
            f"{net['source']}{' (UNTRAINED)' if net.get('untrained_placeholder') else ''}"
            f" - {cfg['tasks']} tasks/cell, GP fitted on {cfg['tasks_gp']}"
            + (
                f" ({cfg.get('tasks_gp_above')} for n > {cfg['gp_max_n']})"
                if cfg.get("gp_max_n") is not None
                else ""
            )
        )
        plot(summary, png_path, title)
    return result


def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) the grid, then write the CSV, the summary JSON and the plot."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path, png_path = (out / f"{args.name}.{ext}" for ext in ("csv", "json", "png"))
    previous = json.loads(json_path.read_text()) if json_path.exists() else None

    if args.report_only:
        if previous is None or not csv_path.exists():
            sys.exit(f"nothing to report: {json_path} or {csv_path} does not exist")
        keep = {tuple(c) for c in previous["cells_done"]}
        rows = [r for r in read_rows(csv_path) if (int(r["d"]), int(r["n"])) in keep]
        grid = (tuple(previous["grid"]["dims"]), tuple(previous["grid"]["sizes"]))
        meta = {k: previous[k] for k in previous if k not in ("targets", "summary")}
        result = _write_report(json_path, png_path, rows, meta, grid)
        _print_checks(result, csv_path, json_path, png_path)
        return result

    nets, net_desc = load_networks(args.checkpoint, args.dims)
    config = {
        "protocol": PROTOCOL,
        "seed": args.seed,
        "pool_n": max(args.pool_n, *args.sizes),
        "targets": args.targets,
        "tasks": args.tasks,
        "tasks_gp": args.tasks_gp,
        "gp_max_n": args.gp_max_n,
        "tasks_gp_above": args.tasks_gp_above,
        "network": net_desc["fingerprint"],
    }

    # ---- resume: keep the rows of the cells finished under the same configuration
    rows: list[dict] = []
    done: list[list[int]] = []
    timings: dict[str, dict] = {}
    if previous is not None and not args.fresh:
        before = previous.get("config", {})
        if before != config:
            diff = sorted(
                k for k in config.keys() | before.keys() if config.get(k) != before.get(k)
            )
            sys.exit(
                f"{json_path} was made with other settings ({', '.join(diff)} differ): pass "
                "--fresh to overwrite it or --name for another file"
            )
        done = [list(c) for c in previous.get("cells_done", [])]
        timings = previous.get("timings", {})
        keep = {tuple(c) for c in done}
        rows = [r for r in read_rows(csv_path) if (int(r["d"]), int(r["n"])) in keep]
        if done:
            print(f"resuming {json_path}: {len(done)} cells done")
    write_rows(csv_path, rows, append=False)  # drops rows of a cell interrupted mid-write
    reuse = load_fitted_gp_rows(Path(args.reuse_gp), config) if args.reuse_gp else None

    notes = []
    if args.tasks_gp < args.tasks:
        notes.append(
            f"fitted_gp rows: the first {args.tasks_gp} of {args.tasks} tasks per cell; "
            "comparisons with it are paired on those tasks"
        )
    if args.gp_max_n is not None and max(args.sizes) > args.gp_max_n:
        notes.append(
            f"fitted_gp rows for n > {args.gp_max_n}: the first {args.tasks_gp_above} tasks "
            "per cell only (GP fitting time grows as n^3)"
        )
    if net_desc.get("untrained_placeholder"):
        notes.append("the network is the UNTRAINED placeholder: the CMANP numbers mean nothing")
    meta = {
        "config": config,
        "cells_done": done,
        "notes": notes,
        "network": net_desc,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "timings": timings,
    }
    grid = (args.dims, args.sizes)

    todo = [(d, n) for n in args.sizes for d in args.dims if [d, n] not in done]
    pools: dict[int, list[BOBatch]] = {}  # per d, shared by its cells (~20 MB at d = 10)
    for d, n in todo:
        t0, c0 = time.perf_counter(), time.process_time()
        if d not in pools:
            pools[d] = sample_pool(d, args.tasks, args.targets, args.seed, config["pool_n"])
        pool_s = time.perf_counter() - t0
        large = args.gp_max_n is not None and n > args.gp_max_n
        gp_tasks = args.tasks_gp_above if large else args.tasks_gp
        cell_rows, sec = evaluate_cell(
            nets[d],
            d,
            n,
            args.tasks,
            tasks_gp=gp_tasks,
            targets=args.targets,
            seed=args.seed,
            pool=pools[d],
            fitted_gp_rows=reuse.get((d, n)) if reuse is not None else None,
        )
        sec["sample_pool"] = pool_s
        sec["threads"] = torch.get_num_threads()
        sec["loadavg_1min"] = os.getloadavg()[0]  # at the end, with this run: > threads = shared
        sec["total"] = time.perf_counter() - t0
        sec["total_cpu"] = time.process_time() - c0
        write_rows(csv_path, cell_rows, append=True)
        rows.extend(cell_rows)
        done.append([d, n])
        timings[f"d={d},n={n}"] = sec
        _write_report(json_path, None, rows, meta, grid)
        cell = {e["model"]: e for e in summarize(cell_rows)}
        line = "  ".join(
            f"{m}={_fmt(cell[m]['ll'])}" for m in MODELS if m in cell and m != "standard_normal"
        )
        print(
            f"d={d:<2} n={n:<5} {sec['total']:6.1f}s (GP {sec.get('fitted_gp', 0.0):5.1f}s, "
            f"{sec.get('fitted_gp_cpu', 0.0):5.1f}s CPU, on {gp_tasks} tasks)  {line}",
            flush=True,
        )

    result = _write_report(json_path, png_path, rows, meta, grid)
    _print_checks(result, csv_path, json_path, png_path)
    return result


def _print_checks(result: dict, *paths: Path) -> None:
    for name, check in result["targets"].items():
        worst = check["worst_shortfall"]
        worst = "-" if worst is None else f"{worst:.3f}"
        print(f"target {name}: pass={check['pass']} (worst shortfall {worst})")
    print("wrote " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
