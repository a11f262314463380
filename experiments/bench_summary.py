"""Figures the README quotes that the benchmark report does not print, read from results databases.

    python experiments/bench_summary.py            # all of them, from experiments/results/bench/*
    python experiments/bench_summary.py --rebuild  # also time a state-cache rebuild (bo-default)

- boundary share: the fraction of model proposals with a coordinate at 0 or 1, per suite and
  surrogate;
- long suite: median surrogate seconds per step in a window of +-10 around n, and the simple
  regret at n; per problem and seed, where CMANP first reaches gp's final regret, in
  evaluations and cumulative wall-clock, against gp's own (the issue's target);
- standard suite: how far each model's proposals land from the incumbent (median distance in
  the unit cube, share within 0.05), per problem;
- long suite at d = 2 (``long_d2``): CMANP against the neural peers (``peers_at_n``): regret
  at the cap and after equal evaluations, step time near n, peak RSS per run;
- best values to 4 digits (the report rounds to 2), for suites without a known optimum;
- standard suite: CMANP against gp, sobol and the neural peers (where they ran) per problem
  (paired Wilcoxon signed-rank on the final log10 regret; the report only tests against gp),
  against the default networks it replaced (``PREVIOUS_DEFAULTS``), and the copula warp
  (``warp="rank"``, the standard suite's setting for cmanp in stops 19-35) against the same
  networks without it; ``standard_gp_rank``: gp on the same warp against plain gp and against
  the warped cmanp (does the warp alone explain cmanp's gains?);
- ``--rebuild``: seconds to rebuild the Ax state of n points one at a time (what the state cache
  does on a restart or a re-base) vs one blocked encode, with the shipped checkpoint, one thread.

Only the runs the report shows are used (``cmanp_bo.bench.report.current_runs``: runs made under
superseded settings, e.g. an earlier network, stay in the database but are skipped).

Writes experiments/results/bench/summary.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import statistics
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "results" / "bench"


def _db(suite: str) -> sqlite3.Connection | None:
    path = BENCH / suite / "results.sqlite"
    if not path.exists():
        return None
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    return db


# opt-in networks benchmarked on the standard suite's problems of their d, one database each
# (bo-d3-6-near's runs are also merged into the standard database: it is the d = 3..6 default)
BO_D3_6 = "bo-d3-6@ab6de5b4d773"  # the d = 3..6 default until bo-d3-6-near
BO_D3_6_REG = "bo-d3-6-reg@838a5a6316ca"  # the d = 3..6 default since
BO_D1_2_REG = "bo-d1-2-reg@d8323fae0b42"  # the d = 1, 2 default since stop 13
BO_D3_6_RESID = "bo-d3-6-resid@3528450a5208"  # the d = 2..6 default since stop 36
# the networks the warped cmanp runs use, whose unwarped runs (options {}) they are compared with
UNWARPED = (BO_D1_2_REG, BO_D3_6_REG)
# database -> (summary key, the standard database's network its cmanp runs are compared with,
# by seed, and those reference runs' surrogate options: the standard database holds
# bo-d3-6-reg's runs with and without the copula warp for the same seeds, so the options pick
# one set; an alternative on the warp is compared with the warped runs)
ALTERNATIVES = {
    "standard_bo_d3_6_mixed": ("versus_bo_d3_6", BO_D3_6, {}),
    "standard_bo_d3_6_near": ("versus_bo_d3_6", BO_D3_6, {}),
    "standard_bo_d3_6_poly": ("versus_bo_d3_6_reg", BO_D3_6_REG, {}),
    # stop 20: bo-d3-6-poly on the copula warp against bo-d3-6-reg on it (the suite's default)
    "standard_bo_d3_6_poly_rank": ("versus_bo_d3_6_reg_rank", BO_D3_6_REG, {"warp": "rank"}),
    # stop 20: recipe stage 12 (not shipped; its run folder's model.pt) on the d = 2 problems,
    # on the warp, against bo-d1-2-reg on it
    "standard_bo_d1_2_near_rank": ("versus_bo_d1_2_reg_rank", BO_D1_2_REG, {"warp": "rank"}),
    # stop 21 (seeds 0-4 of hartmann3, ackley4, griewank4): the warped default with noise-free
    # anchoring on the 16 or 64 best points (``anchor``), against itself without it
    "standard_anchor16_rank": ("versus_bo_d3_6_reg_rank", BO_D3_6_REG, {"warp": "rank"}),
    "standard_anchor64_rank": ("versus_bo_d3_6_reg_rank", BO_D3_6_REG, {"warp": "rank"}),
    # stop 21 (seeds 0-4 of hartmann3, ackley4, griewank4, powell4, rosenbrock4): the warped
    # default's posterior std scaled by 0.5 or 0.25 (``std_scale``, a diagnostic), or by the
    # held-out z-scores of the last 8 points at each step (``calibrate``)
    "standard_temper05_rank": ("versus_bo_d3_6_reg_rank", BO_D3_6_REG, {"warp": "rank"}),
    "standard_temper025_rank": ("versus_bo_d3_6_reg_rank", BO_D3_6_REG, {"warp": "rank"}),
    "standard_calib8_rank": ("versus_bo_d3_6_reg_rank", BO_D3_6_REG, {"warp": "rank"}),
    # stop 21: cmanp (warped) and gp both with Ax's acquisition-optimizer defaults (20 restarts,
    # 1024 raw samples) instead of the suite's 5 and 256, against their runs with the suite's
    "standard_ax_optimizer": ("versus_bo_d3_6_reg_rank", BO_D3_6_REG, {"warp": "rank"}),
    # stop 23: recipe stage 13 (bo-d36-bo, BO-like contexts; its run folder's model.pt) on the
    # warp, on the 7 problems with d = 3..6, against bo-d3-6-reg on it
    "standard_bo_d3_6_bo_rank": ("versus_bo_d3_6_reg_rank", BO_D3_6_REG, {"warp": "rank"}),
    # stop 32: recipe stage 17 (bo-d36-hyp-pilot: the hypothesis memory, 3,000 steps; its run
    # folder's model.pt) on the warp, seeds 0-9 of the 4 d = 3..6 problems where the default is
    # behind gp, against bo-d3-6-reg on it (gp and sobol seeds 0-9 copied in)
    "standard_bo_d3_6_hyp_pilot_rank": ("versus_bo_d3_6_reg_rank", BO_D3_6_REG, {"warp": "rank"}),
    # stop 32: recipe stage 18 (bo-d36-hyp, shipped opt-in as bo-d3-6-hyp; run from its run
    # folder's model.pt), seeds 0-9 of the 7 problems with d = 3..6 (gp and sobol copied in)
    "standard_bo_d3_6_hyp_rank": ("versus_bo_d3_6_reg_rank", BO_D3_6_REG, {"warp": "rank"}),
    # stop 33: bo-d3-6-hyp with its hypothesis bank redrawn at 64 hypotheses x 64 features
    # (no training; ``versus_hyp``: against bo-d3-6-hyp's runs above), the same seeds
    "standard_bo_d3_6_hyp64_rank": ("versus_bo_d3_6_reg_rank", BO_D3_6_REG, {"warp": "rank"}),
    # stop 33: bo-d3-6-hyp fine-tuned for 3000 steps on near noise-free tasks (a pilot, not
    # shipped), seeds 0-9 of the 4 problems where the networks are behind gp (``versus_hyp``)
    "standard_bo_d3_6_quiet_pilot_rank": (
        "versus_bo_d3_6_reg_rank",
        BO_D3_6_REG,
        {"warp": "rank"},
    ),
    # stop 34: recipe stage 20 (bo-d36-hyp-short: bo-d3-6-hyp's bank with half its hypotheses
    # 16 times shorter, 3000 steps; its run folder's model.pt, not shipped), seeds 0-9 of the 4
    # problems where the networks are behind gp (``versus_hyp``)
    "standard_bo_d3_6_hyp_short_rank": ("versus_bo_d3_6_reg_rank", BO_D3_6_REG, {"warp": "rank"}),
    # stop 35: recipe stage 25 (bo-d36-hyp-resid64: the residual network, its readout exact up
    # to 128 points; shipped opt-in as bo-d3-6-resid) without the warp, all 10 problems (d = 2
    # too), 20 seeds, with the standard database's gp and sobol runs and the hyp-gp runs copied
    # in; against the default networks on the warp (the suite's cmanp)
    "standard_bo_d3_6_resid": ("versus_default_rank", UNWARPED, {"warp": "rank"}),
    # stop 36: the d = 2..6 default (bo-d3-6-resid, bank drawn for the task's d) on the copula
    # warp, branin, hartmann3, powell4 and rosenbrock4, 20 seeds (gp and sobol copied in),
    # against its own runs without the warp (the suite's cmanp since stop 36)
    "standard_bo_d3_6_resid_rank": ("versus_unwarped", BO_D3_6_RESID, {"warp": None}),
    # stop 23: the default networks on the Yeo-Johnson warp (``warp="power"``), all 10
    # problems, against the same networks on the copula warp (the suite's setting)
    "standard_power": ("versus_rank", UNWARPED, {"warp": "rank"}),
    # stop 24: the default networks on the warp in TuRBO-1's trust region (``trust_region``),
    # all 10 problems, against the same networks on the warp without it
    "standard_trust": ("versus_rank", UNWARPED, {"warp": "rank"}),
}
# alternatives derived from bo-d3-6-hyp, also compared with its runs (``versus_hyp``)
HYP_DERIVED = (
    "standard_bo_d3_6_hyp64_rank",
    "standard_bo_d3_6_quiet_pilot_rank",
    "standard_bo_d3_6_hyp_short_rank",
)
# opt-in networks or options on the long suite, each in its own database with gp's runs copied
# in: long_poly (bo-d7-10-poly before it was the default, without the baseline cache; compared
# with the cached runs as ``long_cache_effect``), long_rank (cmanp on the copula warp) and
# long_d7_10_long (stop 23: recipe stage 14's bo-d710-long, seed 0 of rosenbrock8 and levy10),
# long_trust (stop 24: the default networks in the trust region, ``trust_region``) and
# long_gp_trust (gp in the trust region, with cmanp's trust-region runs copied in)
# long_d2 (stop 25): the long suite's functions at d = 2 (``LONG_D2``), cmanp and the peers
LONG_ALTERNATIVES = (
    "long_poly",
    "long_rank",
    "long_d7_10_long",
    "long_trust",
    "long_gp_trust",
    "long_d2",
    "long_s29",  # rosenbrock8 and levy10, seeds 0-2, the stop-29 code, gp paired on one VM
)
# the defaults that the regression-memory networks replaced, by the network identity of their
# runs in the standard database (bo-d3-6-near's were made from its run folder's model.pt)
# and (stop 36) the regression-memory networks on the copula warp that bo-d3-6-resid replaced
# at d = 2..6 (bo-d1-2-reg still serves d = 1): name -> (network, its runs' options)
PREVIOUS_DEFAULTS = {
    "bo-d1-2": ("bo-d1-2@3af6d15dd0bb", None),
    "bo-d3-6-near": ("model.pt@f9922ba00025", None),
    "bo-d1-2-reg/bo-d3-6-reg rank": (UNWARPED, {"warp": "rank"}),
}


def _current(db: sqlite3.Connection) -> list[dict]:
    from cmanp_bo.bench.report import current_runs

    return current_runs([dict(r) for r in db.execute("SELECT * FROM runs ORDER BY id")])[0]


def _steps(db: sqlite3.Connection, run_id: int) -> list[sqlite3.Row]:
    return db.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY step", (run_id,)).fetchall()


def boundary_share(db: sqlite3.Connection) -> tuple[dict[str, float], dict[str, float]]:
    """Share of model proposals with a coordinate at 0 or 1: per surrogate, and per surrogate
    and input dimension (keys ``"cmanp/d=4"``), from one pass over the steps."""
    counts: dict[tuple[str, int], list[int]] = {}  # (surrogate, d) -> [on the edge, proposals]
    for run in _current(db):
        if run["surrogate"] == "sobol":
            continue
        xs = [json.loads(st["x"]) for st in _steps(db, run["id"]) if st["surrogate_s"] > 0]
        c = counts.setdefault((run["surrogate"], run["dim"]), [0, 0])
        c[0] += sum(any(v <= 1e-6 or v >= 1 - 1e-6 for v in x) for x in xs)
        c[1] += len(xs)
    per_surrogate: dict[str, list[int]] = {}
    for (s, _), (edge, total) in counts.items():
        agg = per_surrogate.setdefault(s, [0, 0])
        agg[0], agg[1] = agg[0] + edge, agg[1] + total
    share = lambda c: round(c[0] / c[1], 3)  # noqa: E731
    by_dim = {f"{s}/d={d}": share(c) for (s, d), c in counts.items()}
    return {s: share(c) for s, c in per_surrogate.items()}, by_dim


def trust_final_side(db: sqlite3.Connection, surrogate: str = "cmanp") -> dict[str, dict]:
    """Per problem, how many of ``surrogate``'s runs ended with each trust-region side: TuRBO-1's
    schedule (``cmanp_bo.trust.TrustRegion``) replayed on each run's stored values."""
    import torch

    from cmanp_bo.bench.problems import get_problem
    from cmanp_bo.trust import TrustRegion

    out: dict[str, dict[str, int]] = {}
    for run in _current(db):
        if run["surrogate"] != surrogate:
            continue
        options = json.loads(run["settings"])["options"]
        if not options.get("trust_region"):
            continue
        values = torch.tensor([st["value"] for st in _steps(db, run["id"])], dtype=torch.float64)
        tr = TrustRegion(run["dim"])
        tr.observe(values[: get_problem(run["problem"]).num_init])
        tr.observe(values[:-1])  # the last value was proposed in the region of the one before
        side = f"{tr.length:g}"
        cell = out.setdefault(run["problem"], {})
        cell[side] = cell.get(side, 0) + 1
    return {p: dict(sorted(c.items(), key=lambda kv: float(kv[0]))) for p, c in sorted(out.items())}


