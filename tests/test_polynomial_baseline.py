"""experiments/polynomial_baseline.py: the quadratic readout alone on prior_fit's held-out tasks."""

from __future__ import annotations

import json
import math

import torch

from tests.helpers import load_experiment


def _load():
    return load_experiment("polynomial_baseline")


def test_scores_the_held_out_tasks_and_reads_the_routed_networks(tmp_path):
    pb = _load()
    out = tmp_path / "pb.json"
    result = pb.main(["--dims", "2", "--sizes", "16", "64", "--tasks", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    cells = result["cells"]
    assert [(c["d"], c["n"], c["tasks"]) for c in cells] == [(2, 16, 3), (2, 64, 3)]
    assert all(math.isfinite(c["polynomial_ll"]) for c in cells)
    # the network column is the routed network's number in its committed prior_fit report
    name, ll = pb.network_ll(2, 64)
    assert cells[1]["network"] == name == "bo-d3-6-resid" and cells[1]["network_ll"] == ll


def test_a_task_that_is_a_quadratic_scores_far_above_the_prior_ones():
    """The scoring is the moment-matched predictive: on a noise-free-ish quadratic it is sharp."""
    pb = _load()
    from cmanp_bo.frame import OutcomeFrame
    from cmanp_bo.nn.regression import PolynomialMemory
    from cmanp_bo.priors.bo import BOBatch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 264, 3, generator=g, dtype=torch.float64)
    y = (
        (x[..., :1] - 0.4) ** 2
        + x[..., 1:2] * x[..., 2:3]
        + 1e-3 * torch.randn(1, 264, 1, generator=g, dtype=torch.float64)
    )
    frame = OutcomeFrame.from_data(y[:, :200])
    y = frame.apply(y)
    one = torch.ones(1, dtype=torch.float64)
    batch = BOBatch(
        x[:, :200], y[:, :200], x[:, 200:], y[:, 200:], 3, one.expand(1, 3), one, "rbf", one, one
    )
    assert pb.polynomial_ll(PolynomialMemory(3), batch, 200) > 2.0
