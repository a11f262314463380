"""Cost of one BO step at large n for CMANP and the neural peers (issue 6: "CMANP ahead of tnp and
lbanp in time and memory at n >= 1000"), as the long suite runs them.

The points replay a recorded d = 2 long-suite run (default: ackley2_long, seed 0, cmanp, in
``experiments/results/bench/long_d2/results.sqlite``); beyond its last point they continue with
scrambled Sobol points (seed 0) evaluated on the same problem, so that n can exceed what a run
made within its wall-clock cap. At each n a surrogate first asks on the first n - 1 points
(untimed: the model is built), then one ``ask`` on the first n is timed: the model absorbs the
n-th point (CMANP: the constant-cost update; the peers re-encode their context) and qLogNEI is
optimised with the long suite's settings (2 restarts, 128 raw samples, 128 MC samples). Wall and
CPU seconds, the optimiser's acquisition-call count and the pruned baseline's size, as in
``acquisition_cost.py``, and the wall seconds per call (the call count varies with the optimiser's
seed; the cost of a call is what the model changes).

Memory: every (surrogate, n, repeat) runs in a fresh process; its peak resident set is reset
just before the timed ask (Linux ``/proc/self/clear_refs``), so ``step_peak_mb`` is the step's own
peak RSS and ``step_extra_mb`` that peak minus the RSS before the step (the step's working
memory: the model's activations, the acquisition's samples).

    python experiments/peer_step_cost.py [--sizes 250 500 1000 2000] [--repeats 3] [--gp]

Writes ``experiments/results/peer_step_cost.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
DEFAULT_DB = ROOT / "experiments" / "results" / "bench" / "long_d2" / "results.sqlite"
FIXED_CALLS = 100  # acquisition calls of the step at a common call count (``fixed_calls_s``)


def points(db: Path, problem: str, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The recorded run's points, then Sobol points, ``n`` in all; and how many were recorded."""
    from acquisition_cost import recorded_points

    from cmanp_bo.bench.problems import get_problem

    X, y = recorded_points(db, problem, "cmanp", seed, None)
    recorded = min(X.shape[0], n)
    X, y = X[:recorded], y[:recorded]
    if n > recorded:
        sobol = torch.quasirandom.SobolEngine(X.shape[1], scramble=True, seed=0)
        extra = sobol.draw(n - recorded, dtype=torch.float64)
        X = torch.cat([X, extra])
        y = torch.cat([y, get_problem(problem).evaluate(extra)])
    return X, y, recorded


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def one_step(name: str, seed: int, X: torch.Tensor, y: torch.Tensor, threads: int) -> dict:
    """One timed ``ask`` of surrogate ``name`` on all of ``X`` (in a fresh process)."""
    from acquisition_cost import time_step

    from cmanp_bo.bench.runner import _peak_rss_mb, _reset_peak_rss
    from surrogates.registry import AcquisitionOptions, make_surrogate

    torch.set_num_threads(threads)
    acq = AcquisitionOptions(num_restarts=2, raw_samples=128)
    made = []

    def make():
        surrogate = make_surrogate(name, X.shape[1], seed, acq)
        ask = surrogate.ask

        def ask_resetting_the_peak(Xn, yn):
            if Xn.shape[0] == X.shape[0]:  # the timed ask: reset the peak RSS just before it
                # the model on n - 1 points (step_components); the GP keeps none
                surrogate.model_before = getattr(surrogate, "model", None)
                if not _reset_peak_rss():
                    raise RuntimeError("resetting the peak RSS needs Linux /proc/self/clear_refs")
                made.extend([_status_mb("VmRSS"), surrogate])
            return ask(Xn, yn)

        surrogate.ask = ask_resetting_the_peak
        return surrogate

    result = time_step(make, X, y, X.shape[0])
    result["rss_before_mb"] = made[0]
    result["step_peak_mb"] = _peak_rss_mb(reset=True)
    result["step_extra_mb"] = result["step_peak_mb"] - made[0]
    # the step's wall over its call count: fixed costs (update, baseline, raw samples) included
    result["wall_s_per_call"] = result["wall_s"] / max(result["acquisition_calls"], 1)
    result |= step_components(made[1], X, y, seed)
    return result