def incumbent_distance(db: sqlite3.Connection, near: float = 0.05) -> dict[str, dict]:
    """Per problem and model-based surrogate: how far its proposals land from the incumbent
    (the best point evaluated before each one), in the unit cube: the median Euclidean distance
    and the share within ``near``. Small means exploiting the incumbent's basin, large means
    exploring elsewhere."""
    cells: dict[tuple[str, str], list[float]] = {}
    for run in _current(db):
        if run["surrogate"] == "sobol":
            continue
        steps = _steps(db, run["id"])
        xs = [json.loads(st["x"]) for st in steps]
        best = 0  # index of the incumbent before step i
        dist = cells.setdefault((run["problem"], run["surrogate"]), [])
        for i, st in enumerate(steps):
            if i > 0:
                if st["surrogate_s"] > 0:
                    dist.append(math.dist(xs[i], xs[best]))
                if st["value"] < steps[best]["value"]:
                    best = i
    return {
        f"{p}/{s}": {
            "median": round(statistics.median(d), 3),
            f"share_within_{near}": round(sum(v < near for v in d) / len(d), 3),
            "proposals": len(d),
        }
        for (p, s), d in sorted(cells.items())
        if d
    }


def _step_s_near(steps: list[tuple[int, float]], ns, digits: int) -> dict[int, float]:
    """Median surrogate seconds of the proposals within +-10 evaluations of each n (``steps``:
    ``(step, surrogate_s)``; the design's zero-cost steps are not proposals)."""
    return {
        n: round(statistics.median(t for k, t in steps if abs(k - n) <= 10 and t > 0), digits)
        for n in ns
        if any(abs(k - n) <= 10 and t > 0 for k, t in steps)
    }


