"""Turn a results database into markdown tables and PNG plots.

Tables: per problem and surrogate, the final log10 simple regret (or best value where the optimum
is unknown) and Ax's score, mean +- standard error over seeds, with a paired Wilcoxon signed-rank
test against ``gp`` on the same seeds; then the surrogate cost. Plots: regret vs evaluations and
vs cumulative wall-clock (standard-error bands), surrogate time and memory per step vs n.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from cmanp_bo.bench.store import ResultStore

REGRET_FLOOR = 1e-8  # log10 regret is reported down to -8


def _log_regret(r: float) -> float:
    return math.log10(max(r, REGRET_FLOOR))


def _mean_se(v: list[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=float)
    se = a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return float(a.mean()), float(se)


def _fmt(mean: float, se: float, digits: int = 2) -> str:
    if math.isnan(se):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def _final_metric(run: dict) -> float:
    """Lower is better: log10 simple regret, or the best value when the optimum is unknown."""
    if run["optimal_value"] is None:
        return run["best_value"]
    return _log_regret(max(run["best_value"] - run["optimal_value"], 0.0))


def _wilcoxon(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import wilcoxon

    diff = np.asarray(a) - np.asarray(b)
    if len(diff) < 5 or np.allclose(diff, 0):
        return None
    return float(wilcoxon(diff).pvalue)


def current_runs(runs: list[dict]) -> tuple[list[dict], int]:
    """The runs to report and how many were superseded.

    A ``(problem, surrogate)`` cell whose runs were made under several settings (an earlier
    network, other acquisition settings) reports only those of the settings of its most
    recently finished run; the others stay in the database.
    """
    latest: dict[tuple[str, str], tuple[int, str]] = {}
    for run in runs:  # the highest id is the last one stored
        cell = (run["problem"], run["surrogate"])
        if cell not in latest or run["id"] > latest[cell][0]:
            latest[cell] = (run["id"], run["settings"])
    kept = [r for r in runs if r["settings"] == latest[(r["problem"], r["surrogate"])][1]]
    return kept, len(runs) - len(kept)


def collect(store: ResultStore, suite: str) -> dict[str, dict[str, list[dict]]]:
    """``problem -> surrogate -> runs`` (each run with its ``steps``), current settings only
    (``current_runs``)."""
    out: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in current_runs(store.runs(suite))[0]:
        run["steps"] = store.steps(run["id"])
        out[run["problem"]][run["surrogate"]].append(run)
    return out


def results_table(data: dict[str, dict[str, list[dict]]], alpha: float = 0.05) -> str:
    """Final log10 regret (score) per problem x surrogate, paired Wilcoxon vs gp."""
    surrogates = sorted({s for cells in data.values() for s in cells}, key=_order)
    lines = [
        "| problem | metric | " + " | ".join(surrogates) + " |",
        "|---|---|" + "---|" * len(surrogates),
    ]
    for problem, cells in sorted(data.items()):
        any_run = next(iter(cells.values()))[0]
        metric = "log10 regret" if any_run["optimal_value"] is not None else "best value"
        row = []
        for s in surrogates:
            runs = sorted(cells.get(s, []), key=lambda r: r["seed"])
            if not runs:
                row.append("–")
                continue
            vals = [_final_metric(r) for r in runs]
            cell = _fmt(*_mean_se(vals)) + f" (n={len(vals)})"
            gp = {r["seed"]: _final_metric(r) for r in cells.get("gp", [])}
            paired = [(v, gp[r["seed"]]) for v, r in zip(vals, runs) if r["seed"] in gp]
            if s != "gp" and paired:
                p = _wilcoxon([a for a, _ in paired], [b for _, b in paired])
                if p is not None and p < alpha:
                    better = np.mean([a - b for a, b in paired]) < 0
                    cell += f" **{'better' if better else 'worse'}** p={p:.3f}"
            stopped = sum(r["stopped"] is not None for r in runs)
            if stopped:
                cell += f" ({stopped} capped)"
            row.append(cell)
        lines.append(f"| {problem} | {metric} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def score_table(data: dict[str, dict[str, list[dict]]]) -> str:
    surrogates = sorted({s for cells in data.values() for s in cells}, key=_order)
    lines = ["| problem | " + " | ".join(surrogates) + " |", "|---|" + "---|" * len(surrogates)]
    for problem, cells in sorted(data.items()):
        row = []
        for s in surrogates:
            scores = [r["steps"][-1]["score"] for r in cells.get(s, [])]
            scores = [v for v in scores if v is not None]
            row.append(_fmt(*_mean_se(scores), digits=1) if scores else "–")
        lines.append(f"| {problem} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def cost_table(data: dict[str, dict[str, list[dict]]]) -> str:
    """Median surrogate seconds per step, total surrogate seconds and peak RSS per run."""
    surrogates = sorted({s for cells in data.values() for s in cells}, key=_order)
    lines = [
        "| surrogate | median s/step | median surrogate s/run | median peak RSS MiB | runs |",
        "|---|---|---|---|---|",
    ]
    for s in surrogates:
        runs = [r for cells in data.values() for r in cells.get(s, [])]
        per_step = [st["surrogate_s"] for r in runs for st in r["steps"] if st["surrogate_s"] > 0]
        # a run without a peak RSS (not measured) is left out of its median
        peaks = [r["peak_rss_mb"] for r in runs if r["peak_rss_mb"] is not None]
        lines.append(
            f"| {s} | {np.median(per_step) if per_step else 0:.3f} | "
            f"{np.median([r['surrogate_s'] for r in runs]):.1f} | "
            f"{f'{np.median(peaks):.0f}' if peaks else '-'} | {len(runs)} |"
        )
    return "\n".join(lines)


_ORDER = ("sobol", "gp", "gp-cheap", "hyp-gp", "cmanp", "tnp", "lbanp")


def _order(name: str) -> tuple[int, str]:
    return (_ORDER.index(name) if name in _ORDER else len(_ORDER), name)


def _curves(runs: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and SE over runs of ``key`` per evaluation index (runs cut at the shortest)."""
    n = min(len(r["steps"]) for r in runs)
    if key == "metric":
        vals = np.array(
            [
                [
                    _log_regret(st["regret"]) if st["regret"] is not None else st["best"]
                    for st in r["steps"][:n]
                ]
                for r in runs
            ]
        )
    else:
        vals = np.array([[st[key] for st in r["steps"][:n]] for r in runs], dtype=float)
    se = vals.std(0, ddof=1) / math.sqrt(len(runs)) if len(runs) > 1 else np.zeros(n)
    return np.arange(1, n + 1), vals.mean(0), se


