"""experiments/peer_step_cost.py: a BO step's cost for CMANP and the peers at large n."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import load_experiment, recorded_run


def test_points_replay_the_run_then_continue_with_evaluated_sobol_points(tmp_path):
    psc = load_experiment("peer_step_cost")
    from cmanp_bo.bench.problems import get_problem

    db = tmp_path / "r.sqlite"
    X_run = recorded_run(db)  # 14 points, stored as a branin run
    X, y, recorded = psc.points(db, "branin", 0, 20)
    assert recorded == 14 and X.shape == (20, 2) and y.shape == (20,)
    assert torch.equal(X[:14], X_run)
    assert torch.allclose(y[14:], get_problem("branin").evaluate(X[14:]))
    assert psc.points(db, "branin", 0, 10)[0].shape == (10, 2)  # fewer than recorded: a prefix


def test_times_each_network_in_its_own_process_with_the_steps_own_peak(tmp_path):
    psc = load_experiment("peer_step_cost")
    db, out = tmp_path / "r.sqlite", tmp_path / "cost.json"
    recorded_run(db)
    argv = ["--db", str(db), "--problem", "branin", "--sizes", "18", "--repeats", "1"]
    argv += ["--surrogates", "cmanp,tnp", "--gp", "--workers", "2", "--out", str(out)]
    result = psc.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = [(r["surrogate"], r["n"]) for r in result["rows"]]
    assert rows == [("cmanp", 18), ("tnp", 18), ("gp", 18)]
    for row in result["rows"]:
        (rep,) = row["repeats"]
        assert row["recorded_points"] == 14
        assert rep["wall_s"] > 0 and 1 <= rep["pruned_baseline"] <= 18
        assert rep["acquisition_calls"] >= 2  # the raw samples, then the optimiser
        assert rep["wall_s_per_call"] == pytest.approx(rep["wall_s"] / rep["acquisition_calls"])
        parts = [rep[k] for k in ("update_s", "build_s", "raw_s", "call_s")]
        # each part was timed (separate timings: comparing them with the step's wall time
        # would make the test depend on the machine's load)
        assert all(t > 0 for t in parts)
        fixed = sum(parts[:3]) + psc.FIXED_CALLS * parts[3]
        assert rep["fixed_calls_s"] == pytest.approx(fixed)
        # the peak was reset just before the timed step: at least the RSS then
        # Linux syncs its per-thread RSS counters lazily, so the peak read after the step can
        # trail the RSS read just after the reset by a fraction of a MB (seen: 0.13 MB)
        assert rep["step_peak_mb"] >= rep["rss_before_mb"] - 1.0 and rep["rss_before_mb"] > 100
        assert rep["step_extra_mb"] == pytest.approx(rep["step_peak_mb"] - rep["rss_before_mb"])
    with pytest.raises(SystemExit, match="at least 2"):
        psc.main([*argv[:5], "1", *argv[6:]])
