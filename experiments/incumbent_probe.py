"""Why CMANP's proposals stay away from the incumbent at d >= 3 (issue 6 diagnostic).

Stop 20 measured (``standard_incumbent_distance`` in ``summary.json``) that on hartmann3, ackley4
and griewank4 the GP puts 14-57% of its proposals within 0.05 of the best point so far and CMANP
(on the copula warp) 1-2%. This script asks which of three things is behind it, on the histories
of the standard suite's runs (the database ``--db``; the first ``--seeds`` seeds of each problem;
at the steps ``--at``, as fractions of the model-driven part of the budget):

* the model: the posterior around the incumbent ``x*`` (the best point evaluated so far), at
  distances ``RADII`` in random directions. ``mean_drop``: median of ``(mu(x*) - mu(x)) / s``
  (``s``: the std of the model's own training targets; the models maximise ``-y``), how fast
  the model thinks the objective worsens away from ``x*``; ``std``: median posterior std / s
  (``std0``: at ``x*`` itself); ``noise``: the median over the evaluated points of the
  model's own noise std / s (the problems are noise-free). ``mean_best``: whether ``x*`` has
  the highest posterior mean of the evaluated points. ``local_corr``: the rank correlation of
  the posterior mean with the true objective over those points at each distance (does the
  model know which way the basin goes?).
* the acquisition optimiser: the run's own proposal is reproduced (the surrogate's
  ``_optimize``, the same seed and settings), then qLogNEI is maximised again inside the box of
  half-width ``BOX`` around ``x*``. ``local_wins``: the share of steps whose local maximum is
  above the global proposal's value (the optimiser missed a better point near ``x*``);
  ``local_gap``: the median of local minus global log-acquisition.
* the problem: ``true_better``: the share of random points at distance ``BOX`` / 2 from ``x*``
  whose true value beats it (whether refining ``x*`` pays at all at that step).

Both models (``cmanp``: the default network on the warp, as in the suite; ``gp``: Ax's default
GP, as in the suite) are built on the SAME history, for the histories of both surrogates' runs,
so a difference is the model's and not the data's.

    python experiments/incumbent_probe.py --problems hartmann3 ackley4 griewank4 powell4 \\
        --seeds 5 --threads 1                                   # about 15 min on one core

``--checkpoint NAME``: the cmanp model loads that network instead of the default (the
histories stay the default's runs and gp's). Writes experiments/results/incumbent_probe.json
(``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import warnings
from pathlib import Path

import torch
from botorch.optim import optimize_acqf

from cmanp_bo.bench.problems import get_problem
from cmanp_bo.warp import warp_outcomes
from surrogates.registry import AcquisitionOptions, _fit_gp, make_surrogate

RESULTS = Path(__file__).resolve().parent / "results"
DB = RESULTS / "bench" / "standard" / "results.sqlite"
RADII = (0.01, 0.03, 0.1, 0.3)
BOX = 0.05  # half-width of the local search box (the 0.05 of ``incumbent_distance``)
DIRECTIONS = 64
# the suite's runs compared: cmanp on the warp (the default network) and Ax's default GP
RUN_OPTIONS = {"cmanp": {"warp": "rank"}, "gp": {}}


def histories(db: sqlite3.Connection, problem: str, surrogate: str, seeds: int) -> dict:
    """``{seed: (X, y, acquisition settings)}`` of ``surrogate``'s standard runs on ``problem``
    with ``RUN_OPTIONS`` and the model revision the suite now writes."""
    out = {}
    rows = db.execute(
        "SELECT id, seed, settings FROM runs WHERE suite = 'standard' AND problem = ? "
        "AND surrogate = ? AND seed < ? ORDER BY seed",
        (problem, surrogate, seeds),
    ).fetchall()
    for run_id, seed, settings in rows:
        settings = json.loads(settings)
        if settings["options"] != RUN_OPTIONS[surrogate]:
            continue
        if surrogate == "cmanp" and (
            settings.get("model_revision") != 2 or not settings["network"].startswith("default:")
        ):
            continue
        if seed in out:
            raise ValueError(f"two {surrogate} runs of {problem} seed {seed}")
        steps = db.execute(
            "SELECT x, value FROM steps WHERE run_id = ? ORDER BY step", (run_id,)
        ).fetchall()
        X = torch.tensor([json.loads(x) for x, _ in steps], dtype=torch.float64)
        y = torch.tensor([v for _, v in steps], dtype=torch.float64)
        out[seed] = (X, y, settings["acquisition"])
    return out


def _directions(dim: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.randn(DIRECTIONS, dim, generator=gen, dtype=torch.float64)
    return u / u.norm(dim=-1, keepdim=True)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's correlation (no ties expected): invariant to the warp's monotone map."""
    ra, rb = (v.argsort().argsort().double() for v in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return (ra @ rb / (ra.norm() * rb.norm()).clamp_min(1e-12)).item()


def neighbourhood(
    model, X: torch.Tensor, Y: torch.Tensor, best: int, u: torch.Tensor, truth=None
) -> dict:
    """The posterior around ``X[best]`` in units of the training targets' std (``Y``);
    with ``truth`` (points -> the objective in the model's orientation, higher is better),
    ``local_corr@r``: the rank correlation of the posterior mean with it at distance ``r``."""
    s = Y.std().clamp_min(1e-12).item()
    x0 = X[best]
    with torch.no_grad():
        at = model.posterior(X.unsqueeze(-2))  # the evaluated points, one at a time
        mu_obs = at.mean.reshape(-1)
        mu0 = mu_obs[best].item()
        std0 = at.variance.reshape(-1)[best].sqrt().item()
        noisy = model.posterior(X.unsqueeze(-2), observation_noise=True).variance.reshape(-1)
        noise = (noisy - at.variance.reshape(-1)).clamp_min(0).sqrt().median().item()
        out = {
            "std0": std0 / s,
            "noise": noise / s,
            "mean_best": bool(mu_obs.argmax().item() == best),
        }
        for r in RADII:
            pts = (x0 + r * u).clamp(0, 1)
            post = model.posterior(pts.unsqueeze(-2))
            drop, std = (mu0 - post.mean.reshape(-1)) / s, post.variance.reshape(-1).sqrt() / s
            out[f"mean_drop@{r:g}"] = statistics.median(drop.tolist())
            out[f"std@{r:g}"] = statistics.median(std.tolist())
            if truth is not None:
                out[f"local_corr@{r:g}"] = rank_correlation(post.mean.reshape(-1), truth(pts))
    return out


def acquisition_check(surrogate, model, X: torch.Tensor, y: torch.Tensor, best: int, calls: int):
    """The run's proposal (reproduced) against qLogNEI's maximum in the box around ``X[best]``."""
    surrogate.calls = calls
    proposal = surrogate._optimize(model, X, y)
    torch.manual_seed(surrogate.seed * 100_003 + calls)
    acqf = surrogate.acquisition(model, X)
    lo, hi = (X[best] - BOX).clamp(0, 1), (X[best] + BOX).clamp(0, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local, _ = optimize_acqf(
            acqf,
            bounds=torch.stack([lo, hi]),
            q=1,
            num_restarts=surrogate.acq.num_restarts,
            raw_samples=surrogate.acq.raw_samples,
        )
        with torch.no_grad():
            values = acqf(torch.stack([proposal[None], local]))  # 2 x 1 x d
    return {
        "global": values[0].item(),
        "local": values[1].item(),
        "distance": (proposal - X[best]).norm().item(),
    }


def probe_step(
    problem, X, y, acquisition, seed, t, num_init, u, gen, checkpoint: str = "default"
) -> dict:
    """Both models on the first ``t`` points of one history."""
    Xt, yt = X[:t], y[:t]
    best = int(yt.argmin())
    options = AcquisitionOptions(**acquisition)
    out = {}
    cm = make_surrogate("cmanp", problem.dim, seed, options, warp="rank", checkpoint=checkpoint)
    gp = make_surrogate("gp", problem.dim, seed, options)
    Yc = warp_outcomes(-yt, "rank")[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {"cmanp": (cm, cm._build(Xt, Yc), Yc), "gp": (gp, _fit_gp(Xt, yt), -yt[:, None])}
    for name, (surrogate, model, Y) in models.items():
        row = neighbourhood(model, Xt, Y, best, u, truth=lambda p: -problem.evaluate(p))
        row.update(acquisition_check(surrogate, model, Xt, yt, best, t - num_init))
        out[name] = row
    pts = (Xt[best] + BOX / 2 * _directions(problem.dim, gen)).clamp(0, 1)
    out["true_better"] = (problem.evaluate(pts) < yt[best]).double().mean().item()
    return out


def summarise(cases: list[dict]) -> dict:
    """Medians and shares over the probed steps, per model."""
    out = {"steps": len(cases), "true_better": statistics.mean(c["true_better"] for c in cases)}
    for name in ("cmanp", "gp"):
        rows = [c[name] for c in cases]
        s = {
            "std0": statistics.median(r["std0"] for r in rows),
            "noise": statistics.median(r["noise"] for r in rows),
            "mean_best": statistics.mean(float(r["mean_best"]) for r in rows),
            "local_wins": statistics.mean(float(r["local"] > r["global"] + 1e-9) for r in rows),
            "local_gap": statistics.median(r["local"] - r["global"] for r in rows),
            "near_share": statistics.mean(float(r["distance"] <= BOX) for r in rows),
        }
        for r in RADII:
            s[f"mean_drop@{r:g}"] = statistics.median(row[f"mean_drop@{r:g}"] for row in rows)
            s[f"std@{r:g}"] = statistics.median(row[f"std@{r:g}"] for row in rows)
            s[f"local_corr@{r:g}"] = statistics.median(row[f"local_corr@{r:g}"] for row in rows)
        out[name] = s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", type=Path, default=DB)
    parser.add_argument("--problems", nargs="+", default=["hartmann3", "ackley4", "griewank4"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--at", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--checkpoint", default="default", help="the network cmanp loads (on the same histories)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "incumbent_probe.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    db = sqlite3.connect(args.db)
    results = {}
    for name in args.problems:
        problem = get_problem(name)
        gen = torch.Generator().manual_seed(0)
        u = _directions(problem.dim, gen)
        num_init = min(problem.num_init, problem.budget - 1)
        results[name] = {}
        for history in RUN_OPTIONS:
            runs = histories(db, name, history, args.seeds)
            if not runs:
                raise SystemExit(f"no {history} runs of {name} in {args.db}")
            cases = []
            for seed, (X, y, acquisition) in runs.items():
                for frac in args.at:
                    t = num_init + round(frac * (X.shape[0] - num_init))
                    cases.append(
                        probe_step(
                            problem, X, y, acquisition, seed, t, num_init, u, gen, args.checkpoint
                        )
                    )
            results[name][f"{history}_history"] = summarise(cases)
            print(name, history, "history:", json.dumps(results[name][f"{history}_history"]))
    meta = {"radii": RADII, "box": BOX, "checkpoint": args.checkpoint}
    args.out.write_text(json.dumps({**meta, "results": results}, indent=1))
    cols = [
        "std0",
        "noise",
        "local_corr@0.03",
        "local_corr@0.1",
        "std@0.03",
        "mean_drop@0.03",
        "mean_drop@0.1",
        "mean_best",
        "local_wins",
    ]
    print("\n| problem | history | model | " + " | ".join(cols) + " | near share |")
    print("|---" * (len(cols) + 4) + "|")
    for name, by_history in results.items():
        for history, summary in by_history.items():
            for model in ("cmanp", "gp"):
                s = summary[model]
                vals = " | ".join(f"{s[c]:.3f}" for c in cols)
                print(f"| {name} | {history} | {model} | {vals} | {s['near_share']:.2f} |")


if __name__ == "__main__":
    main()
