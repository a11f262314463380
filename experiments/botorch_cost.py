"""Per-step surrogate cost of a BO loop vs the number of observations: CMANPModel vs SingleTaskGP.

One BO step, model side, at n observations (d = 6): absorb one new observation, then the
posterior (mean and variance) at 512 candidates (``512 x 1 x 6``, as acquisition values over raw
samples). Medians over ``--reps`` consecutive steps after one untimed warm-up step (the GP beyond
n = 1e3: ``--gp-reps`` steps, its cache build being the warm-up). Wall and CPU seconds are both
recorded; with one thread on a shared machine, CPU time is the steadier measure of cost.

* ``CMANPModel (update)``: ``condition_on_observations`` (the network's O(1) streaming update) +
  posterior. The one-off encode of the n initial points is reported as ``build_s``; the outcome
  frame's re-base (re-encode everything when n doubles) costs ``2 * build_s / n`` per absorbed
  point amortised, reported as ``rebase_amortized_s``.
* ``SingleTaskGP (update)``: ``condition_on_observations`` without refitting (GPyTorch's
  fantasy-cache update) + posterior. Hyperparameters are left at their initial values: they do not
  change the cost. The first posterior call (which builds the prediction caches) is ``build_s``.
* ``SingleTaskGP (refit)``: a new ``SingleTaskGP`` on n + 1 points, ``fit_gpytorch_mll``,
  posterior. Only up to ``--refit-max-n`` (it grows as n^3 per step).

GP rows stop at ``--gp-max-n`` (the kernel matrix at n = 1e5 needs 80 GB in float64).

Targets (issue 3): CMANP flat in n (<= 1.5x from 1e2 to 1e5) and >= 10x faster than the GP's
cheap update at n = 1e4.

Usage:
    python experiments/botorch_cost.py            # n = 1e2, 1e3, 1e4, 1e5
    python experiments/botorch_cost.py --quick    # n = 1e2, 1e3, few repeats (~1 minute)
Writes botorch_cost.{csv,json,png} to experiments/results/ (or --out).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from botorch.fit import fit_gpytorch_mll  # noqa: E402
from botorch.models import SingleTaskGP  # noqa: E402
from botorch.test_functions import Hartmann  # noqa: E402
from gpytorch.mlls import ExactMarginalLogLikelihood  # noqa: E402

from cmanp_bo import CMANPModel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 6
NUM_CANDIDATES = 512
DTYPE = torch.float64
NS_FULL = [10**2, 10**3, 10**4, 10**5]
NS_QUICK = [10**2, 10**3]
ROWS = ("CMANPModel (update)", "SingleTaskGP (update)", "SingleTaskGP (refit)")


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n x 6`` inputs in the unit cube and ``n x 1`` noisy negated Hartmann-6 values."""
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, DIM, generator=g, dtype=DTYPE)
    Y = -Hartmann(dim=DIM).to(DTYPE)(X).unsqueeze(-1)
    return X, Y + 0.05 * torch.randn(n, 1, generator=g, dtype=DTYPE)


def predict(model, X: torch.Tensor) -> None:
    with torch.no_grad():
        post = model.posterior(X)
        post.mean, post.variance  # noqa: B018  (force both)


def timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()`` (CPU time is robust to other load on a shared machine)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def time_updates(
    model, new_X, new_Y, X_cand, reps: int, warmup: int = 1
) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of ``reps`` steps (absorb one point + predict) after warm-up steps."""
    times = []
    for i in range(reps + warmup):

        def step(i=i):
            nonlocal model
            with torch.no_grad():
                model = model.condition_on_observations(new_X[i : i + 1], new_Y[i : i + 1])
            predict(model, X_cand)

        t = timed(step)
        if i >= warmup:
            times.append(t)
    return times


def time_refits(X, Y, new_X, new_Y, X_cand, reps: int) -> list[tuple[float, float]]:
    def step(i):
        gp = SingleTaskGP(torch.cat([X, new_X[i : i + 1]]), torch.cat([Y, new_Y[i : i + 1]]))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
        predict(gp, X_cand)

    return [timed(lambda i=i: step(i)) for i in range(reps)]


def summarize(row: str, n: int, times: list[tuple[float, float]], build_s, **extra) -> dict:
    wall = [w for w, _ in times]
    cpu = [c for _, c in times]
    q = statistics.quantiles(wall, n=4) if len(wall) > 1 else [wall[0]] * 3
    out = {
        "model": row,
        "n": n,
        "median_s": statistics.median(wall),
        "q1_s": q[0],
        "q3_s": q[2],
        "median_cpu_s": statistics.median(cpu),
        "reps": len(times),
        "build_s": build_s,
    }
    out.update(extra)
    build = "-" if build_s is None else f"{build_s:.3f} s"
    print(
        f"{row:24s} n={n:>6d}  median {out['median_s'] * 1e3:9.2f} ms  "
        f"[{q[0] * 1e3:.2f}, {q[2] * 1e3:.2f}]  cpu {out['median_cpu_s'] * 1e3:9.2f} ms  "
        f"build {build}",
        flush=True,
    )
    return out


def run(args: argparse.Namespace, record) -> None:
    """Time every (model, n); ``record(row)`` is called after each, so partial runs keep data.

    All CMANP rows first (fast), then the GP rows by ascending n.
    """
    X_cand = torch.rand(
        NUM_CANDIDATES, 1, DIM, generator=torch.Generator().manual_seed(1), dtype=DTYPE
    )
    CMANPModel(*make_data(2, 0), checkpoint=args.checkpoint)  # load the network once
    data = {
        n: (*make_data(n, seed=n), *make_data(max(args.reps, args.gp_reps) + 1, seed=n + 1))
        for n in args.ns
    }
    for n, (X, Y, new_X, new_Y) in data.items():
        t0 = time.perf_counter()
        model = CMANPModel(X, Y, checkpoint=args.checkpoint)
        build = time.perf_counter() - t0
        times = time_updates(model, new_X, new_Y, X_cand, args.reps)
        record(summarize(ROWS[0], n, times, build, rebase_amortized_s=2 * build / n))
    for n, (X, Y, new_X, new_Y) in data.items():  # ascending n: the costliest GP runs last
        if n <= args.gp_max_n:
            gp = SingleTaskGP(X, Y)
            gp.eval()
            # the first posterior builds the prediction caches that the cheap update extends
            build, _ = timed(lambda gp=gp: predict(gp, X_cand))
            # beyond 1e3 one step costs seconds to minutes: the cache build is the warm-up
            small = n <= 1000
            reps, warmup = (args.reps, 1) if small else (args.gp_reps, 0)
            times = time_updates(gp, new_X, new_Y, X_cand, reps, warmup)
            record(summarize(ROWS[1], n, times, build))
            del gp
        if n <= args.refit_max_n:
            reps = args.refit_reps if n > 100 else args.reps
            record(summarize(ROWS[2], n, time_refits(X, Y, new_X, new_Y, X_cand, reps), None))


def targets(rows: list[dict]) -> dict:
    """The issue's two targets, on wall and on CPU medians."""
    out = {}
    for key, suffix in (("median_s", ""), ("median_cpu_s", "_cpu")):
        med = {(r["model"], r["n"]): r[key] for r in rows}
        lo, hi = (ROWS[0], 100), (ROWS[0], 100_000)
        if lo in med and hi in med:
            ratio = med[hi] / med[lo]
            out[f"cmanp_ratio_1e5_over_1e2{suffix}"] = ratio
            out[f"cmanp_flat_target_met{suffix}"] = ratio <= 1.5
        if (ROWS[0], 10_000) in med and (ROWS[1], 10_000) in med:
            speedup = med[(ROWS[1], 10_000)] / med[(ROWS[0], 10_000)]
            out[f"speedup_vs_gp_update_at_1e4{suffix}"] = speedup
            out[f"speedup_target_met{suffix}"] = speedup >= 10
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Median wall seconds (with quartiles) and median CPU seconds per step vs n, log-log."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for name, marker in zip(ROWS, "osD"):
        pts = sorted(
            (r["n"], r["median_s"], r["q1_s"], r["q3_s"], r["median_cpu_s"])
            for r in rows
            if r["model"] == name
        )
        if not pts:
            continue
        n, med, q1, q3, cpu = map(list, zip(*pts))
        err = [[m - a for m, a in zip(med, q1)], [b - m for m, b in zip(med, q3)]]
        axes[0].errorbar(n, med, yerr=err, marker=marker, capsize=3, label=name)
        axes[1].plot(n, cpu, marker=marker, label=name)
    for ax, what in zip(
        axes, ("wall seconds per step (median, quartiles)", "CPU seconds per step (median)")
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("observations n")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.yaxis.set_tick_params(labelleft=True)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="n = 1e2, 1e3 and few repeats")
    p.add_argument("--ns", type=int, nargs="+", default=None)
    p.add_argument("--reps", type=int, default=15, help="timed steps per n (CMANP, small GP)")
    p.add_argument("--gp-reps", type=int, default=1, help="timed GP update steps for n > 1e3")
    p.add_argument("--refit-reps", type=int, default=2, help="timed GP refits for n > 1e2")
    p.add_argument("--gp-max-n", type=int, default=10_000)
    p.add_argument("--refit-max-n", type=int, default=1_000)
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument(
        "--replot", action="store_true", help="redraw the PNG (and targets) from the JSON only"
    )
    args = p.parse_args()
    if args.ns is None:
        args.ns = NS_QUICK if args.quick else NS_FULL
    if args.quick:
        args.reps, args.gp_reps, args.refit_reps = 5, 2, 1
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="no pretrained BO checkpoint")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "botorch_cost_quick" if args.quick else "botorch_cost"
    if args.replot:
        saved = json.loads((out / f"{stem}.json").read_text())
        saved["meta"]["targets"] = targets(saved["rows"])
        (out / f"{stem}.json").write_text(json.dumps(saved, indent=2) + "\n")
        plot(saved["rows"], out / f"{stem}.png", plot_title(saved["meta"]["threads"]))
        return
    net = CMANPModel(*make_data(2, 0), checkpoint=args.checkpoint).network
    rows: list[dict] = []
    start = time.perf_counter()

    def record(row: dict) -> None:
        rows.append(row)
        write(rows, args, net, time.perf_counter() - start, out, stem)

    run(args, record)
    print(json.dumps(targets(rows), indent=2))
    print(f"wrote {out / stem}.{{csv,json,png}} in {time.perf_counter() - start:.0f} s")


def write(rows: list[dict], args, net, wall: float, out: Path, stem: str) -> None:
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "dim": DIM,
        "num_candidates": NUM_CANDIDATES,
        "checkpoint": args.checkpoint,
        "network_config": net.cfg.to_dict(),
        "network_dtype": "float64",
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average": os.getloadavg(),
        "wall_s": wall,
        "complete": False,
        "targets": targets(rows),
    }
    expected = len(args.ns) + sum(n <= args.gp_max_n for n in args.ns)
    meta["complete"] = len(rows) == expected + sum(n <= args.refit_max_n for n in args.ns)
    fields = [
        "model", "n", "median_s", "q1_s", "q3_s", "median_cpu_s", "reps", "build_s",
        "rebase_amortized_s",
    ]  # fmt: skip
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    plot(rows, out / f"{stem}.png", plot_title(args.threads))


def plot_title(threads: int) -> str:
    return (
        f"One BO step: absorb 1 observation + posterior at {NUM_CANDIDATES} candidates "
        f"(d={DIM}, {threads} thread(s))"
    )


if __name__ == "__main__":
    main()
