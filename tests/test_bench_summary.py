"""experiments/bench_summary.py: the comparisons it writes to summary.json."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from cmanp_bo.bench.store import ResultStore, RunKey
from tests.helpers import load_experiment


def _load():
    return load_experiment("bench_summary")


def _add(store: ResultStore, surrogate: str, seed: int, settings: dict, regrets, step_s, wall):
    key = RunKey.make("long", "rosenbrock8", surrogate, seed, settings)
    n = len(regrets)
    run = {"dim": 8, "budget": 1000, "num_evals": n, "stopped": "cap", "best_value": regrets[-1]}
    run |= {"optimal_value": 0.0, "wall_s": wall[-1], "surrogate_s": sum(step_s)}
    run |= {"peak_rss_mb": None, "hardware": "test", "finished": "2026-12-02"}
    steps = [
        {"step": i + 1, "x": [0.5] * 8, "value": r, "best": r, "regret": r, "score": None}
        | {"surrogate_s": t, "cum_surrogate_s": 0.0, "cum_wall_s": w, "rss_mb": None}
        for i, (r, t, w) in enumerate(zip(regrets, step_s, wall, strict=True))
    ]
    store.add(key, run, steps)


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    return db


def test_reach_gp_final_and_the_cache_effect(tmp_path):
    bs = _load()
    base = {"acquisition": {}, "budget": None, "options": {}, "time_cap_s": 1200.0}
    new = {**base, "network": "default:d=8:bo-d7-10-poly@aaa", "model_revision": 2}
    old = {**base, "network": "bo-d7-10-poly@aaa", "options": {"checkpoint": "bo-d7-10-poly"}}
    long, poly = ResultStore(tmp_path / "long.sqlite"), ResultStore(tmp_path / "poly.sqlite")
    for store in (long, poly):
        _add(store, "gp", 0, base, [9.0, 5.0, 3.0, 3.0], [0, 1, 2, 4], [1, 3, 6, 11])
    _add(long, "cmanp", 0, new, [8.0, 3.0, 2.0, 1.0, 0.5], [0, 1, 1, 1, 1], [1, 2, 3, 4, 5])
    _add(poly, "cmanp", 0, old, [8.0, 4.0, 3.0], [0, 3, 5], [1, 4, 9])
    _add(poly, "cmanp", 1, old, [8.0, 4.0], [0, 3], [1, 4])  # no cached run: not paired
    long.close(), poly.close()
    cached, uncached = _open(tmp_path / "long.sqlite"), _open(tmp_path / "poly.sqlite")
    reach = bs.reach_gp_final(cached)["rosenbrock8/seed0"]
    # gp first got to its final regret at evaluation 3 (6 s) and ran on to 11 s
    assert reach["gp_final_regret"] == 3.0 and reach["gp_reached_at"] == {
        "evaluation": 3,
        "wall_s": 6.0,
    }
    assert reach["cmanp_reached_at"] == {"evaluation": 2, "wall_s": 2.0}
    assert reach["ratio"] == round(2 / 6, 4) and reach["ratio_to_run"] == round(2 / 11, 4)
    effect = bs.cache_effect(cached, uncached)
    assert list(effect) == ["rosenbrock8/seed0"]
    e = effect["rosenbrock8/seed0"]
    assert e["network"] == "bo-d7-10-poly@aaa"
    assert e["evaluations"] == {"cached": 5, "uncached": 3}
    assert e["final_regret"] == {"cached": 0.5, "uncached": 3.0}
    # medians over the first 3 evaluations of both, design steps (0 s) left out
    assert e["median_s_per_step_over_common_evaluations"] == {
        "cached": 1.0,
        "uncached": 4.0,
        "evaluations": 3,
    }


def _add_points(store: ResultStore, surrogate: str, seed: int, settings: dict, xs, values):
    """A standard-suite run of branin whose step i proposes xs[i] and observes values[i]
    (the first point is the design: surrogate time 0)."""
    key = RunKey.make("standard", "branin", surrogate, seed, settings)
    run = {"dim": 2, "budget": len(xs), "num_evals": len(xs), "stopped": None}
    run |= {"best_value": min(values), "optimal_value": 0.0, "wall_s": 1.0, "surrogate_s": 1.0}
    run |= {"peak_rss_mb": None, "hardware": "test", "finished": "2026-12-02"}
    steps = [
        {"step": i + 1, "x": x, "value": v, "best": min(values[: i + 1]), "regret": None}
        | {"score": None, "surrogate_s": 0.0 if i == 0 else 0.1, "cum_surrogate_s": 0.0}
        | {"cum_wall_s": float(i), "rss_mb": None}
        for i, (x, v) in enumerate(zip(xs, values, strict=True))
    ]
    store.add(key, run, steps)


def test_incumbent_distance_measures_from_the_best_point_before_each_proposal(tmp_path):
    bs = _load()
    store = ResultStore(tmp_path / "s.sqlite")
    settings = {"acquisition": {}, "budget": None, "options": {}, "time_cap_s": None}
    # incumbents: (0, 0) for step 2; (0, 0) for step 3 (step 2 was worse); (0.3, 0.4) for step 4
    xs = [[0.0, 0.0], [1.0, 0.0], [0.3, 0.4], [0.3, 0.42]]
    _add_points(store, "gp", 0, settings, xs, [1.0, 2.0, 0.5, 0.4])
    _add_points(store, "sobol", 0, settings, xs, [1.0, 2.0, 0.5, 0.4])  # no model: left out
    store.close()
    out = bs.incumbent_distance(_open(tmp_path / "s.sqlite"))
    assert list(out) == ["branin/gp"]
    # distances 1.0, 0.5 and 0.02: median 0.5, one of three within 0.05
    assert out["branin/gp"] == {"median": 0.5, "share_within_0.05": 0.333, "proposals": 3}


def test_final_metrics_refuses_two_runs_of_one_seed(tmp_path):
    bs = _load()
    store = ResultStore(tmp_path / "s.sqlite")
    plain = {"acquisition": {}, "budget": None, "network": "net@a", "options": {}}
    warped = {**plain, "options": {"warp": "rank"}}
    for settings in (plain, warped):
        _add_points(store, "cmanp", 0, settings, [[0.1, 0.1], [0.2, 0.2]], [1.0, 0.5])
    store.close()
    db = _open(tmp_path / "s.sqlite")
    by_seed = bs._final_metrics(db, "net@a", {"warp": "rank"})["branin"]["cmanp"]
    assert by_seed == {0: pytest.approx(math.log10(0.5))}  # the final log10 regret
    with pytest.raises(ValueError, match="seed 0: more than one run"):
        bs._final_metrics(db, "net@a")


def test_trust_final_side_replays_the_schedule_up_to_the_last_proposal(tmp_path):
    bs = _load()
    store = ResultStore(tmp_path / "s.sqlite")
    trust = {"acquisition": {}, "budget": None, "options": {"trust_region": True}}
    plain = {**trust, "options": {}}
    # branin: 5 initial points, then 4 failures (the side halves to 0.4) and a last evaluation,
    # whose own value does not change the side it was proposed in
    values = [5.0, 4.0, 3.0, 2.0, 1.0, 9.0, 9.0, 9.0, 9.0, 0.1]
    xs = [[0.1 * i, 0.1 * i] for i in range(len(values))]
    _add_points(store, "cmanp", 0, trust, xs, values)
    _add_points(store, "cmanp", 1, trust, xs[:6], values[:6])  # one proposal: the initial side
    _add_points(store, "gp", 0, plain, xs, values)  # no trust region: left out
    store.close()
    out = bs.trust_final_side(_open(tmp_path / "s.sqlite"))
    assert out == {"branin": {"0.4": 1, "0.8": 1}}


def test_peers_at_n_pairs_runs_by_problem_and_seed(tmp_path):
    bs = _load()
    store = ResultStore(tmp_path / "r.sqlite")
    n = 30
    # cmanp ends lower than tnp on every (problem, seed) and its steps are cheaper; lbanp ties
    for problem in ("ackley2_long", "levy2_long"):
        for seed in range(3):
            for surrogate, final, step in (("cmanp", 1e-3, 0.1), ("tnp", 1e-1, 0.5)):
                _add_d2(
                    store, problem, surrogate, seed, final, [step * (1 + i / n) for i in range(n)]
                )
            _add_d2(store, problem, "lbanp", seed, 1e-3, [0.3] * n, rss=900.0)
    _add_d2(store, "ackley2_long", "tnp", 3, 1e-1, [0.5] * n)  # no cmanp run of seed 3: unpaired
    store.close()
    out = bs.peers_at_n(_open(tmp_path / "r.sqlite"), ns=(10, 25))
    run = out["runs"]["ackley2_long/seed0"]
    assert set(run) == {"cmanp", "tnp", "lbanp"}
    assert run["cmanp"]["final_regret"] == pytest.approx(1e-3)
    assert run["cmanp"]["evaluations"] == n + 2 and run["lbanp"]["peak_rss_mb"] == 900.0
    # the median over steps 15..32 (+-10 around 25): the proposals i = 12..29 after the design
    assert run["tnp"]["s_per_step_near_n"][25] == pytest.approx(0.5 * (1 + 20.5 / n), abs=1e-4)
    tnp, lbanp = out["cmanp_versus"]["tnp"], out["cmanp_versus"]["lbanp"]
    assert tnp["final_log10_regret"]["seeds"] == 6 and tnp["final_log10_regret"]["mean_diff"] == -2
    assert tnp["final_log10_regret"]["verdict"] == "better"
    assert run["tnp"]["regret_at_n"] == {10: pytest.approx(0.1), 25: pytest.approx(0.1)}
    assert tnp["log10_regret_after_25"]["verdict"] == "better"
    assert tnp["log10_regret_after_25"]["mean_diff"] == pytest.approx(-2)
    assert tnp["cmanp_lower_regret_in"] == 6 and tnp["cmanp_higher_regret_in"] == 0
    assert tnp["median_step_s_near_25"]["runs"] == 6
    assert tnp["median_step_s_near_25"]["cmanp"] < tnp["median_step_s_near_25"]["tnp"]
    assert lbanp["final_log10_regret"]["verdict"] == "n.s."
    assert lbanp["cmanp_lower_regret_in"] == 0 == lbanp["cmanp_higher_regret_in"]


def _add_d2(store, problem, surrogate, seed, final, step_s, rss=500.0):
    key = RunKey.make("long", problem, surrogate, seed, {"budget": len(step_s) + 2})
    n = len(step_s) + 2  # two design points
    run = {"dim": 2, "budget": n, "num_evals": n, "stopped": None, "best_value": final}
    run |= {"optimal_value": 0.0, "wall_s": 1.0, "surrogate_s": sum(step_s)}
    run |= {"peak_rss_mb": rss, "hardware": "test", "finished": "2026-12-03"}
    times = [0.0, 0.0, *step_s]
    steps = [
        {"step": i + 1, "x": [0.5, 0.5], "value": final, "best": final, "regret": final}
        | {"score": None, "surrogate_s": t, "cum_surrogate_s": 0.0, "cum_wall_s": float(i)}
        | {"rss_mb": rss}
        for i, t in enumerate(times)
    ]
    store.add(key, run, steps)


def test_shared_peak_rss_clears_only_peaks_copied_from_an_earlier_run(tmp_path):
    import sqlite3

    from cmanp_bo.bench.store import ResultStore

    spr = load_experiment("shared_peak_rss")

    def db(name, rows):
        path = tmp_path / name / "results.sqlite"
        path.parent.mkdir()
        ResultStore(path).close()
        with sqlite3.connect(path) as con:
            for seed, peak, finished, hardware in rows:
                con.execute(
                    "INSERT INTO runs (suite, problem, surrogate, seed, settings, dim, budget, "
                    "num_evals, best_value, wall_s, surrogate_s, peak_rss_mb, hardware, finished) "
                    "VALUES ('s', 'p', 'cmanp', ?, '{}', 2, 10, 10, 0.0, 1.0, 1.0, ?, ?, ?)",
                    (seed, peak, hardware, finished),
                )
        return path

    a = db("a", [(0, 500.0, "t1", "cpu"), (1, 500.0, "t2", "cpu"), (2, 510.0, "t3", "cpu")])
    db("a2", [(3, 500.0, "t4", "other cpu")])  # the same KiB on other hardware: kept
    b = db("b", [(1, 500.0, "t2", "cpu"), (4, 510.0, "t5", "cpu")])  # seed 1 copied from a
    record = tmp_path / "record.json"
    flagged = spr.main(["--root", str(tmp_path), "--record", str(record)])
    assert sorted((r["seed"], r["same_as"]["seed"]) for r in flagged) == [(1, 0), (4, 2)]
    assert sorted(len(r["databases"]) for r in flagged) == [1, 2]  # the copy counts once

    def peaks(path):
        with sqlite3.connect(path) as con:
            return dict(con.execute("SELECT seed, peak_rss_mb FROM runs").fetchall())

    assert peaks(a) == {0: 500.0, 1: 500.0, 2: 510.0}  # listing alone changes nothing
    spr.main(["--root", str(tmp_path), "--record", str(record), "--apply"])
    assert peaks(a) == {0: 500.0, 1: None, 2: 510.0}
    assert peaks(b) == {1: None, 4: None}
    assert peaks(tmp_path / "a2" / "results.sqlite") == {3: 500.0}
    assert json.loads(record.read_text())["rows_cleared"] == 3
    assert spr.main(["--root", str(tmp_path), "--record", str(record)]) == []  # idempotent
