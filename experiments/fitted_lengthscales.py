"""How far the standard suite's objectives sit from the BO prior's lengthscales (issue 4/6).

Fits BoTorch's default ``SingleTaskGP`` (the dimension-scaled log-normal lengthscale prior the BO
prior copies) to a scrambled Sobol design of ``--n`` points on each standard problem (on the unit
cube, as the benchmark sees it) and records the MAP lengthscales next to the prior's median
``exp(sqrt(2) + log(d) / 2)``, and the prior's share of per-dimension lengthscales at or below
the fitted median: how much of the prior looks like the problem. With the
``short_share``/``short_factor`` option of ``cmanp_bo.priors.BOPriorSampler`` it also gives that
share under the mixed prior.

    python experiments/fitted_lengthscales.py          # 10 problems x n = 20, 50; about 1 min

Writes experiments/results/fitted_lengthscales.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch.quasirandom import SobolEngine

from cmanp_bo.bench.problems import STANDARD, get_problem
from cmanp_bo.priors.bo import lengthscale_hyperprior

RESULTS = Path(__file__).resolve().parent / "results"


def prior_share_below(value: float, dim: int, short_share: float, short_factor: float) -> float:
    """P(lengthscale <= value) for one dimension under the BO prior (its mixture when
    ``short_share`` > 0; irrelevant dimensions ignored)."""
    loc, scale = lengthscale_hyperprior(dim)

    def cdf(v: float) -> float:
        return 0.5 * (1 + math.erf((math.log(v) - loc) / (scale * math.sqrt(2))))

    return (1 - short_share) * cdf(value) + short_share * cdf(value * short_factor)


def fitted(name: str, n: int, seed: int) -> dict:
    problem = get_problem(name)
    x = SobolEngine(problem.dim, scramble=True, seed=seed).draw(n).double()
    y = problem.evaluate(x).reshape(-1, 1).double()
    model = SingleTaskGP(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    ls = model.covar_module.lengthscale.detach().flatten()
    return {"median": ls.median().item(), "min": ls.min().item(), "max": ls.max().item()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, nargs="+", default=[20, 50])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--short-share", type=float, default=0.5)
    p.add_argument("--short-factor", type=float, default=16.0)
    p.add_argument("--out", type=Path, default=RESULTS / "fitted_lengthscales.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for name in STANDARD:
        d = get_problem(name).dim
        median = math.exp(lengthscale_hyperprior(d)[0])
        row = {"problem": name, "dim": d, "prior_median": median}
        for n in args.n:
            fit = fitted(name, n, args.seed)
            fit["prior_share_below_median"] = prior_share_below(fit["median"], d, 0.0, 1.0)
            fit["mixed_prior_share_below_median"] = prior_share_below(
                fit["median"], d, args.short_share, args.short_factor
            )
            row[f"n{n}"] = fit
        rows.append(row)
        fits = "  ".join(
            f"n={n}: median {row[f'n{n}']['median']:.2f} (prior share below "
            f"{row[f'n{n}']['prior_share_below_median']:.3f}, mixed "
            f"{row[f'n{n}']['mixed_prior_share_below_median']:.2f})"
            for n in args.n
        )
        print(f"{name:18s} d={d}  prior median {row['prior_median']:5.1f}  {fits}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python experiments/fitted_lengthscales.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "design": f"scrambled Sobol, seed {args.seed}; SingleTaskGP with BoTorch defaults",
        "mixed_prior": {"short_share": args.short_share, "short_factor": args.short_factor},
        "rows": rows,
    }
    args.out.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