def long_profile(db: sqlite3.Connection, ns=(50, 100, 200, 400)) -> dict[str, dict]:
    out = {}
    for run in _current(db):
        steps = [(st["step"], st["surrogate_s"], st["regret"]) for st in _steps(db, run["id"])]
        key = f"{run['problem']}/{run['surrogate']}"
        key = key if run["seed"] == 0 else f"{key}/seed{run['seed']}"
        out[key] = {
            "s_per_step_near_n": _step_s_near([(k, t) for k, t, _ in steps], ns, 3),
            "regret_at_n": {n: round(r, 4) for k, _, r in steps for n in ns if k == n},
        }
    return out


def _first_at_most(steps: list[sqlite3.Row], regret: float) -> sqlite3.Row | None:
    return next((st for st in steps if st["regret"] <= regret), None)


def reach_gp_final(db: sqlite3.Connection, model: str = "cmanp", reference: str = "gp") -> dict:
    """The long-suite target, per problem and seed: where ``model`` first reaches the regret
    ``reference`` ended at (its last step: at 1000 evaluations, or where its cap stopped it), in
    evaluations and in cumulative wall-clock (``cum_wall_s``, evaluations included), against
    where ``reference`` itself first got there; ``ratio`` is model's wall-clock over the
    reference's (the target: <= 0.1 with the reference at 1000 evaluations). ``ratio_to_run``
    divides by the reference's whole run instead (its last step's ``cum_wall_s``: the looser
    reading of "gp's cumulative wall-clock", the same where the reference improved to its last
    step)."""
    runs = {(r["problem"], r["surrogate"], r["seed"]): r for r in _current(db)}
    out: dict[str, dict] = {}
    for (problem, surrogate, seed), ref in sorted(runs.items()):
        other = runs.get((problem, model, seed))
        if surrogate != reference or other is None:
            continue
        ref_steps, model_steps = _steps(db, ref["id"]), _steps(db, other["id"])
        target = ref_steps[-1]["regret"]
        hit, own = (_first_at_most(steps, target) for steps in (model_steps, ref_steps))
        entry = {
            f"{reference}_final_regret": round(target, 4),
            f"{reference}_evaluations": len(ref_steps),
            f"{reference}_capped": ref["stopped"] is not None,
            f"{reference}_reached_at": {
                "evaluation": own["step"],
                "wall_s": round(own["cum_wall_s"], 1),
            },
            f"{model}_final_regret": round(model_steps[-1]["regret"], 4),
            f"{model}_reached_at": None,
            "ratio": None,
            "ratio_to_run": None,
        }
        if hit is not None:
            entry[f"{model}_reached_at"] = {
                "evaluation": hit["step"],
                "wall_s": round(hit["cum_wall_s"], 1),
            }
            entry["ratio"] = round(hit["cum_wall_s"] / own["cum_wall_s"], 4)
            entry["ratio_to_run"] = round(hit["cum_wall_s"] / ref_steps[-1]["cum_wall_s"], 4)
        out[f"{problem}/seed{seed}"] = entry
    return out


