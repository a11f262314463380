"""experiments/smooth_activations.py: ReLUs replaced by softplus(beta) at inference."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from tests.helpers import load_experiment, recorded_run


def _load():
    return load_experiment("smooth_activations")


def test_smoothed_replaces_every_relu_in_a_copy_and_stays_finite_for_large_inputs():
    sa = _load()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
    net = net.double()
    x = 100.0 * torch.randn(16, 3, dtype=torch.float64)  # pre-activations far beyond 709 / beta
    for beta in (10.0, 100.0):
        smooth = sa.smoothed(net, beta)
        assert not any(isinstance(m, nn.ReLU) for m in smooth.modules())
        assert sum(isinstance(m, nn.Softplus) for m in smooth.modules()) == 2
        out, ref = smooth(x), net(x)
        assert torch.isfinite(out).all()
        # Each softplus is at most log(2) / beta above its ReLU, and the second layer's weights
        # carry the first gap on: bounded by (1 + the second layer's absolute row sums).
        bound = math.log(2) / beta * (1 + float(net[2][0].weight.abs().sum(-1).max()))
        assert float((out - ref).abs().max()) <= bound
    assert any(isinstance(m, nn.ReLU) for m in net.modules())  # the original is untouched
    same = sa.smoothed(net, None)
    assert same is not net and torch.equal(same(x), net(x))


def test_compares_each_beta_with_the_relu_network_on_the_recorded_points(tmp_path):
    sa = _load()
    db, out = tmp_path / "r.sqlite", tmp_path / "smooth.json"
    recorded_run(db)
    argv = ["--db", str(db), "--problem", "branin", "--network", "bo-d1-2-reg"]
    argv += ["--checkpoint", "bo-d1-2-reg", "--sizes", "12", "--repeats", "1", "--betas", "100"]
    result = sa.main([*argv, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert [row["beta"] for row in result["rows"]] == [None, 100.0]
    relu, smooth = result["rows"]
    assert relu["posterior_shift"] is None
    shift = smooth["posterior_shift"]
    assert 0 <= shift["mean_abs_mean_change"] < 0.1 and 0 <= shift["mean_abs_std_change"] < 0.1
    for row in result["rows"]:
        (rep,) = row["repeats"]
        assert rep["acquisition_calls"] >= 2 and math.isfinite(rep["reference_log_nei"])
    with pytest.raises(SystemExit, match="points"):
        sa.main([*argv[:-6], "--sizes", "40", "--out", str(out)])
