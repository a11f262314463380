"""Model-side cost of one ``ax.Client.get_next_trials`` call vs the number of completed trials:
the CMANP generation strategy vs Ax's default GP (BoTorch ``SingleTaskGP`` + qLogNEI).

A 6-parameter problem (Hartmann-6 on the unit cube, minimised). For each method one ``Client``
grows through the sizes in ``--ns``: random completed trials are attached up to the size, then
``--reps`` consecutive BO calls are timed, each proposing one trial that is completed before the
next call (so CMANP's state cache sees one new observation per call, as in a real loop).

Per call we record the wall seconds of the whole ``get_next_trials`` and its model side: the
BoTorch generator's ``fit`` (build/fit the surrogate from the data Ax hands over) plus its ``gen``
(build the acquisition function, e.g. qLogNEI's baseline pruning, and optimise it). The rest is
Ax's own bookkeeping (data extraction, transforms), which grows with n for both methods alike.

* CMANP: ``cmanp_bo.ax.cmanp_generation_strategy``. The first call at each size follows the bulk
  attachment of many trials, so it encodes everything (``first_call_s``, not in the median); the
  timed calls each embed one new observation. A re-base of the outcome frame (every doubling of n)
  would re-encode everything once; the sizes here avoid landing on one, so the cost of a re-base is
  measured separately (``rebase_s``: encoding all n points with the network).
* GP: Ax's default modular BoTorch node (``SingleTaskGP``, ``fit_gpytorch_mll``, qLogNEI, Ax's
  default transforms). Every call refits from scratch, so there is no warm-up: all calls are timed.
  Once the median GP model-side time at a size exceeds ``--gp-cap`` seconds, larger sizes are
  skipped (a single call beyond the cap stops the remaining repeats at that size).

Both methods get the same, fixed acquisition-optimizer budget: ``--num-restarts 4``,
``--raw-samples 128``, at most ``--maxiter 30`` L-BFGS-B iterations. With Ax's defaults (20
restarts, 1024 raw samples, up to 200 iterations; ``--ax-defaults``) the optimizer's work varies
from call to call by more than 10x with the untrained placeholder network (its acquisition surface
is rough), which would hide the model's cost in optimizer noise. We also record, per call, the
number of posterior evaluations and qLogNEI's baseline size after pruning: the acquisition part
grows with that baseline for any model.

Wall and CPU seconds are both recorded; on a shared machine CPU time is the steadier measure.

Usage:
    python experiments/ax_cost.py            # n = 50, 200, 500, 1000, 2000
    python experiments/ax_cost.py --quick    # n = 50, 200, 3 repeats (a few minutes)
Writes ax_cost.{csv,json,png} (``--quick``: ax_cost_quick.*) to experiments/results/ (or --out).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
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
from ax import Client, RangeParameterConfig  # noqa: E402
from ax.adapter.registry import Generators  # noqa: E402
from ax.generation_strategy.dispatch_utils import get_derelativize_config  # noqa: E402
from ax.generation_strategy.generation_strategy import (  # noqa: E402
    GenerationNode,
    GenerationStrategy,
)
from ax.generation_strategy.generator_spec import GeneratorSpec  # noqa: E402
from ax.generators.torch.botorch_modular.generator import BoTorchGenerator  # noqa: E402
from ax.generators.torch.botorch_modular.surrogate import (  # noqa: E402
    ModelConfig,
    SurrogateSpec,
)
from ax.utils.common.logger import set_stderr_log_level  # noqa: E402
from botorch.acquisition import logei as _logei  # noqa: E402
from botorch.models.gpytorch import BatchedMultiOutputGPyTorchModel  # noqa: E402
from botorch.test_functions import Hartmann  # noqa: E402

import cmanp_bo.ax as cax  # noqa: E402
from cmanp_bo.botorch_model import ENCODE_BLOCK, CMANPModel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIM = 6
NS_FULL = [50, 200, 500, 1000, 2000]
NS_QUICK = [50, 200]
METHODS = ["CMANP", "GP (Ax default)"]
HARTMANN = Hartmann(dim=DIM)

# ------------------------------------------------------------------------------------ timing
_TIMES: dict[str, float] = {
    k: 0.0 for k in ("fit", "gen", "prune", "fit_cpu", "gen_cpu", "prune_cpu")
}


def _timed(name: str, fn):
    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _TIMES[name] += time.perf_counter() - start
            _TIMES[f"{name}_cpu"] += time.process_time() - cpu

    return wrapper


BoTorchGenerator.fit = _timed("fit", BoTorchGenerator.fit)
BoTorchGenerator.gen = _timed("gen", BoTorchGenerator.gen)
# qLogNEI's baseline pruning: a joint posterior over ALL observed points (part of ``gen``).
_logei.prune_inferior_points = _timed("prune", _logei.prune_inferior_points)
_POSTERIOR_CALLS = [0]


def _counted(fn):
    def wrapper(*args, **kwargs):
        _POSTERIOR_CALLS[0] += 1
        return fn(*args, **kwargs)

    return wrapper


CMANPModel.posterior = _counted(CMANPModel.posterior)  # SingleTaskGP's posterior comes from:
BatchedMultiOutputGPyTorchModel.posterior = _counted(BatchedMultiOutputGPyTorchModel.posterior)


# ------------------------------------------------------------------------------------ setup
def objective(params: dict) -> float:
    x = torch.tensor([[params[f"x{i}"] for i in range(DIM)]], dtype=torch.float64)
    return float(HARTMANN(x))


def gp_strategy(optimizer_kwargs: dict) -> GenerationStrategy:
    """Ax's default BO node (as ``Client``'s "fast" method picks it), without initialization."""
    generator_kwargs = {
        "surrogate_spec": SurrogateSpec(model_configs=[ModelConfig(name="MBM defaults")]),
        "transform_configs": get_derelativize_config(derelativize_with_raw_status_quo=True),
    }
    if optimizer_kwargs:
        generator_kwargs["default_model_gen_options"] = {"optimizer_kwargs": optimizer_kwargs}
    node = GenerationNode(
        name="MBM",
        generator_specs=[
            GeneratorSpec(
                generator_enum=Generators.BOTORCH_MODULAR, generator_kwargs=generator_kwargs
            )
        ],
    )
    return GenerationStrategy(name="MBM", nodes=[node])


def make_client(method: str, args: argparse.Namespace) -> Client:
    client = Client(random_seed=args.seed)
    client.configure_experiment(
        parameters=[
            RangeParameterConfig(name=f"x{i}", parameter_type="float", bounds=(0.0, 1.0))
            for i in range(DIM)
        ]
    )
    client.configure_optimization(objective="-hartmann6")
    optimizer_kwargs = {}
    if not args.ax_defaults:
        optimizer_kwargs["num_restarts"] = args.num_restarts
        optimizer_kwargs["raw_samples"] = args.raw_samples
        optimizer_kwargs["options"] = {"maxiter": args.maxiter}
    if method == "CMANP":
        gs = cax.cmanp_generation_strategy(
            0, checkpoint=args.checkpoint, optimizer_options=optimizer_kwargs
        )
    else:
        gs = gp_strategy(optimizer_kwargs)
    client.set_generation_strategy(gs)
    return client


def attach_random(client: Client, count: int, generator: torch.Generator) -> None:
    X = torch.rand(count, DIM, dtype=torch.float64, generator=generator)
    for x in X.tolist():
        params = {f"x{i}": v for i, v in enumerate(x)}
        index = client.attach_trial(parameters=params)
        client.complete_trial(index, {"hartmann6": objective(params)})


def timed_call(client: Client) -> dict:
    """One ``get_next_trials(1)``; the trial is completed afterwards (not timed)."""
    for key in _TIMES:
        _TIMES[key] = 0.0
    _POSTERIOR_CALLS[0] = 0
    records_before = len(cax.embed_stats())
    start, cpu = time.perf_counter(), time.process_time()
    trials = client.get_next_trials(max_trials=1)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    embedded = [r.embedded for r in cax.embed_stats()[records_before:]]
    acquisition = getattr(client._generation_strategy.adapter.generator, "_acquisition", None)
    baseline = getattr(getattr(acquisition, "acqf", None), "X_baseline", None)
    for index, params in trials.items():
        client.complete_trial(index, {"hartmann6": objective(params)})
    return {
        "total_s": wall,
        "cpu_s": cpu,
        "fit_s": _TIMES["fit"],
        "gen_s": _TIMES["gen"],
        "model_s": _TIMES["fit"] + _TIMES["gen"],
        "model_cpu_s": _TIMES["fit_cpu"] + _TIMES["gen_cpu"],
        "prune_s": _TIMES["prune"],
        "embedded": sum(embedded) if embedded else None,
        "posterior_calls": _POSTERIOR_CALLS[0],
        "baseline": None if baseline is None else int(baseline.shape[-2]),
    }


def rebase_seconds(client: Client, reps: int = 3) -> float:
    """Median seconds to encode all current observations with the network (a re-base)."""
    model = client._generation_strategy.adapter.generator.surrogate.model
    history = model._history.concatenated()
    Z, Y = history
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        model.network.encode(Z, model.outcome_frame.apply(Y), block_size=ENCODE_BLOCK)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def summarize(method: str, n: int, calls: list[dict], **extra) -> dict:
    model = [c["model_s"] for c in calls]
    q1, q3 = quartiles(model)
    row = {
        "method": method,
        "n": n,
        "reps": len(calls),
        "median_model_s": statistics.median(model),
        "q1_model_s": q1,
        "q3_model_s": q3,
        "median_fit_s": statistics.median(c["fit_s"] for c in calls),
        "median_gen_s": statistics.median(c["gen_s"] for c in calls),
        "median_prune_s": statistics.median(c["prune_s"] for c in calls),
        "median_gen_s_per_posterior": statistics.median(
            (c["gen_s"] - c["prune_s"]) / max(c["posterior_calls"], 1) for c in calls
        ),
        "median_total_s": statistics.median(c["total_s"] for c in calls),
        "median_model_cpu_s": statistics.median(c["model_cpu_s"] for c in calls),
        "median_cpu_s": statistics.median(c["cpu_s"] for c in calls),
        "max_model_s": max(model),
        "median_posterior_calls": statistics.median(c["posterior_calls"] for c in calls),
        "median_baseline": statistics.median(c["baseline"] or 0 for c in calls),
        "embedded_per_call": [c["embedded"] for c in calls],
        "first_call_s": None,
        "rebase_s": None,
    }
    row.update(extra)
    return row


# ------------------------------------------------------------------------------------ run
def run(args: argparse.Namespace, record) -> None:
    for method in args.methods:
        cax.clear_state_cache()
        client = make_client(method, args)
        generator = torch.Generator().manual_seed(args.seed)
        completed = 0
        for n in args.ns:
            attach_random(client, n - completed, generator)
            completed = n
            extra = {}
            if method == "CMANP":
                first = timed_call(client)  # full encode after the bulk attachment
                completed += 1
                extra["first_call_s"] = first["model_s"]
                reps = args.reps
            else:
                reps = args.gp_reps if n > 200 else args.reps
            calls = []
            for _ in range(reps):
                calls.append(timed_call(client))
                completed += 1
                print(
                    f"{method:>16} n={n:5d} model {calls[-1]['model_s']:8.2f} s "
                    f"(fit {calls[-1]['fit_s']:.3f}, gen {calls[-1]['gen_s']:.2f}, "
                    f"prune {calls[-1]['prune_s']:.2f}), "
                    f"cpu {calls[-1]['model_cpu_s']:.2f}, total {calls[-1]['total_s']:8.2f} s, "
                    f"posteriors {calls[-1]['posterior_calls']}, baseline "
                    f"{calls[-1]['baseline']}, embedded {calls[-1]['embedded']}",
                    flush=True,
                )
                if method != "CMANP" and calls[-1]["model_s"] > args.gp_cap:
                    break
            if method == "CMANP":
                extra["rebase_s"] = rebase_seconds(client)
            row = summarize(method, n, calls, **extra)
            record(row)
            if method != "CMANP" and row["median_model_s"] > args.gp_cap:
                print(f"GP above the {args.gp_cap:.0f} s cap at n={n}: larger n skipped")
                break


def targets(rows: list[dict]) -> dict:
    """The issue's target: CMANP's median model-side time flat (<= 1.5x) from 50 to 2000.

    Also the same ratio for the surrogate build alone (``fit``), for the parts of the acquisition
    step, and for the GP.
    """
    out = {}
    med = {(r["method"], r["n"]): r["median_model_s"] for r in rows}
    by_key = {(r["method"], r["n"]): r for r in rows}
    cmanp = sorted(n for m, n in med if m == "CMANP")
    if len(cmanp) >= 2:
        lo, hi = cmanp[0], cmanp[-1]
        ratio = med[("CMANP", hi)] / med[("CMANP", lo)]
        out[f"cmanp_ratio_{hi}_over_{lo}"] = ratio
        out["cmanp_flat_target_met"] = ratio <= 1.5 if (lo, hi) == (50, 2000) else None
        a, b = by_key[("CMANP", lo)], by_key[("CMANP", hi)]
        out[f"cmanp_fit_ratio_{hi}_over_{lo}"] = b["median_fit_s"] / a["median_fit_s"]
        out[f"cmanp_optimization_ratio_{hi}_over_{lo}"] = (
            b["median_gen_s"] - b["median_prune_s"]
        ) / (a["median_gen_s"] - a["median_prune_s"])
    gp_sizes = sorted(n for m, n in med if m == METHODS[1])
    if len(gp_sizes) >= 2:
        lo, hi = gp_sizes[0], gp_sizes[-1]
        out[f"gp_ratio_{hi}_over_{lo}"] = med[(METHODS[1], hi)] / med[(METHODS[1], lo)]
    gp = sorted(n for m, n in med if m != "CMANP")
    for n in gp:
        if ("CMANP", n) in med:
            out[f"gp_over_cmanp_at_{n}"] = med[(METHODS[1], n)] / med[("CMANP", n)]
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Model-side and whole-call medians vs n, and the model side split into its parts."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for method, marker, color in zip(METHODS, "os", ("C0", "C1")):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["n"])
        if not mine:
            continue
        n = [r["n"] for r in mine]
        med = [r["median_model_s"] for r in mine]
        err = [
            [m - r["q1_model_s"] for m, r in zip(med, mine)],
            [r["q3_model_s"] - m for m, r in zip(med, mine)],
        ]
        axes[0].errorbar(n, med, yerr=err, marker=marker, capsize=3, label=method, color=color)
        axes[1].plot(
            n, [r["median_total_s"] for r in mine], marker=marker, label=method, color=color
        )
        parts = (
            ("surrogate fit/build", "median_fit_s", "-"),
            ("qLogNEI baseline pruning", "median_prune_s", "--"),
            ("acquisition optimization", None, ":"),
        )
        for label, key, style in parts:
            if key is None:
                values = [r["median_gen_s"] - r["median_prune_s"] for r in mine]
            else:
                values = [r[key] for r in mine]
            axes[2].plot(n, values, style, marker=marker, color=color, label=f"{method}: {label}")
    labels = (
        "model-side s per call (fit + gen; median, quartiles)",
        "whole get_next_trials s per call (median)",
        "model-side parts, s per call (medians)",
    )
    for ax, what in zip(axes, labels):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("completed trials")
        ax.set_ylabel(what)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(rows: list[dict], args: argparse.Namespace, wall: float, out: Path, stem: str) -> None:
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "dim": DIM,
        "problem": "Hartmann-6, minimised",
        "checkpoint": args.checkpoint,
        "optimizer": "Ax defaults"
        if args.ax_defaults
        else {
            "num_restarts": args.num_restarts,
            "raw_samples": args.raw_samples,
            "maxiter": args.maxiter,
        },
        "gp_cap_s": args.gp_cap,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "load_average": os.getloadavg(),
        "wall_s": wall,
        "targets": targets(rows),
    }
    fields = [
        "method", "n", "reps", "median_model_s", "q1_model_s", "q3_model_s", "median_fit_s",
        "median_gen_s", "median_prune_s", "median_gen_s_per_posterior", "median_total_s",
        "median_model_cpu_s", "median_cpu_s", "max_model_s",
        "first_call_s", "rebase_s", "median_posterior_calls", "median_baseline",
        "embedded_per_call",
    ]  # fmt: skip
    with open(out / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    plot(rows, out / f"{stem}.png", plot_title(meta))


def plot_title(meta: dict) -> str:
    opt = meta["optimizer"]
    if isinstance(opt, dict):
        opt = ", ".join(f"{k}={v}" for k, v in opt.items())
    return (
        f"ax.Client.get_next_trials, d={meta['dim']}: CMANP vs Ax's default GP\n"
        f"({meta['threads']} thread(s); optimizer: {opt})"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="n = 50, 200 and 3 repeats")
    p.add_argument("--ns", type=int, nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--reps", type=int, default=5, help="timed calls per size")
    p.add_argument("--gp-reps", type=int, default=1, help="timed GP calls per size above 200")
    p.add_argument("--gp-cap", type=float, default=60.0, help="GP seconds per call to stop at")
    p.add_argument("--num-restarts", type=int, default=4)
    p.add_argument("--raw-samples", type=int, default=128)
    p.add_argument("--maxiter", type=int, default=30)
    p.add_argument("--ax-defaults", action="store_true", help="Ax's optimizer defaults instead")
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--replot", action="store_true", help="redraw the PNG from the JSON only")
    args = p.parse_args()
    if args.ns is None:
        args.ns = NS_QUICK if args.quick else NS_FULL
    if args.quick:
        args.reps = 3
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    set_stderr_log_level(logging.WARNING)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "ax_cost_quick" if args.quick else "ax_cost"
    if args.replot:
        saved = json.loads((out / f"{stem}.json").read_text())
        saved["meta"]["targets"] = targets(saved["rows"])
        (out / f"{stem}.json").write_text(json.dumps(saved, indent=2) + "\n")
        plot(saved["rows"], out / f"{stem}.png", plot_title(saved["meta"]))
        print(json.dumps(saved["meta"]["targets"], indent=2))
        return
    rows: list[dict] = []
    start = time.perf_counter()

    def record(row: dict) -> None:
        rows.append(row)
        write(rows, args, time.perf_counter() - start, out, stem)

    run(args, record)
    print(json.dumps(targets(rows), indent=2))
    print(f"wrote {out / stem}.{{csv,json,png}} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