def step_components(
    surrogate, X: torch.Tensor, y: torch.Tensor, seed: int, repeats: int = 3, calls: int = 20
) -> dict:
    """The parts of a step, timed apart (wall seconds, medians): absorbing the n-th point into
    the model on n - 1 (``update_s``), building qLogNEI on the new model (``build_s``: baseline
    pruning and, with the cache, its decode), one no-grad call on the raw samples (``raw_s``,
    128 x 1 x d) and one value-and-gradient call on the restarts (``call_s``, 2 x 1 x d).

    A whole step costs about ``update + build + raw + calls x call``; the optimiser's call count
    varies with the seed and with the model's acquisition surface, so ``fixed_calls_s`` gives
    the step at the same ``FIXED_CALLS`` calls for every surrogate.
    """
    from surrogates.registry import GPSurrogate, _fit_gp

    previous = surrogate.model_before
    refit = isinstance(surrogate, GPSurrogate)  # its update is the refit on all n points
    if refit:
        repeats = 1
    gen = torch.Generator().manual_seed(seed)
    times: dict[str, list[float]] = {"update_s": [], "build_s": [], "raw_s": [], "call_s": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            t = time.perf_counter()
            if refit:
                model = _fit_gp(X, y, surrogate.warp)
            else:
                model = previous.condition_on_observations(X[-1:], -y[-1:, None])
            times["update_s"].append(time.perf_counter() - t)
            t = time.perf_counter()
            acqf = surrogate.acquisition(model, X)  # a new model: nothing cached yet
            times["build_s"].append(time.perf_counter() - t)
            raw = torch.rand(128, 1, X.shape[1], generator=gen, dtype=X.dtype)
            t = time.perf_counter()
            with torch.no_grad():
                acqf(raw)
            times["raw_s"].append(time.perf_counter() - t)
            for _ in range(calls):
                x = torch.rand(2, 1, X.shape[1], generator=gen, dtype=X.dtype).requires_grad_()
                t = time.perf_counter()
                acqf(x).sum().backward()
                times["call_s"].append(time.perf_counter() - t)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["fixed_calls_s"] = out["update_s"] + out["build_s"] + out["raw_s"]
    out["fixed_calls_s"] += FIXED_CALLS * out["call_s"]
    return out


def main(argv: list[str] | None = None) -> dict:
    from acquisition_cost import result_header

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--db", type=Path, default=DEFAULT_DB)
    p.add_argument("--problem", default="ackley2_long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--surrogates", default="cmanp,tnp,lbanp")
    p.add_argument("--gp", action="store_true", help="time the GP (refit + qLogNEI) too")
    p.add_argument("--workers", type=int, default=1, help="processes at a time")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "experiments/results/peer_step_cost.json")
    args = p.parse_args(argv)
    if min(args.sizes) < 2:
        raise SystemExit("--sizes must be at least 2 (the timed ask follows one on n - 1 points)")
    names = [s.strip() for s in args.surrogates.split(",") if s.strip()] + (["gp"] * args.gp)
    X, y, recorded = points(args.db, args.problem, args.seed, max(args.sizes))
    jobs = [(name, n, r) for n in args.sizes for name in names for r in range(args.repeats)]
    with ProcessPoolExecutor(
        args.workers, mp_context=mp.get_context("spawn"), max_tasks_per_child=1
    ) as pool:
        futures = {
            job: pool.submit(one_step, job[0], job[2], X[: job[1]], y[: job[1]], args.threads)
            for job in jobs
        }
        results = {job: fut.result() for job, fut in futures.items()}
    rows = []
    for n in args.sizes:
        for name in names:
            reps = [results[name, n, r] for r in range(args.repeats)]
            row = {"surrogate": name, "n": n, "recorded_points": min(n, recorded)}
            keys = ("wall_s", "cpu_s", "wall_s_per_call", "step_peak_mb", "step_extra_mb")
            keys += ("update_s", "build_s", "raw_s", "call_s", "fixed_calls_s")
            row |= {f"median_{k}": statistics.median(r[k] for r in reps) for k in keys}
            row["repeats"] = reps
            rows.append(row)
            print(
                f"n={n:5d}  {name:6s} wall {row['median_wall_s']:6.2f} s  "
                f"cpu {row['median_cpu_s']:6.2f} s  "
                f"per call {1e3 * row['median_wall_s_per_call']:6.1f} ms  "
                f"update {1e3 * row['median_update_s']:6.1f} ms  "
                f"build {1e3 * row['median_build_s']:6.1f} ms  "
                f"raw {1e3 * row['median_raw_s']:6.1f} ms  "
                f"call {1e3 * row['median_call_s']:5.1f} ms  "
                f"at {FIXED_CALLS} calls {row['median_fixed_calls_s']:5.2f} s  "
                f"peak {row['median_step_peak_mb']:7.1f} MB  "
                f"extra {row['median_step_extra_mb']:6.1f} MB  "
                f"baseline {[r['pruned_baseline'] for r in reps]}  "
                f"calls {[r['acquisition_calls'] for r in reps]}",
                flush=True,
            )
    args.checkpoint, args.network = "the shipped d <= 2 networks", "cmanp (the suite's default)"
    header = result_header("peer_step_cost.py", args, argv)
    header["points"]["recorded"] = recorded
    header["points"]["then"] = "scrambled Sobol points (seed 0) evaluated on the problem"
    result = {**header, "workers": args.workers, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
