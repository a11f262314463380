"""Cost of one BO step with qLogNEI, as the benchmark runs it: CMANP with and without the
baseline cache (``CMANPModel(cache_baseline=...)``), and the GP, on the points of a recorded run.

The points are those of a recorded long-suite run (default: rosenbrock8, seed 0, cmanp with
``bo-d7-10-poly``, in ``experiments/results/bench/long_poly/results.sqlite``), so the pruned
baseline has the size it had in the loop. At each n the surrogate first sees the first n - 1
points (untimed), then one ``ask`` on the first n is timed: the model absorbs the n-th point and
optimises qLogNEI with the benchmark's long-suite settings (2 restarts, 128 raw samples, 128 MC
samples). A CMANP with and without the cache proposes the same points up to rounding, so the
difference is cost alone. Medians over ``--repeats`` (different optimiser seeds); wall and CPU
seconds, and how many times the optimiser called the acquisition (the step's cost is about
that count times the cost of one call, and the count varies with the seed).

    python experiments/acquisition_cost.py [--sizes 100 200 400] [--repeats 3] [--gp] [--hyp-gp]

``--hyp-gp``: also ``HypothesisAveragedGP`` (``hyp-gp``: rebuilt from all points at each step, its
cost grows as n^3 per hypothesis).

Writes ``experiments/results/acquisition_cost.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import sqlite3
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DB = ROOT / "experiments" / "results" / "bench" / "long_poly" / "results.sqlite"


def recorded_points(db: Path, problem: str, surrogate: str, seed: int, network: str | None):
    """``(X, y)`` of the first stored run of ``problem`` / ``surrogate`` / ``seed`` (whose network
    identity contains ``network``, if given), in evaluation order."""
    con = sqlite3.connect(db)
    try:
        runs = con.execute(
            "SELECT id, settings FROM runs WHERE problem=? AND surrogate=? AND seed=? ORDER BY id",
            (problem, surrogate, seed),
        ).fetchall()
        runs = [r for r in runs if network is None or network in r[1]]
        if not runs:
            raise SystemExit(f"no {surrogate} run of {problem} seed {seed} in {db}")
        rows = con.execute(
            "SELECT x, value FROM steps WHERE run_id=? ORDER BY step", (runs[0][0],)
        ).fetchall()
    finally:
        con.close()
    X = torch.tensor([json.loads(x) for x, _ in rows], dtype=torch.float64)
    y = torch.tensor([v for _, v in rows], dtype=torch.float64)
    return X, y


def time_step(make, X, y, n: int) -> dict:
    """One timed ``ask`` on the first ``n`` points after an untimed one on ``n - 1``."""
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement

    sizes: list[int] = []
    calls: list[int] = []
    init, forward = qLogNoisyExpectedImprovement.__init__, qLogNoisyExpectedImprovement.forward

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        sizes.append(int(self.X_baseline.shape[-2]))

    def recording_forward(self, X):
        calls.append(X.shape[0] if X.dim() > 2 else 1)
        return forward(self, X)

    surrogate = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        surrogate.ask(X[: n - 1], y[: n - 1])
        qLogNoisyExpectedImprovement.__init__ = recording_init
        qLogNoisyExpectedImprovement.forward = recording_forward
        try:
            wall, cpu = time.perf_counter(), time.process_time()
            candidate = surrogate.ask(X[:n], y[:n])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        finally:
            qLogNoisyExpectedImprovement.__init__ = init
            qLogNoisyExpectedImprovement.forward = forward
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "pruned_baseline": sizes[-1] if sizes else None,
        "acquisition_calls": len(calls),  # optimiser evaluations (raw samples: one batched call)
        "candidate": candidate.tolist(),
    }


def result_header(script: str, args: argparse.Namespace, argv: list[str] | None) -> dict:
    """The command, recorded points, network, settings and hardware of a result file."""
    from cmanp_bo.train import hardware

    return {
        "command": " ".join([f"python experiments/{script}", *(argv or sys.argv[1:])]),
        "points": {
            "db": str(args.db.relative_to(ROOT)) if args.db.is_relative_to(ROOT) else str(args.db),
            "problem": args.problem,
            "seed": args.seed,
            "run_network": args.network,
        },
        "checkpoint": args.checkpoint,
        "acquisition": {"num_restarts": 2, "raw_samples": 128, "mc_samples": 128},
        "hardware": hardware(),
        "threads": args.threads,
    }


def add_points_arguments(p: argparse.ArgumentParser, checkpoint_help: str) -> None:
    """The recorded run whose points are replayed, and the network to use on them."""
    p.add_argument("--db", type=Path, default=DEFAULT_DB)
    p.add_argument("--problem", default="rosenbrock8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--network", default="bo-d7-10-poly", help="run whose points are used")
    p.add_argument("--checkpoint", default="bo-d7-10-poly", help=checkpoint_help)


def main(argv: list[str] | None = None) -> dict:
    from surrogates.registry import (
        AcquisitionOptions,
        GPSurrogate,
        HypothesisGPSurrogate,
        NeuralProcessSurrogate,
    )

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_points_arguments(p, "CMANP network to time")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gp", action="store_true", help="time the GP (refit + qLogNEI) too")
    p.add_argument("--hyp-gp", action="store_true", help="time HypothesisAveragedGP too")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "experiments/results/acquisition_cost.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    X, y = recorded_points(args.db, args.problem, "cmanp", args.seed, args.network)
    if max(args.sizes) > X.shape[0]:
        raise SystemExit(f"the recorded run has {X.shape[0]} points; --sizes must not exceed it")
    acq = AcquisitionOptions(num_restarts=2, raw_samples=128)
    dim = X.shape[1]
    methods = {
        "cmanp (cache_baseline)": lambda r: NeuralProcessSurrogate(
            dim, r, acq, checkpoint=args.checkpoint, cache_baseline=True
        ),
        "cmanp (no cache)": lambda r: NeuralProcessSurrogate(
            dim, r, acq, checkpoint=args.checkpoint, cache_baseline=False
        ),
    }
    if args.gp:
        methods["gp (refit)"] = lambda r: GPSurrogate(dim, r, acq)
    if args.hyp_gp:
        methods["hyp-gp (rebuilt)"] = lambda r: HypothesisGPSurrogate(dim, r, acq)
    rows = []
    for n in args.sizes:
        for name, make in methods.items():
            reps = [time_step(functools.partial(make, r), X, y, n) for r in range(args.repeats)]
            row = {
                "method": name,
                "n": n,
                "median_wall_s": statistics.median(r["wall_s"] for r in reps),
                "median_cpu_s": statistics.median(r["cpu_s"] for r in reps),
                "repeats": reps,
            }
            rows.append(row)
            print(
                f"n={n:5d}  {name:24s} wall {row['median_wall_s']:6.2f} s  "
                f"cpu {row['median_cpu_s']:6.2f} s  "
                f"baseline {[r['pruned_baseline'] for r in reps]}  "
                f"acquisition calls {[r['acquisition_calls'] for r in reps]}",
                flush=True,
            )
    speedups = {}
    for n in args.sizes:
        by = {r["method"]: r for r in rows if r["n"] == n}
        on, off = by["cmanp (cache_baseline)"], by["cmanp (no cache)"]
        speedups[n] = {
            "cpu": off["median_cpu_s"] / on["median_cpu_s"],
            "wall": off["median_wall_s"] / on["median_wall_s"],
        }
    result = {
        **result_header("acquisition_cost.py", args, argv),
        "rows": rows,
        "speedup_no_cache_over_cache": speedups,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for n, s in speedups.items():
        print(
            f"n={n}: the cache makes a step {s['cpu']:.2f}x cheaper in CPU ({s['wall']:.2f}x wall)"
        )
    return result


if __name__ == "__main__":
    main()
