"""How far a closed-form quadratic regression gets on the held-out prior tasks, next to the
networks CMANPModel routes each d to (the motivation of ``PolynomialMemory``, issue 4).

On prior_fit.py's held-out task pools (same seed, same tasks, same prefixes), it scores the
marginal predictive of ``cmanp_bo.nn.regression.PolynomialMemory`` on its own: the evidence-weighted
(Bayesian model-averaged) Bayesian quadratic regression over the 5 x 6 grid of prior and noise
variances, moment matched (mean, function variance + averaged noise). Nothing is fitted or
trained. The networks' numbers are read from the prior_fit reports that prior_fit_routed.py
names (not recomputed).

    python experiments/polynomial_baseline.py [--dims 2 4 6 8 10] [--tasks 200]

Writes experiments/results/polynomial_baseline.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prior_fit import EVAL_SEED, POOL_N, context_prefix, sample_pool  # noqa: E402
from prior_fit_routed import SOURCES  # noqa: E402

from cmanp_bo.nn.regression import PolynomialMemory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def polynomial_ll(memory: PolynomialMemory, batch, num_context: int) -> float:
    """Mean marginal log-likelihood per target of the memory's moment-matched predictive."""
    c = context_prefix(batch, num_context)
    out = memory.readout(memory.stats(c.xc, c.yc, torch.Size([1])), num_context, c.xt)[0]
    var = (2 * out[:, 1]).exp() + (2 * out[:, 2]).exp()
    y = c.yt[0, :, 0]
    ll = -0.5 * ((y - out[:, 0]) ** 2 / var + var.log() + math.log(2 * math.pi))
    return ll.mean().item()


def network_ll(dim: int, size: int) -> tuple[str, float | None]:
    """The routed network's marginal LL in its prior_fit report (``None``: cell not there)."""
    if dim not in SOURCES:
        return "", None
    report, name = SOURCES[dim]
    path = RESULTS / report
    if not path.exists():
        return name, None
    for entry in json.loads(path.read_text())["summary"]:
        if (entry["d"], entry["n"], entry["model"]) == (dim, size, "cmanp_marginal"):
            return name, entry["ll"]
    return name, None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 4, 6, 8, 10])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--out", type=Path, default=RESULTS / "polynomial_baseline.json")
    args = p.parse_args(argv)
    if max(args.sizes) > POOL_N:
        p.error(f"--sizes must be <= {POOL_N}")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cells = []
    for dim in args.dims:
        memory = PolynomialMemory(dim)
        pool = sample_pool(dim, args.tasks, seed=EVAL_SEED)
        for size in args.sizes:
            lls = torch.tensor([polynomial_ll(memory, b, size) for b in pool])
            name, net = network_ll(dim, size)
            cells.append(
                {
                    "d": dim,
                    "n": size,
                    "tasks": len(pool),
                    "polynomial_ll": lls.mean().item(),
                    "polynomial_se": lls.std().item() / math.sqrt(len(pool)),
                    "network": name,
                    "network_ll": net,
                }
            )
            print(cells[-1], flush=True)
    result = {
        "what": "marginal LL per target (nats, frame units) on prior_fit.py's held-out tasks",
        "model": "PolynomialMemory alone (Bayesian quadratic regression, model-averaged)",
        "seed": EVAL_SEED,
        "machine": f"{platform.processor() or platform.machine()}, 1 torch thread",
        "seconds": round(time.perf_counter() - t0, 1),
        "cells": cells,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| d | n | quadratic regression | routed network |\n|---|---|---|---|")
    for c in cells:
        net = "–" if c["network_ll"] is None else f"{c['network_ll']:.2f} ({c['network']})"
        print(
            f"| {c['d']} | {c['n']} | {c['polynomial_ll']:.2f} ± {c['polynomial_se']:.2f} | {net} |"
        )
    return result


if __name__ == "__main__":
    main()
