"""Does CMANP's acquisition need so many optimiser calls because its network has kinks?

A shipped network has ReLUs in its embedders and output head, so its posterior, and qLogNEI on
it, is only piecewise smooth in the candidate: L-BFGS-B's quasi-Newton model breaks at every
kink. This replaces each ReLU by ``softplus(beta * x) / beta`` (smooth; at most ``log(2) / beta``
above the ReLU, the gap shrinking as ``exp(-beta |x|)``; linear where ``beta * x > 20``, as
``nn.Softplus`` does by default, a step below 1e-8 / beta, because ``exp(beta * x)`` overflows to
inf once ``beta * x > 709``) at inference, with no retraining, and
compares, on the points of a recorded run (as ``experiments/acquisition_cost.py``):

- how far the posterior moves: mean |change| of the posterior mean and std (in the model's
  outcome frame) at 256 Sobol points, after the first n points;
- one ``ask`` at each n: optimiser calls, CPU seconds, and the value of qLogNEI of the unmodified
  (ReLU) network at the proposed point, so a cheaper optimisation that proposes worse points
  is visible.

    python experiments/smooth_activations.py [--betas 10 30 100] [--sizes 100 200 400]

Writes ``experiments/results/smooth_activations.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acquisition_cost import ROOT, add_points_arguments, recorded_points, result_header, time_step  # noqa: E402


def smoothed(net: nn.Module, beta: float | None) -> nn.Module:
    """A copy of ``net`` with every ``nn.ReLU`` replaced by ``nn.Softplus(beta)`` (``None``: the
    unmodified copy)."""
    net = copy.deepcopy(net)
    if beta is None:
        return net
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.Softplus(beta=beta))
    return net


def posterior_shift(reference, other, X, y, n: int) -> dict:
    """Mean |change| of the posterior mean and std at 256 Sobol points (outcome frame units)."""
    from cmanp_bo import CMANPModel

    engine = torch.quasirandom.SobolEngine(X.shape[1], scramble=True, seed=0)
    Q = engine.draw(256, dtype=torch.float64)
    out = []
    for net in (reference, other):
        model = CMANPModel(X[:n], -y[:n, None], checkpoint=net)
        post = model.posterior(Q)
        scale = float(model.outcome_frame.std)
        out.append((post.mean.squeeze(-1) / scale, post.variance.sqrt().squeeze(-1) / scale))
    (m0, s0), (m1, s1) = out
    return {
        "mean_abs_mean_change": float((m1 - m0).abs().mean()),
        "mean_abs_std_change": float((s1 - s0).abs().mean()),
        "mean_std": float(s0.mean()),
    }


def reference_value(reference, X, y, n: int, candidate: torch.Tensor, seed: int) -> float:
    """qLogNEI of the unmodified network at ``candidate``, built as the timed ``ask`` builds it
    (a model of the first n - 1 points that absorbs the n-th, the same acquisition seed)."""
    from cmanp_bo import CMANPModel
    from surrogates.registry import AcquisitionOptions, Surrogate

    model = CMANPModel(X[: n - 1], -y[: n - 1, None], checkpoint=reference)
    model = model.condition_on_observations(X[n - 1 : n], -y[n - 1 : n, None])
    torch.manual_seed(seed * 100_003 + 1)  # the second ask of a surrogate of seed ``seed``
    surrogate = Surrogate(X.shape[1], seed, AcquisitionOptions(num_restarts=2, raw_samples=128))
    acqf = surrogate.acquisition(model, X[:n])
    with torch.no_grad():
        return float(acqf(candidate.reshape(1, 1, -1)))


def main(argv: list[str] | None = None) -> dict:
    from cmanp_bo import pretrained
    from surrogates.registry import AcquisitionOptions, NeuralProcessSurrogate

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_points_arguments(p, "shipped network to modify")
    p.add_argument("--betas", type=float, nargs="+", default=[10.0, 30.0, 100.0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "experiments/results/smooth_activations.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    X, y = recorded_points(args.db, args.problem, "cmanp", args.seed, args.network)
    if max(args.sizes) > X.shape[0]:
        raise SystemExit(f"the recorded run has {X.shape[0]} points; --sizes must not exceed it")
    base = pretrained.load(args.checkpoint, torch.float64)
    reference = smoothed(base, None)
    acq = AcquisitionOptions(num_restarts=2, raw_samples=128)
    dim = X.shape[1]
    rows = []
    for n in args.sizes:
        for beta in [None, *args.betas]:
            net = smoothed(base, beta)
            reps = []
            for r in range(args.repeats):
                make = functools.partial(NeuralProcessSurrogate, dim, r, acq, checkpoint=net)
                rep = time_step(make, X, y, n)
                rep["reference_log_nei"] = reference_value(
                    reference, X, y, n, torch.tensor(rep["candidate"], dtype=torch.float64), r
                )
                reps.append(rep)
            row = {
                "beta": beta,
                "n": n,
                "median_cpu_s": statistics.median(r["cpu_s"] for r in reps),
                "median_acquisition_calls": statistics.median(r["acquisition_calls"] for r in reps),
                "median_reference_log_nei": statistics.median(r["reference_log_nei"] for r in reps),
                "posterior_shift": None
                if beta is None
                else posterior_shift(reference, net, X, y, n),
                "repeats": reps,
            }
            rows.append(row)
            shift = row["posterior_shift"] or {}
            print(
                f"n={n:4d} beta={beta!s:>6}  cpu {row['median_cpu_s']:6.2f} s  calls "
                f"{[r['acquisition_calls'] for r in reps]}  ReLU log-NEI at the proposal "
                f"{[round(r['reference_log_nei'], 3) for r in reps]}  "
                f"|d mean| {shift.get('mean_abs_mean_change', 0):.4f} "
                f"|d std| {shift.get('mean_abs_std_change', 0):.4f}",
                flush=True,
            )
    result = {
        **result_header("smooth_activations.py", args, argv),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