def peers_at_n(
    db: sqlite3.Connection,
    model: str = "cmanp",
    peers=("tnp", "lbanp"),
    ns=(100, 500, 990),
) -> dict:
    """The peer target on long runs (issue 6: ``model`` ahead of the peers in time and memory at
    n >= 1000 with regret not worse), per problem and seed: each network's evaluations, final
    regret, regret and median surrogate seconds per step within +-10 of each n, and its
    process's peak RSS (one process per run); then over all problems and seeds, ``model``
    against each peer on the log10 regret (paired Wilcoxon) at the end (the same wall-clock
    where the cap stopped both) and after ``ns[1]`` evaluations, and on the step time near the
    last n."""
    from cmanp_bo.bench.report import _final_metric, _log_regret

    wanted = (model, *peers)
    runs = {(r["problem"], r["surrogate"], r["seed"]): r for r in _current(db)}
    per_run: dict[str, dict] = {}
    finals: dict[str, dict] = {s: {} for s in wanted}
    step_s: dict[str, dict] = {s: {} for s in wanted}
    at_n: dict[str, dict] = {s: {} for s in wanted}  # log10 regret after ns[1] evaluations
    for (problem, surrogate, seed), run in sorted(runs.items()):
        if surrogate not in wanted:
            continue
        rows = _steps(db, run["id"])
        steps = [(st["step"], st["surrogate_s"]) for st in rows]
        regret_at = {n: float(f"{rows[n - 1]['regret']:.4g}") for n in ns if n <= len(rows)}
        near = _step_s_near(steps, ns, 4)
        per_run.setdefault(f"{problem}/seed{seed}", {})[surrogate] = {
            "evaluations": run["num_evals"],
            "capped": run["stopped"] is not None,
            "final_regret": float(f"{run['best_value'] - run['optimal_value']:.4g}"),
            "regret_at_n": regret_at,
            "s_per_step_near_n": near,
            "peak_rss_mb": None if run["peak_rss_mb"] is None else round(run["peak_rss_mb"], 1),
        }
        finals[surrogate][problem, seed] = _final_metric(run)
        if ns[1] in regret_at:
            at_n[surrogate][problem, seed] = _log_regret(regret_at[ns[1]])
        if ns[-1] in near:
            step_s[surrogate][problem, seed] = near[ns[-1]]
    pooled = {}
    for peer in peers:
        paired = sorted(set(finals[model]) & set(finals[peer]))  # (problem, seed) of both
        mine = {i: finals[model][k] for i, k in enumerate(paired)}
        theirs = {i: finals[peer][k] for i, k in enumerate(paired)}
        timed = sorted(set(step_s[model]) & set(step_s[peer]))
        both = sorted(set(at_n[model]) & set(at_n[peer]))
        pooled[peer] = {
            "final_log10_regret": _paired(mine, theirs),
            f"log10_regret_after_{ns[1]}": _paired(
                {i: at_n[model][k] for i, k in enumerate(both)},
                {i: at_n[peer][k] for i, k in enumerate(both)},
            ),
            f"{model}_lower_regret_in": sum(mine[i] < theirs[i] for i in mine),
            f"{model}_higher_regret_in": sum(mine[i] > theirs[i] for i in mine),
            f"median_step_s_near_{ns[-1]}": {
                s: statistics.median(step_s[s][k] for k in timed) if timed else None
                for s in (model, peer)
            }
            | {"runs": len(timed)},
        }
    return {"runs": per_run, f"{model}_versus": pooled}


