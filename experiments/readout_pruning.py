"""How many of the hypothesis memory's components the marginal readout keeps, and what dropping
the rest changes (stop 37, ``HypothesisMemory.MARGINAL_MIN_WEIGHT``).

Beyond ``hypothesis_exact_points`` the readout of the d = 2..6 default network (``bo-d3-6-resid``)
sums only the (ratio, bank) components with at least 1e-12 of the heaviest one's weight. Per
problem and n (uniform points, seed 0, the network's bank drawn for the problem's d, as
``CMANPModel`` builds it), this counts the kept components and compares the readout at 64
uniform targets with the sum over every component (``every_component_readout``): the largest
absolute difference of the mean, log std and log noise std, in the outcome frame.

    python experiments/readout_pruning.py [--problems hartmann6_long ackley2_long]
        [--sizes 130 300 600 1000]

Writes ``experiments/results/readout_pruning.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cmanp_bo.nn.regression import LOG_FLOOR

OUT = Path(__file__).resolve().parent / "results" / "readout_pruning.json"


def every_component_readout(memory, stats, n: int, xq: torch.Tensor) -> tuple:
    """The random-feature readout summed over every (ratio, bank) component, unpruned: the
    model average as ``HypothesisMemory``'s docstring states it. Returns the readout
    (``... x t x 3``), the weights (``... x R x B``) and every factor of ``G + r I``."""
    alpha, w_rb, noise_w = memory._posterior(stats, n)
    gram = 0.5 * (stats.gram + stats.gram.transpose(-1, -2)).unsqueeze(-4)  # b x 1 x B x m x m
    eye = torch.eye(gram.shape[-1], dtype=torch.float64)
    chol = torch.linalg.cholesky(gram + memory.ratios[:, None, None, None] * eye)
    phi = memory.features(xq).unsqueeze(-4)  # b x 1 x B x t x m
    mean = (phi @ alpha.unsqueeze(-1)).squeeze(-1)
    half = torch.linalg.solve_triangular(chol, phi.transpose(-1, -2), upper=False)
    avg = (w_rb.unsqueeze(-1) * mean).sum((-3, -2))
    second = (w_rb.unsqueeze(-1) * mean.pow(2)).sum((-3, -2))
    var_f = (noise_w.unsqueeze(-1) * half.pow(2).sum(-2)).sum((-3, -2))
    var = (var_f + second - avg.pow(2)).clamp_min(0)
    noise = noise_w.sum((-2, -1))[..., None].expand_as(avg)
    out = torch.stack([avg, 0.5 * (var + LOG_FLOOR).log(), 0.5 * noise.log()], -1)
    return out, w_rb, chol


def cell(problem: str, n: int) -> dict:
    from cmanp_bo.bench.problems import get_problem
    from cmanp_bo.botorch_model import CMANPModel

    p = get_problem(problem)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, p.dim, generator=g, dtype=torch.float64)
    model = CMANPModel(X, -p.evaluate(X).unsqueeze(-1))
    memory, stats = model.network.hypothesis, model._state.hypothesis
    if getattr(stats, "x", None) is not None:
        raise SystemExit(f"n = {n} is within the exact points: no random-feature readout")
    xq = torch.rand(64, p.dim, generator=g, dtype=torch.float64)
    width = memory.frequencies.shape[-2]  # the network's padded input width
    xq = torch.cat([xq, xq.new_zeros(64, width - p.dim)], -1)  # as the model pads its inputs
    full, w_rb, _ = every_component_readout(memory, stats, n, xq)
    kept = memory._marginal_feature_components(stats, n)[2].shape[-1]
    diff = (memory.readout(stats, n, xq).double() - full).abs().amax(-2)
    return {
        "problem": problem,
        "n": n,
        "components": w_rb[0].numel() if w_rb.dim() > 2 else w_rb.numel(),
        "kept": kept,
        "max_abs_diff": dict(zip(["mean", "log_std", "log_noise_std"], diff.tolist())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["hartmann6_long", "ackley2_long"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[130, 300, 600, 1000])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [cell(problem, n) for problem in args.problems for n in args.sizes]
    for r in rows:
        d = r["max_abs_diff"]
        print(
            f"{r['problem']:16s} n={r['n']:5d}  kept {r['kept']:4d} of {r['components']}"
            f"  max |diff| mean {d['mean']:.1e}  log std {d['log_std']:.1e}"
            f"  log noise std {d['log_noise_std']:.1e}"
        )
    command = "python experiments/readout_pruning.py"
    args.out.write_text(json.dumps({"command": command, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
