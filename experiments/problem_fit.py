"""How well do the surrogates' predictive means track the standard problems themselves? (issue 6)

For each standard problem, ``--seeds`` scrambled Sobol designs of n points (the sizes a BO run of
the suite sees) are given to BoTorch's fitted ``SingleTaskGP`` and to ``CMANPModel`` with each
``--checkpoint`` (``default``: the shipped network for that d; or a name or path). On 500 uniform
test points the correlation of the posterior mean with the true objective is recorded (mean over
designs): 1 means the model ranks the cube like the objective, 0 that its mean ignores x. A
CMANP that loses to the GP at BO usually loses here first. At the design points themselves it
records how well each model reproduces its own data: the correlation of the posterior mean with
the observations (``context_corr``) and the median posterior std over the observations' std
(``context_std_ratio``; near 0 for a model that interpolates noise-free data, near 1 for one
that treats its data as noise). The table prints test correlation / context_std_ratio.

    python experiments/problem_fit.py [--checkpoint default PATH ...] [--n 10 30] [--seeds 3]

Writes experiments/results/problem_fit.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from gpytorch.mlls import ExactMarginalLogLikelihood
from torch.quasirandom import SobolEngine

from cmanp_bo import CMANPModel
from cmanp_bo.bench.problems import STANDARD, get_problem

RESULTS = Path(__file__).resolve().parent / "results"


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return (a @ b / (a.norm() * b.norm())).item()


def problem_fit(name: str, n: int, seeds: int, checkpoints: list[str]) -> dict[str, float]:
    problem = get_problem(name)
    d = problem.dim
    xt = torch.rand(500, d, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    yt = -problem.evaluate(xt).double()  # BoTorch maximises: the models see -f
    scores: dict[str, list[float]] = {"gp": [], **{c: [] for c in checkpoints}}
    context = {k: [] for k in scores}  # (corr with the observations, std / data std) at X
    for seed in range(seeds):
        x = SobolEngine(d, scramble=True, seed=seed).draw(n).double()
        y = -problem.evaluate(x).reshape(-1, 1).double()
        gp = SingleTaskGP(x, y)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        models = {"gp": gp, **{c: CMANPModel(x, y, checkpoint=c) for c in checkpoints}}
        for key, model in models.items():
            with torch.no_grad():
                mean = model.posterior(xt.unsqueeze(-2)).mean.reshape(-1)  # 500 marginals
                at_x = model.posterior(x.unsqueeze(-2))
            scores[key].append(correlation(mean, yt))
            spread = at_x.variance.sqrt().reshape(-1).median() / y.std()
            context[key].append((correlation(at_x.mean.reshape(-1), y.reshape(-1)), spread.item()))
    out = {k: round(sum(v) / len(v), 3) for k, v in scores.items()}
    for k, v in context.items():
        out[f"{k}:context_corr"] = round(sum(c for c, _ in v) / len(v), 3)
        out[f"{k}:context_std_ratio"] = round(sum(r for _, r in v) / len(v), 3)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", nargs="+", default=["default"])
    p.add_argument("--problems", nargs="+", default=list(STANDARD))
    p.add_argument("--n", type=int, nargs="+", default=[10, 30])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "problem_fit.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GP fitting and card notices
        for name in args.problems:
            for n in args.n:
                fit = problem_fit(name, n, args.seeds, args.checkpoint)
                rows.append({"problem": name, "dim": get_problem(name).dim, "n": n, **fit})
    keys = ["gp", *args.checkpoint]
    print("| problem | d | n | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for r in rows:
        print(
            f"| {r['problem']} | {r['dim']} | {r['n']} | "
            + " | ".join(f"{r[k]} / {r[k + ':context_std_ratio']}" for k in keys)
            + " |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python experiments/problem_fit.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "metric": "correlation of the posterior mean with -f on 500 uniform points, "
        f"mean over {args.seeds} scrambled Sobol designs",
        "rows": rows,
    }
    args.out.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