def cache_effect(cached: sqlite3.Connection, uncached: sqlite3.Connection) -> dict[str, dict]:
    """The baseline cache on the long suite, per problem and seed: the current cmanp runs of
    ``cached`` (``model_revision`` 2) against ``uncached``'s cmanp runs of the same network
    (revision 1), made with the same settings otherwise. Evaluations within the cap, final
    regret, and the median step time over the evaluations both runs made."""

    def runs(db: sqlite3.Connection, revision: int) -> dict[tuple[str, int], dict]:
        out = {}
        for r in db.execute("SELECT * FROM runs WHERE surrogate='cmanp' ORDER BY id"):
            settings = json.loads(r["settings"])
            if settings.get("model_revision", 1) == revision and "network" in settings:
                out[r["problem"], r["seed"], settings["network"].split(":")[-1]] = dict(r)
        return out

    current = {r["id"] for r in _current(cached)}
    new = {k: r for k, r in runs(cached, 2).items() if r["id"] in current}
    old = runs(uncached, 1)
    out: dict[str, dict] = {}
    for (problem, seed, network), run in sorted(new.items()):
        ref = old.get((problem, seed, network))
        if ref is None:
            continue
        a, b = _steps(cached, run["id"]), _steps(uncached, ref["id"])
        common = min(len(a), len(b))
        step_s = [
            statistics.median(st["surrogate_s"] for st in steps[:common] if st["surrogate_s"] > 0)
            for steps in (a, b)
        ]
        out[f"{problem}/seed{seed}"] = {
            "network": network,
            "evaluations": {"cached": len(a), "uncached": len(b)},
            "final_regret": {
                "cached": round(a[-1]["regret"], 4),
                "uncached": round(b[-1]["regret"], 4),
            },
            "median_s_per_step_over_common_evaluations": {
                "cached": round(step_s[0], 3),
                "uncached": round(step_s[1], 3),
                "evaluations": common,
            },
        }
    return out


