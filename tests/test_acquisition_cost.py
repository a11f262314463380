"""experiments/acquisition_cost.py: step cost with and without the baseline cache."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import load_experiment, recorded_run


def _load():
    return load_experiment("acquisition_cost")


def test_times_both_modes_on_the_recorded_points(tmp_path):
    ac = _load()
    db, out = tmp_path / "r.sqlite", tmp_path / "cost.json"
    X = recorded_run(db)
    got, _ = ac.recorded_points(db, "branin", "cmanp", 0, "bo-d1-2-reg")
    assert torch.equal(got, X)
    argv = ["--db", str(db), "--problem", "branin", "--network", "bo-d1-2-reg"]
    argv += ["--checkpoint", "bo-d1-2-reg", "--sizes", "12", "--repeats", "1", "--out", str(out)]
    result = ac.main([*argv, "--hyp-gp"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    methods = {r["method"] for r in result["rows"]}
    assert methods == {"cmanp (cache_baseline)", "cmanp (no cache)", "hyp-gp (rebuilt)"}
    for row in result["rows"]:
        (rep,) = row["repeats"]
        assert rep["wall_s"] > 0 and 1 <= rep["pruned_baseline"] <= 12
        assert rep["acquisition_calls"] >= 2  # the raw samples, then the optimiser
    assert set(result["speedup_no_cache_over_cache"]) == {12}
    with pytest.raises(SystemExit, match="points"):
        ac.main([*argv[:-2], "--sizes", "40", "--out", str(out)])
    with pytest.raises(SystemExit, match="no cmanp run"):
        ac.recorded_points(db, "levy10", "cmanp", 0, None)