def plot_regret(data: dict[str, dict[str, list[dict]]], path: Path, wall_clock: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted(data)
    cols = min(4, len(problems))
    rows = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, problem in zip(axes.flat, problems):
        for s in sorted(data[problem], key=_order):
            runs = data[problem][s]
            x, m, se = _curves(runs, "metric")
            if wall_clock:
                x = _curves(runs, "cum_wall_s")[1]  # mean cumulative wall-clock per evaluation
            ax.plot(x, m, label=s)
            ax.fill_between(x, m - se, m + se, alpha=0.2)
        any_run = next(iter(data[problem].values()))[0]
        ax.set_title(problem, fontsize=9)
        ax.set_xlabel("cumulative wall-clock (s)" if wall_clock else "evaluations")
        ax.set_ylabel("log10 simple regret" if any_run["optimal_value"] is not None else "best")
        if wall_clock:
            ax.set_xscale("log")
    for ax in list(axes.flat)[len(problems) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost(data: dict[str, dict[str, list[dict]]], path: Path) -> None:
    """Surrogate seconds per step and RSS vs the number of observations, over all problems."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.6))
    by_s: dict[str, list[dict]] = defaultdict(list)
    for cells in data.values():
        for s, runs in cells.items():
            by_s[s].extend(runs)
    for s in sorted(by_s, key=_order):
        per_n_t: dict[int, list[float]] = defaultdict(list)
        per_n_m: dict[int, list[float]] = defaultdict(list)
        for r in by_s[s]:
            for st in r["steps"]:
                if st["surrogate_s"] > 0:
                    per_n_t[st["step"] - 1].append(st["surrogate_s"])
                    per_n_m[st["step"] - 1].append(st["rss_mb"])
        if not per_n_t:
            continue
        ns = sorted(per_n_t)
        ax_t.plot(ns, [np.median(per_n_t[n]) for n in ns], label=s)
        ax_m.plot(ns, [np.median(per_n_m[n]) for n in ns], label=s)
    ax_t.set(xlabel="observations n", ylabel="surrogate s / step (median)", yscale="log")
    ax_m.set(xlabel="observations n", ylabel="process RSS MiB (median)")
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(store: ResultStore, out: str | Path) -> str:
    """Write ``report.md`` and the plots for every suite in ``store``; returns the markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suites = sorted({r["suite"] for r in store.runs()})
    parts = [f"# Benchmark report ({store.path.name})\n"]
    for suite in suites:
        data = collect(store, suite)
        runs = [r for cells in data.values() for rs in cells.values() for r in rs]
        hw = sorted({r["hardware"] for r in runs})
        plot_regret(data, out / f"{suite}_regret.png", wall_clock=False)
        plot_regret(data, out / f"{suite}_regret_wallclock.png", wall_clock=True)
        plot_cost(data, out / f"{suite}_cost.png")
        superseded = current_runs(store.runs(suite))[1]
        parts += [
            f"## Suite `{suite}`: {len(runs)} runs on {', '.join(hw)}\n",
            *(
                [
                    f"({superseded} earlier runs made under other settings, e.g. an earlier "
                    "network, are kept in the database and not reported.)\n"
                ]
                if superseded
                else []
            ),
            "Final log10 simple regret (best value where the optimum is unknown), mean ± SE "
            "over seeds; **better/worse**: paired Wilcoxon signed-rank vs `gp`, p < 0.05.\n",
            results_table(data),
            "\nAx score (100 = optimum, 0 = Ax's baseline), mean ± SE:\n",
            score_table(data),
            "\nSurrogate cost (model update + acquisition optimisation):\n",
            cost_table(data),
            f"\nPlots: `{suite}_regret.png`, `{suite}_regret_wallclock.png`, `{suite}_cost.png`.\n",
        ]
    text = "\n".join(parts)
    (out / "report.md").write_text(text)
    return text