def best_values(db: sqlite3.Connection) -> dict[str, dict[str, float]]:
    cells: dict[tuple[str, str], list[float]] = {}
    for run in _current(db):
        cells.setdefault((run["problem"], run["surrogate"]), []).append(run["best_value"])
    out: dict[str, dict[str, float]] = {}
    for (p, s), v in sorted(cells.items()):
        out.setdefault(p, {})[s] = round(statistics.mean(v), 4)
    return out


def _final_metrics(
    db: sqlite3.Connection,
    network: str | tuple[str, ...] | None = None,
    options: dict | None = None,
) -> dict[str, dict[str, dict[int, float]]]:
    """problem -> surrogate -> seed -> final metric: the current runs, or with ``network`` the
    runs whose network identity ends with it (e.g. ``"bo-d3-6@ab6de5b4d773"``, or one of a
    tuple), superseded or not, and with ``options`` only the runs made with exactly those
    surrogate options."""
    from cmanp_bo.bench.report import _final_metric

    if network is None:
        runs = _current(db)
    else:
        runs = [
            dict(r)
            for r in db.execute("SELECT * FROM runs ORDER BY id")
            if str(json.loads(r["settings"]).get("network", "")).endswith(network)
            and (options is None or json.loads(r["settings"])["options"] == options)
        ]
    cells: dict[str, dict[str, dict[int, float]]] = {}
    for run in runs:
        by_seed = cells.setdefault(run["problem"], {}).setdefault(run["surrogate"], {})
        if run["seed"] in by_seed:  # two settings for one seed: pairing would pick one silently
            raise ValueError(
                f"{run['problem']}/{run['surrogate']} seed {run['seed']}: more than one run with "
                f"network {network!r} and options {options!r}; name the options"
            )
        by_seed[run["seed"]] = _final_metric(run)
    return cells


