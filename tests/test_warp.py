"""The copula outcome warp (cmanp_bo.warp) and the surrogates' ``warp="rank"`` option."""

from __future__ import annotations

import pytest
import torch

from cmanp_bo.warp import copula_warp, warp_outcomes
from surrogates.registry import AcquisitionOptions, make_surrogate

FAST_ACQ = {"num_restarts": 2, "raw_samples": 32, "mc_samples": 32}


def test_copula_warp_is_the_normal_quantile_of_the_average_rank():
    y = torch.tensor([3.0, 1.0, 2.0, 2.0, 10.0], dtype=torch.float64)
    ranks = torch.tensor([4.0, 1.0, 2.5, 2.5, 5.0], dtype=torch.float64)
    expected = torch.special.ndtri((ranks - 0.5) / 5)
    assert torch.allclose(copula_warp(y), expected, atol=1e-12)
    assert copula_warp(torch.tensor([7.0])).item() == 0.0
    assert copula_warp(y.float()).dtype == torch.float32


def test_copula_warp_works_per_column_and_batch_and_ignores_monotone_maps():
    Y = torch.randn(3, 20, 2, dtype=torch.float64)
    Z = copula_warp(Y)
    assert Z.shape == Y.shape
    for b in range(3):
        for j in range(2):
            assert torch.equal(Z[b, :, j], copula_warp(Y[b, :, j]))
    # a strictly increasing map of the outcomes leaves the warp unchanged
    assert torch.equal(copula_warp(torch.exp(3 * Y) + 5), Z)
    # order is kept: the best point stays the best
    assert torch.equal(Z.argmax(-2), Y.argmax(-2))


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="finite"):
        copula_warp(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="at least one outcome"):
        copula_warp(torch.zeros(0, 1))
    with pytest.raises(ValueError, match="unknown warp 'log'"):
        warp_outcomes(torch.ones(3), "log")
    with pytest.raises(ValueError, match="unknown warp 'log'"):
        make_surrogate("cmanp", 2, 0, warp="log")
    with pytest.raises(ValueError, match="bad options"):
        make_surrogate("gp-cheap", 2, 0, warp="rank")  # its rank updates cannot be warped
    assert torch.equal(warp_outcomes(torch.arange(3.0), None), torch.arange(3.0))


@pytest.mark.parametrize("name", ["gp", "cmanp"])
def test_warped_surrogates_see_only_the_order_of_the_outcomes(name):
    X = torch.quasirandom.SobolEngine(2, scramble=True, seed=1).draw(8, dtype=torch.float64)
    y = (X - 0.3).pow(2).sum(-1)
    squashed = torch.log1p(y) * 7 - 2  # the same order, another scale

    def ask(values, warp):
        return make_surrogate(name, 2, 0, AcquisitionOptions(**FAST_ACQ), warp=warp).ask(X, values)

    x = ask(y, "rank")
    assert x.shape == (2,) and ((x >= 0) & (x <= 1)).all()
    assert torch.equal(x, ask(squashed, "rank"))
    assert not torch.equal(ask(y, None), ask(squashed, None))  # unwarped, the scale matters


def test_warped_cmanp_rebuilds_its_model_from_all_points():
    X = torch.rand(9, 2, dtype=torch.float64)
    y = X.sum(-1)
    s = make_surrogate("cmanp", 2, 0, AcquisitionOptions(**FAST_ACQ), warp="rank")
    s.ask(X[:6], y[:6])
    s.ask(X[:8], y[:8])
    assert s.model.num_points == 8 and s.model.num_embedded == 8  # built afresh, not updated
    _, seen = s.model._history.concatenated()  # what the model absorbed: the warped outcomes
    assert torch.equal(seen.reshape(-1), copula_warp(-y[:8]))
