"""How much noise the network infers under each outcome warp (issue 6 diagnostic, stop 23).

Stop 21 found the d = 3..6 network's own noise std at 0.16-0.25 of the outcomes' std on
noise-free benchmark problems, beyond the prior's largest noise (0.1 of the signal). This script
asks whether that is the data's doing or the warp's. For each warp (none, ``rank``, ``power``)
it builds the network surrogate on

* ``prior``: noise-free draws of the network's own prior (``BOPriorSampler`` with
  ``noise_max`` 0.003, so the true noise is at most 0.3% of the signal), d = 3, 4, 6 and
  n = 20, 40 (the sizes of a standard-suite run), ``--tasks`` draws per cell;
* ``history``: the first half of each standard-suite cmanp run (seeds ``0..--seeds-1``) of
  the noise-free problems ``--problems``, from the committed database;

and reports the median over points and tasks of the model's noise std (the difference between
the predictive variance with and without observation noise at the observed points) divided by
the std of the outcomes it was given (after the warp). No warp and ``power`` see the outcomes
standardised; ``rank`` sees their normal scores.

    python experiments/warp_noise.py --threads 1      # about 2 min on one core

Writes experiments/results/warp_noise.json (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from incumbent_probe import DB, histories  # noqa: E402

from cmanp_bo.bench.problems import get_problem  # noqa: E402
from cmanp_bo.priors.bo import BOPriorSampler  # noqa: E402
from cmanp_bo.warp import warp_outcomes  # noqa: E402
from surrogates.registry import AcquisitionOptions, make_surrogate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WARPS = (None, "rank", "power")


def model_noise(dim: int, X: torch.Tensor, y: torch.Tensor, warp: str | None, checkpoint: str):
    """The cmanp surrogate's model on ``(X, y)`` (higher is better) under ``warp``: its median
    noise std at the observed points over the std of the outcomes it saw."""
    if warp is None:
        Y = ((y - y.mean()) / y.std())[:, None]
    else:
        Y = warp_outcomes(y, warp)[:, None]
    surrogate = make_surrogate("cmanp", dim, 0, AcquisitionOptions(), checkpoint=checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = surrogate._build(X, Y)
        with torch.no_grad():
            latent = model.posterior(X.unsqueeze(-2)).variance.reshape(-1)
            noisy = model.posterior(X.unsqueeze(-2), observation_noise=True).variance.reshape(-1)
    return ((noisy - latent).clamp_min(0).sqrt().median() / Y.std()).item()


def prior_cells(dims, sizes, tasks: int, checkpoint: str) -> list[dict]:
    rows = []
    for d in dims:
        for n in sizes:
            sampler = BOPriorSampler(max_dim=max(dims), min_dim=1, seed=1000 + d, noise_max=0.003)
            values: dict[str, list[float]] = {str(w): [] for w in WARPS}
            for _ in range(tasks):
                batch = sampler.sample(1, dim=d, num_context=n)
                X, y = batch.xc[0, :, :d].double(), batch.yc[0, :, 0].double()
                for w in WARPS:
                    values[str(w)].append(model_noise(d, X, y, w, checkpoint))
            rows.append(
                {"data": "prior", "d": d, "n": n, "tasks": tasks}
                | {w: statistics.median(v) for w, v in values.items()}
            )
    return rows


def history_cells(problems, seeds: int, checkpoint: str, db: Path = DB) -> list[dict]:
    rows = []
    with sqlite3.connect(db) as conn:
        for name in problems:
            problem = get_problem(name)
            runs = histories(conn, name, "cmanp", seeds)
            values: dict[str, list[float]] = {str(w): [] for w in WARPS}
            sizes = []
            for X, y, _ in runs.values():
                t = len(y) // 2
                sizes.append(t)
                for w in WARPS:  # the benchmark minimises y; the model sees -y
                    values[str(w)].append(model_noise(problem.dim, X[:t], -y[:t], w, checkpoint))
            rows.append(
                {"data": name, "d": problem.dim, "n": statistics.median(sizes), "tasks": len(runs)}
                | {w: statistics.median(v) for w, v in values.items()}
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[3, 4, 6])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 40])
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument(
        "--problems",
        nargs="*",
        default=["hartmann3", "ackley4", "griewank4", "hartmann6"],
        help="standard-suite problems whose histories to probe (none: the prior cells only)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--checkpoint", default="default")
    parser.add_argument("--db", type=Path, default=DB)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "warp_noise.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = prior_cells(args.dims, args.sizes, args.tasks, args.checkpoint)
    if args.problems:
        rows += history_cells(args.problems, args.seeds, args.checkpoint, args.db)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checkpoint": args.checkpoint, "rows": rows}, indent=1) + "\n")
    print("| data | d | n | tasks | no warp | rank | power |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['data']} | {r['d']} | {r['n']} | {r['tasks']} | {r['None']:.3f} | "
            f"{r['rank']:.3f} | {r['power']:.3f} |"
        )


if __name__ == "__main__":
    main()
