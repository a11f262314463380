"""Why CMANP's BO proposals pile up on the boundary of the cube at d >= 3 (issue 6 diagnostic).

On held-out tasks of the BO prior (``prior_fit.sample_pool``: the same seeds as the quality
report) with ``--n`` context points, it queries each task at ``--m`` interior points (uniform in
[0.1, 0.9]^d) and ``--m`` boundary points (uniform in the cube, then one random coordinate set
to 0 or 1), and compares the default network for that d (``pretrained.default_bo_network``) with
the exact GP posterior under the TRUE hyperparameters (both predictive, noise included, in the
context's outcome frame):

* ``std_ratio``: median over the points of network std / exact-GP std, per group;
* ``mean_z``: median of |network mean - GP mean| / GP std, per group (how far the network's mean
  is from the ideal one, in the ideal posterior's units);
* ``ei_on_boundary``: share of tasks whose expected-improvement maximiser over all 2m points
  (improvement below the best context outcome; BO minimises) is a boundary point, for the
  network and for the exact GP: the pull an acquisition feels toward the boundary;
* ``gp_mean_min_on_boundary``: share of tasks whose exact-GP posterior mean is lowest at a
  boundary point: where the prior's functions tend to have their minimum.

    python experiments/boundary_probe.py                 # d = 2, 3, 4, 6; 100 tasks; 1-2 min

Writes experiments/results/boundary_probe.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prior_fit import _marginal_std, _pad, context_prefix, exact_gp_posterior, sample_pool  # noqa: E402

from cmanp_bo import pretrained  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def query_points(dim: int, m: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` interior points in [0.1, 0.9]^d and ``m`` points with one coordinate at 0 or 1."""
    inner = 0.1 + 0.8 * torch.rand(m, dim, generator=gen, dtype=torch.float64)
    edge = torch.rand(m, dim, generator=gen, dtype=torch.float64)
    col = torch.randint(dim, (m,), generator=gen)
    edge[torch.arange(m), col] = torch.randint(2, (m,), generator=gen).double()
    return inner, edge


def expected_improvement(mean: torch.Tensor, std: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """E[max(best - y, 0)] for y ~ N(mean, std^2) (minimisation)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    z = (best - mean) / std
    return (best - mean) * normal.cdf(z) + std * normal.log_prob(z).exp()


def probe(dim: int, n: int, tasks: int, m: int, seed: int = 0) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the card's known-weakness notice
        net = pretrained.default_bo_network(dim, torch.float64).eval()
    gen = torch.Generator().manual_seed(seed + dim)
    ratio = {"interior": [], "boundary": []}
    mean_z = {"interior": [], "boundary": []}
    ei_edge = {"network": 0, "exact_gp": 0}
    min_edge = 0
    for task in sample_pool(dim, tasks, targets=1, pool_n=n):
        task = context_prefix(task, n)
        inner, edge = query_points(dim, m, gen)
        xt = torch.cat([inner, edge])[None]
        task = replace(task, xt=xt, yt=torch.zeros(1, 2 * m, 1, dtype=torch.float64))
        gp_mean, gp_cov = exact_gp_posterior(task)
        gp_std = _marginal_std(gp_cov)
        w = net.cfg.dim_x
        with torch.no_grad():
            pred = net.predict(
                net.encode(_pad(task.xc, w, torch.float64), task.yc), _pad(xt, w, torch.float64)
            )
        mean, std = pred.mean[..., 0], pred.stddev[..., 0]
        for name, part in (("interior", slice(0, m)), ("boundary", slice(m, 2 * m))):
            ratio[name].append((std[0, part] / gp_std[0, part]).median().item())
            mean_z[name].append(((mean - gp_mean).abs() / gp_std)[0, part].median().item())
        min_edge += int(gp_mean[0].argmin().item() >= m)
        best = task.yc.min()
        ei_edge["network"] += int(expected_improvement(mean, std, best)[0].argmax().item() >= m)
        ei_edge["exact_gp"] += int(
            expected_improvement(gp_mean, gp_std, best)[0].argmax().item() >= m
        )
    med = lambda v: round(statistics.median(v), 3)  # noqa: E731
    return {
        "network": pretrained.default_bo_name(dim),
        "std_ratio": {k: med(v) for k, v in ratio.items()},
        "mean_z": {k: med(v) for k, v in mean_z.items()},
        "ei_on_boundary": {k: round(v / tasks, 3) for k, v in ei_edge.items()},
        "gp_mean_min_on_boundary": round(min_edge / tasks, 3),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3, 4, 6])
    p.add_argument("--n", type=int, default=20, help="context points (a BO run's early size)")
    p.add_argument("--tasks", type=int, default=100)
    p.add_argument("--m", type=int, default=256, help="query points per group and task")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "boundary_probe.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings = {"n": args.n, "tasks": args.tasks, "m": args.m}
    result = {"settings": settings}
    for d in args.dims:
        result[f"d={d}"] = probe(d, args.n, args.tasks, args.m)
        print(f"d={d}", json.dumps(result[f"d={d}"]), flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
