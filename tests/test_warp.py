"""The outcome warps (cmanp_bo.warp: rank and power) and the surrogates' ``warp`` option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from cmanp_bo.warp import copula_warp, power_warp, warp_outcomes
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


def test_power_warp_is_the_likelihood_fitted_yeo_johnson_of_the_standardised_outcomes():
    y = torch.tensor([0.0, 1.0, 2.0, 2.0, 50.0, 2000.0], dtype=torch.float64)
    z = power_warp(y)
    # by hand: standardise, choose the exponent that maximises the Yeo-Johnson Gaussian
    # log-likelihood, transform, standardise again
    u = (y.numpy() - y.numpy().mean()) / y.numpy().std()
    lam = stats.yeojohnson_normmax(u)
    grid = np.linspace(lam - 0.5, lam + 0.5, 101)
    assert stats.yeojohnson_llf(lam, u) >= max(stats.yeojohnson_llf(g, u) for g in grid) - 1e-9
    v = stats.yeojohnson(u, lmbda=lam)
    assert torch.allclose(z, torch.as_tensor((v - v.mean()) / v.std()), atol=1e-6)
    assert abs(z.mean().item()) < 1e-12 and z.std(unbiased=False).item() == pytest.approx(1.0)
    assert z[2] == z[3] and (z.diff() >= 0).all()  # ties stay ties, order is kept
    # a shift and a scale of the outcomes do not change it; the skew shrinks
    assert torch.allclose(power_warp(3 * y - 7), z, atol=1e-9)
    assert abs(stats.skew(z.numpy())) < abs(stats.skew(y.numpy()))
    # a Gaussian sample passes through almost unchanged (an exponent near 1)
    g = torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.corrcoef(torch.stack([power_warp(g), g]))[0, 1] > 0.999
    # per column and batch; one point or a constant column: zeros
    Y = torch.randn(3, 20, 2, dtype=torch.float64).exp()
    Z = power_warp(Y)
    for b in range(3):
        for j in range(2):
            assert torch.allclose(Z[b, :, j], power_warp(Y[b, :, j]))
    assert torch.equal(Z.argmax(-2), Y.argmax(-2))
    assert torch.equal(power_warp(torch.full((4, 1), 3.0)), torch.zeros(4, 1))
    assert power_warp(torch.tensor([7.0])).item() == 0.0
    assert power_warp(y.float()).dtype == torch.float32
    assert torch.equal(warp_outcomes(y, "power"), z)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="finite"):
        copula_warp(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="at least one outcome"):
        copula_warp(torch.zeros(0, 1))
    with pytest.raises(ValueError, match="finite"):
        power_warp(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="at least one outcome"):
        power_warp(torch.zeros(0, 1))
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
    p = make_surrogate("cmanp", 2, 0, AcquisitionOptions(**FAST_ACQ), warp="power")
    p.ask(X[:6], y[:6])
    p.ask(X[:8], y[:8])
    assert p.model.num_points == 8 and p.model.num_embedded == 8
    _, seen = p.model._history.concatenated()
    assert torch.allclose(seen.reshape(-1), power_warp(-y[:8]))
