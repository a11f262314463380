"""experiments/acquisition_cost.py: step cost with and without the baseline cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cmanp_bo.bench.store import ResultStore, RunKey
from tests.helpers import load_experiment


def _load():
    return load_experiment("acquisition_cost")


def _recorded_run(db: Path, n: int = 14) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, 2, generator=g, dtype=torch.float64)
    values = ((X - 0.3) ** 2).sum(-1)
    store = ResultStore(db)
    key = RunKey.make("long", "branin", "cmanp", 0, {"network": "bo-d1-2-reg@x"})
    run = {"dim": 2, "budget": n, "num_evals": n, "stopped": None, "best_value": 0.0}
    run |= {"optimal_value": None, "wall_s": 1.0, "surrogate_s": 1.0, "peak_rss_mb": None}
    run |= {"hardware": "test", "finished": "2026-12-02"}
    steps = [
        {"step": i + 1, "x": X[i].tolist(), "value": float(v), "best": float(values[: i + 1].min())}
        | {"regret": None, "score": None, "surrogate_s": 0.0, "cum_surrogate_s": 0.0}
        | {"cum_wall_s": 0.0, "rss_mb": None}
        for i, v in enumerate(values)
    ]
    store.add(key, run, steps)
    store.close()
    return X


def test_times_both_modes_on_the_recorded_points(tmp_path):
    ac = _load()
    db, out = tmp_path / "r.sqlite", tmp_path / "cost.json"
    X = _recorded_run(db)
    got, _ = ac.recorded_points(db, "branin", "cmanp", 0, "bo-d1-2-reg")
    assert torch.equal(got, X)
    argv = ["--db", str(db), "--problem", "branin", "--network", "bo-d1-2-reg"]
    argv += ["--checkpoint", "bo-d1-2-reg", "--sizes", "12", "--repeats", "1", "--out", str(out)]
    result = ac.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"cmanp (cache_baseline)", "cmanp (no cache)"}
    for row in result["rows"]:
        (rep,) = row["repeats"]
        assert rep["wall_s"] > 0 and 1 <= rep["pruned_baseline"] <= 12
        assert rep["acquisition_calls"] >= 2  # the raw samples, then the optimiser
    assert set(result["speedup_no_cache_over_cache"]) == {12}
    with pytest.raises(SystemExit, match="points"):
        ac.main([*argv[:-2], "--sizes", "40", "--out", str(out)])
    with pytest.raises(SystemExit, match="no cmanp run"):
        ac.recorded_points(db, "levy10", "cmanp", 0, None)
