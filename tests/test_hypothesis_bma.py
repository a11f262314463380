"""experiments/hypothesis_bma.py: the lengthscale-hypothesis average against the routed networks,
the fitted GP and the ceiling, paired on prior_fit's held-out tasks."""

from __future__ import annotations

import json
import math

import torch

from cmanp_bo import pretrained
from cmanp_bo.nn.regression import HypothesisMemory
from tests.helpers import load_experiment


def test_scores_pair_every_model_on_the_same_tasks(tmp_path):
    hb = load_experiment("hypothesis_bma")
    out = tmp_path / "hb.json"
    args = ["--dims", "2", "--sizes", "16", "--tasks", "3", "--hypotheses", "4"]
    result = hb.main([*args, "--features", "8", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    (cell,) = result["cells"]
    assert (cell["d"], cell["n"], cell["tasks"]) == (2, 16, 3)
    routed = pretrained.default_bo_name(2)
    assert result["networks"] == {"2": f"pretrained:{routed} (default for d=2)"}
    for model in ("network", "ceiling", "bma_exact", "bma_rff"):
        assert math.isfinite(cell[model]["ll"])
    # every model scored the same 3 tasks, so a paired difference is the difference of means
    for a in ("bma_exact", "bma_rff"):
        for b in ("network", "ceiling"):
            paired = cell["paired"][f"{a}_minus_{b}"]
            assert paired["tasks"] == 3
            assert abs(paired["diff"] - (cell[a]["ll"] - cell[b]["ll"])) < 1e-9
    # the fitted GP's committed rows cover the first 30 tasks of this cell
    assert cell["fitted_gp"]["tasks"] == 3 and cell["paired"]["bma_rff_minus_fitted_gp"]


def test_the_exact_average_with_the_true_lengthscales_nears_the_ceiling():
    """Given the task's own lengthscales among the hypotheses, the exact average is within a
    small margin of the exact GP with the true hyperparameters; with one badly wrong
    hypothesis it is far below."""
    hb = load_experiment("hypothesis_bma")
    from prior_fit import EVAL_SEED, context_prefix, exact_gp_posterior, sample_pool

    batch = context_prefix(sample_pool(2, 1, seed=EVAL_SEED)[0], 64)
    xc, yc, xt, yt = batch.xc[0], batch.yc[0, :, 0], batch.xt[0], batch.yt[0, :, 0]
    mean, cov = exact_gp_posterior(batch)
    ceiling = hb.gaussian_ll(mean[0], torch.diagonal(cov[0]), yt)
    true = batch.lengthscales.clamp_max(1e6)
    good = hb.gaussian_ll(*hb.bma_exact(xc, yc, xt, true), yt)
    bad = hb.gaussian_ll(*hb.bma_exact(xc, yc, xt, torch.full_like(true, 1e-3)), yt)
    assert ceiling - 0.3 < good < ceiling + 0.05
    assert bad < good - 1.0


def test_bma_rff_is_the_memory_readout_with_the_noise_added():
    hb = load_experiment("hypothesis_bma")
    memory = HypothesisMemory(2, hypotheses=3, num_features=5)
    g = torch.Generator().manual_seed(1)
    xc, xt = torch.rand(10, 2, generator=g, dtype=torch.float64), torch.rand(4, 2, generator=g)
    yc = torch.randn(10, generator=g, dtype=torch.float64)
    mean, var = hb.bma_rff(xc, yc, xt.double(), memory)
    out = memory.readout(memory.stats(xc, yc[:, None], torch.Size([])), 10, xt.double())
    assert torch.allclose(mean, out[:, 0])
    assert torch.allclose(var, (2 * out[:, 1]).exp() + (2 * out[:, 2]).exp())