def _paired(a_by_seed: dict[int, float], b_by_seed: dict[int, float]) -> dict:
    from cmanp_bo.bench.report import _wilcoxon

    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    a, b = [a_by_seed[k] for k in seeds], [b_by_seed[k] for k in seeds]
    p = _wilcoxon(a, b)
    diff = statistics.mean(a) - statistics.mean(b) if seeds else float("nan")
    verdict = "n.s." if p is None or p >= 0.05 else ("worse" if diff > 0 else "better")
    return {
        "seeds": len(seeds),
        "mean_diff": round(diff, 3),
        "p": None if p is None else round(p, 4),
        "verdict": verdict,
    }


def versus(db: sqlite3.Connection, model: str = "cmanp", others=("gp", "sobol")) -> dict:
    """Per problem: ``model`` vs each of ``others`` on the final metric, paired by seed."""
    out = {}
    for problem, by in sorted(_final_metrics(db).items()):
        if model in by:
            out[problem] = {o: _paired(by[model], by[o]) for o in others if o in by}
    return out


def versus_db(
    db: sqlite3.Connection,
    reference: sqlite3.Connection,
    model: str = "cmanp",
    reference_network: str | tuple[str, ...] | None = None,
    reference_options: dict | None = None,
    network: str | tuple[str, ...] | None = None,
    options: dict | None = None,
) -> dict:
    """Per problem: ``model``'s runs in ``db`` vs its runs in ``reference`` (another network
    benchmarked on the same problems and seeds; ``reference_network``: that network's runs
    even where they are superseded, with ``reference_options`` those options only), paired by
    seed; ``network`` / ``options`` pick ``db``'s runs the same way (default: its current
    ones)."""
    mine = _final_metrics(db, network, options)
    ref = _final_metrics(reference, reference_network, reference_options)
    return {
        problem: _paired(by[model], ref[problem][model])
        for problem, by in sorted(mine.items())
        if model in by and model in ref.get(problem, {})
    }


