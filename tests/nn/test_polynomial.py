"""The polynomial memory: an exact, model-averaged Bayesian quadratic regression, streamed."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from cmanp_bo.nn import CMANPConfig
from cmanp_bo.nn.regression import (
    LOG_FLOOR,
    POLY_NOISES,
    POLY_PRIOR_VARIANCES,
    PolynomialMemory,
)
from tests.nn.test_regression import cube_data, reg_net


def poly_net(dtype=torch.float64, **kw):
    return reg_net(dtype, **{"polynomial_memory": True, **kw})


def test_features_are_the_quadratic_monomials_of_the_centred_inputs():
    mem = PolynomialMemory(dim_x=3, interaction=0.5)
    x = torch.tensor([[0.1, 0.5, 0.8]], dtype=torch.float64)
    u = 2 * x[0] - 1
    expected = [1.0, *u.tolist()]
    expected += [
        0.5 * (u[i] * u[j]).item() for i, j in itertools.combinations_with_replacement(range(3), 2)
    ]
    phi = mem.features(x)
    assert phi.shape == (1, 1, 10) and mem.num_features == 10
    assert torch.allclose(phi[0, 0], torch.tensor(expected, dtype=torch.float64), atol=1e-15)


def test_readout_equals_the_model_average_of_the_exact_n_x_n_regressions():
    """Every setting ``(s, lam)`` against ``y ~ N(0, s Phi Phi^T + lam I)`` computed directly:
    evidence weights, then the mixture's mean and function variance, and the mean noise."""
    mem = PolynomialMemory(dim_x=2)
    x, y, xq = cube_data(30, torch.float64, dim_x=2, batch=1)
    out = mem.readout(mem.stats(x, y, torch.Size([1])), 30, xq)[0]
    phi, phi_q = mem.features(x)[0, 0], mem.features(xq)[0, 0]
    log_ev, means, variances, noises = [], [], [], []
    for s, lam in itertools.product(POLY_PRIOR_VARIANCES, POLY_NOISES):
        K = s * phi @ phi.T + lam * torch.eye(30, dtype=torch.float64)
        Kq = s * phi_q @ phi.T
        means.append(Kq @ torch.linalg.solve(K, y[0, :, 0]))
        variances.append(s * (phi_q * phi_q).sum(-1) - (Kq * torch.linalg.solve(K, Kq.T).T).sum(-1))
        noises.append(lam)
        log_ev.append(
            torch.distributions.MultivariateNormal(
                torch.zeros(30, dtype=torch.float64), K
            ).log_prob(y[0, :, 0])
        )
    w = torch.softmax(torch.stack(log_ev), 0)[:, None]
    means, variances = torch.stack(means), torch.stack(variances)
    mean = (w * means).sum(0)
    var = (w * (variances + means**2)).sum(0) - mean**2
    noise = (w[:, 0] * torch.tensor(noises, dtype=torch.float64)).sum()
    assert torch.allclose(out[:, 0], mean, atol=1e-8)
    assert torch.allclose(out[:, 1], 0.5 * (var + LOG_FLOOR).log(), atol=1e-6)
    assert torch.allclose(out[:, 2], torch.full_like(out[:, 2], 0.5 * math.log(noise)), atol=1e-9)


def test_empty_memory_reads_the_prior_with_uniform_weights():
    mem = PolynomialMemory(dim_x=2)
    xq = torch.rand(5, 2, dtype=torch.float64)
    out = mem.readout(mem.empty(torch.Size([])), 0, xq)
    assert torch.equal(out[:, 0], torch.zeros(5, dtype=torch.float64))
    prior = torch.tensor(POLY_PRIOR_VARIANCES, dtype=torch.float64).mean()
    prior_var = prior * (mem.features(xq)[0] ** 2).sum(-1)
    assert torch.allclose(out[:, 1], 0.5 * (prior_var + LOG_FLOOR).log(), atol=1e-10)
    mean_noise = torch.tensor(POLY_NOISES, dtype=torch.float64).mean()
    assert torch.allclose(out[:, 2], 0.5 * mean_noise.log().expand(5), atol=1e-12)


def test_a_noisy_quadratic_is_recovered():
    """With 300 noisy points of a quadratic the averaged mean is the function, its std small
    and the noise estimate near the truth (std 0.05: log std -3.0)."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(300, 4, generator=g, dtype=torch.float64)
    f = lambda t: 1.5 * t[:, 0] - (t[:, 1] - 0.3) ** 2 + 2 * t[:, 2] * t[:, 3]  # noqa: E731
    y = (f(x) + 0.05 * torch.randn(300, generator=g, dtype=torch.float64))[:, None]
    xq = torch.rand(50, 4, generator=g, dtype=torch.float64)
    mem = PolynomialMemory(dim_x=4)
    out = mem.readout(mem.stats(x, y, torch.Size([])), 300, xq)
    assert (out[:, 0] - f(xq)).abs().max() < 0.05
    assert out[:, 1].exp().max() < 0.05
    assert abs(out[0, 2].item() - math.log(0.05)) < 0.5


def test_state_size_is_constant_and_counts_the_memory():
    net = poly_net()
    sizes = {
        net.encode(*cube_data(n, torch.float64)[:2], block_size=64).numel() for n in (1, 10, 400)
    }
    plain = reg_net().encode(*cube_data(5, torch.float64)[:2]).numel()
    m = 1 + 3 + 6
    assert sizes == {plain + 2 * (m * m + m + 1)}


def test_errors_are_clear():
    with pytest.raises(ValueError, match="polynomial_memory must be true or false"):
        CMANPConfig(polynomial_memory=1)
    from cmanp_bo.architectures import build_network

    with pytest.raises(ValueError, match="has no regression memory"):
        build_network("tnp", {"d_model": 16, "num_heads": 2, "polynomial_memory": True})
    x, y, xq = cube_data(5, torch.float64)
    with pytest.raises(ValueError, match="disagree on the polynomial memory"):
        reg_net().predict(poly_net().encode(x, y), xq)