def rebuild_cost(ns=(200, 2000)) -> dict[int, dict[str, float]]:
    import torch

    from cmanp_bo.botorch_model import ENCODE_BLOCK, _absorb_canonically, resolve_network

    torch.set_num_threads(1)
    net = resolve_network("default", 1, torch.device("cpu"))
    out = {}
    for n in ns:
        Z = torch.rand(n, net.cfg.dim_x, dtype=torch.float64)
        Y = torch.randn(n, 1, dtype=torch.float64)
        t0 = time.perf_counter()
        _absorb_canonically(net, net.empty_state(), Z, Y)
        t1 = time.perf_counter()
        net.encode(Z, Y, block_size=ENCODE_BLOCK)
        t2 = time.perf_counter()
        out[n] = {"one_at_a_time_s": round(t1 - t0, 3), "blocked_encode_s": round(t2 - t1, 4)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rebuild", action="store_true")
    args = p.parse_args()
    path = BENCH / "summary.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    # a section not recomputed now (--rebuild) keeps its earlier figures
    summary: dict = {"boundary_share": {}}
    if "state_cache_rebuild" in previous:
        summary["state_cache_rebuild"] = previous["state_cache_rebuild"]
    dbs = {suite: _db(suite) for suite in ("standard", "long", "indist", "hpo")}
    for suite, db in dbs.items():
        if db is None:
            continue
        summary["boundary_share"][suite], by_dim = boundary_share(db)
        if suite == "standard":
            summary["standard_cmanp_versus"] = versus(db, others=("gp", "sobol", "tnp", "lbanp"))
            summary["standard_boundary_share_by_dim"] = by_dim
            summary["standard_incumbent_distance"] = incumbent_distance(db)
        if suite == "long":
            summary["long_profile"] = long_profile(db)
            summary["long_reach_gp_final"] = reach_gp_final(db)
        if suite == "hpo":
            summary["hpo_best_values"] = best_values(db)
            summary["hpo_cmanp_versus"] = versus(db, others=("gp", "sobol", "tnp", "lbanp"))
            summary["hpo_boundary_share_by_dim"] = by_dim  # d = 2: the SVMs; 4: boosting
        if suite == "indist":
            summary["indist_boundary_share_by_dim"] = by_dim
    standard = dbs["standard"]
    for alt, (key, network, options) in ALTERNATIVES.items():  # opt-in networks
        db = _db(alt)
        if db is not None and standard is not None:
            summary[alt] = {
                "versus": versus(db, others=("gp", "sobol", "tnp", "lbanp")),
                key: versus_db(db, standard, reference_network=network, reference_options=options),
                "boundary_share_by_dim": boundary_share(db)[1],
                "incumbent_distance": incumbent_distance(db),
            }
            hyp = _db("standard_bo_d3_6_hyp_rank") if alt in HYP_DERIVED else None
            if hyp is not None:
                summary[alt]["versus_hyp"] = versus_db(db, hyp)
            if alt == "standard_trust":
                summary[alt]["final_side"] = trust_final_side(db)
            if alt == "standard_bo_d3_6_resid":  # and the exact average it corrects
                summary[alt]["versus_hyp_gp"] = versus(db, others=("hyp-gp",))
                # stop 36: the same network with its bank drawn for each problem's d (the
                # standard database's current cmanp runs, the default since) against these
                summary[alt]["task_dim_default_versus_this"] = versus_db(standard, db)
            if alt == "standard_ax_optimizer":  # gp's own runs against the suite's gp runs
                summary[alt]["gp_versus_suite_optimizer"] = versus_db(db, standard, model="gp")
    for alt in LONG_ALTERNATIVES:
        db = _db(alt)
        if db is not None:
            # the trust-region runs reach 1000 evaluations within the cap: profile them further
            ns = (50, 100, 200, 400, 800) if "trust" in alt else (50, 100, 200, 400)
            summary[alt] = {"profile": long_profile(db, ns), "reach_gp_final": reach_gp_final(db)}
            if alt == "long_d2":
                summary[alt]["peers_at_n"] = peers_at_n(db, ns=(100, 500, 550))
            if alt == "long_poly" and dbs["long"] is not None:
                summary[alt]["long_cache_effect"] = cache_effect(dbs["long"], db)
    if standard is not None:
        summary["standard_cmanp_versus_previous_defaults"] = {
            name: versus_db(standard, standard, reference_network=network, reference_options=opts)
            for name, (network, opts) in PREVIOUS_DEFAULTS.items()
        }
        # stop 19's warp: bo-d1-2-reg / bo-d3-6-reg on the copula warp against themselves
        # without it (the current cmanp runs until stop 36)
        summary["standard_cmanp_versus_unwarped"] = versus_db(
            standard,
            standard,
            network=UNWARPED,
            options={"warp": "rank"},
            reference_network=UNWARPED,
            reference_options={},
        )
        gp_rank = _db("standard_gp_rank")
        if gp_rank is not None:
            summary["standard_gp_rank"] = {
                "gp_rank_versus_gp": versus_db(gp_rank, standard, model="gp"),
                "cmanp_rank_versus_gp_rank": versus(gp_rank, others=("gp",)),
            }
        # stop 34: HypothesisAveragedGP (hyp-gp, exact, nothing fitted), the suite's 20 seeds,
        # with the gp, sobol and cmanp runs of the standard database copied in
        hyp_gp = _db("standard_hyp_gp")
        if hyp_gp is not None:
            summary["standard_hyp_gp"] = {
                "hyp_gp_versus": versus(hyp_gp, model="hyp-gp", others=("gp", "sobol", "cmanp")),
                "incumbent_distance": incumbent_distance(hyp_gp),
            }
            # and on the copula warp (``warp="rank"``): powell4 and rosenbrock4 (seeds 0-19),
            # hartmann3, ackley4 and griewank4 (seeds 0-9), against hyp-gp without it
            # (``versus_unwarped``)
            hyp_gp_rank = _db("standard_hyp_gp_rank")
            if hyp_gp_rank is not None:
                summary["standard_hyp_gp_rank"] = {
                    "hyp_gp_versus": versus(
                        hyp_gp_rank, model="hyp-gp", others=("gp", "sobol", "cmanp")
                    ),
                    "versus_unwarped": versus_db(hyp_gp_rank, hyp_gp, model="hyp-gp"),
                }
        gp_trust = _db("standard_gp_trust")  # gp in the trust region, cmanp's trust runs copied in
        if gp_trust is not None:
            summary["standard_gp_trust"] = {
                "gp_trust_versus_gp": versus_db(gp_trust, standard, model="gp"),
                "cmanp_trust_versus_gp_trust": versus(gp_trust, others=("gp",)),
            }
    if args.rebuild:
        summary["state_cache_rebuild"] = rebuild_cost()
    text = json.dumps(summary, indent=1)
    path.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
