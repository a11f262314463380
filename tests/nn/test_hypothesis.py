"""The hypothesis memory: an exact Bayesian model average of random-feature GP regressions over
per-dimension lengthscale hypotheses, streamed in constant memory."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from cmanp_bo.nn import CMANPConfig
from cmanp_bo.nn.regression import (
    HYPOTHESIS_NOISE_RATIOS,
    HYPOTHESIS_SIGNAL_VARIANCES,
    LOG_FLOOR,
    HypothesisMemory,
)
from cmanp_bo.priors.bo import lengthscale_hyperprior
from tests.nn.test_regression import cube_data, reg_net


def hyp_net(dtype=torch.float64, **kw):
    return reg_net(dtype, **{"hypothesis_count": 3, "hypothesis_features": 6, **kw})


def test_features_are_fixed_random_fourier_features_with_a_constant():
    mem = HypothesisMemory(dim_x=3, hypotheses=4, num_features=5, seed=1)
    assert mem.num_banks == 8 and mem.num_features == 6
    x = torch.rand(7, 3, dtype=torch.float64)
    phi = mem.features(x)
    assert phi.shape == (8, 7, 6)
    assert torch.equal(phi[..., -1], torch.ones(8, 7, dtype=torch.float64))
    expected = math.sqrt(2 / 5) * torch.cos(x @ mem.frequencies[2] + mem.phases[2])
    assert torch.allclose(phi[2, :, :5], expected, atol=1e-14)
    # the same seed gives the same hypotheses; the buffers travel with the state dict
    again = HypothesisMemory(dim_x=3, hypotheses=4, num_features=5, seed=1)
    assert torch.equal(again.frequencies, mem.frequencies)
    assert set(mem.state_dict()) == {"frequencies", "phases"}


def test_rbf_lengthscales_follow_the_hyperprior():
    """The RBF banks' frequencies are N(0, 1 / l^2) per dimension: their empirical scale per
    hypothesis and dimension recovers log-lengthscales whose spread is the hyperprior's."""
    mem = HypothesisMemory(dim_x=4, hypotheses=200, num_features=400, seed=0)
    rbf = mem.frequencies[:200]  # K x d x m
    log_ls = -rbf.std(-1).log()
    loc, scale = lengthscale_hyperprior(4)
    assert abs(log_ls.mean().item() - loc) < 0.2
    assert abs(log_ls.std().item() - scale) < 0.15


def test_readout_equals_the_model_average_of_the_exact_n_x_n_regressions():
    """Every setting (bank, r, s) against ``y ~ N(0, s (Phi Phi^T + r I))`` computed directly:
    evidence weights, then the mixture's mean and function variance, and the mean noise."""
    mem = HypothesisMemory(dim_x=2, hypotheses=2, num_features=4, seed=3)
    x, y, xq = cube_data(12, torch.float64, dim_x=2, batch=1)
    out = mem.readout(mem.stats(x, y, torch.Size([1])), 12, xq)[0]
    phis, phis_q = mem.features(x)[0], mem.features(xq)[0]
    log_ev, means, variances, noises = [], [], [], []
    eye = torch.eye(12, dtype=torch.float64)
    for bank, r, s in itertools.product(
        range(mem.num_banks), HYPOTHESIS_NOISE_RATIOS, HYPOTHESIS_SIGNAL_VARIANCES
    ):
        phi, phi_q = phis[bank], phis_q[bank]
        cov = s * phi @ phi.T + r * s * eye
        cross = s * phi_q @ phi.T
        means.append(cross @ torch.linalg.solve(cov, y[0, :, 0]))
        quad = (cross * torch.linalg.solve(cov, cross.T).T).sum(-1)
        variances.append(s * (phi_q * phi_q).sum(-1) - quad)
        noises.append(r * s)
        mvn = torch.distributions.MultivariateNormal(torch.zeros(12, dtype=torch.float64), cov)
        log_ev.append(mvn.log_prob(y[0, :, 0]))
    w = torch.softmax(torch.stack(log_ev), 0)[:, None]
    means, variances = torch.stack(means), torch.stack(variances)
    mean = (w * means).sum(0)
    var = (w * (variances + means**2)).sum(0) - mean**2
    noise = (w[:, 0] * torch.tensor(noises, dtype=torch.float64)).sum()
    assert torch.allclose(out[:, 0], mean, atol=1e-7)
    assert torch.allclose(out[:, 1], 0.5 * (var + LOG_FLOOR).log(), atol=1e-5)
    assert torch.allclose(out[:, 2], torch.full_like(out[:, 2], 0.5 * noise.log()), atol=1e-8)


def test_a_function_with_an_irrelevant_dimension_is_recovered():
    """300 noisy points of a smooth function of x0 alone in 3-D: the averaged mean tracks it
    and is flat along the irrelevant dimension."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(300, 3, generator=g, dtype=torch.float64)
    f = lambda t: torch.sin(3 * t[:, 0])  # noqa: E731
    y = (f(x) + 0.01 * torch.randn(300, generator=g, dtype=torch.float64))[:, None]
    mem = HypothesisMemory(dim_x=3, hypotheses=32, num_features=32, seed=0)
    stats = mem.stats(x, y, torch.Size([]))
    xq = torch.rand(50, 3, generator=g, dtype=torch.float64)
    out = mem.readout(stats, 300, xq)
    assert (out[:, 0] - f(xq)).abs().mean() < 0.05
    moved = xq.clone()
    moved[:, 2] = 1 - moved[:, 2]
    assert (mem.readout(stats, 300, moved)[:, 0] - out[:, 0]).abs().mean() < 0.05


def test_state_size_is_constant_and_counts_the_memory():
    net = hyp_net()
    sizes = {
        net.encode(*cube_data(n, torch.float64)[:2], block_size=64).numel() for n in (1, 10, 300)
    }
    plain = reg_net().encode(*cube_data(5, torch.float64)[:2]).numel()
    banks, m = 2 * 3, 6 + 1
    assert sizes == {plain + 2 * (banks * (m * m + m) + 1)}


def test_errors_are_clear():
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="hypothesis_count must be an int >= 0"):
            CMANPConfig(hypothesis_count=bad)
    with pytest.raises(ValueError, match="hypothesis_features must be a positive int"):
        CMANPConfig(hypothesis_features=0)
    with pytest.raises(ValueError, match="need hypotheses >= 1"):
        HypothesisMemory(dim_x=2, hypotheses=0, num_features=4)
    from cmanp_bo.architectures import build_network

    with pytest.raises(ValueError, match="has no regression memory"):
        build_network("lbanp", {"d_model": 16, "num_heads": 2, "hypothesis_count": 2})
    x, y, xq = cube_data(5, torch.float64)
    with pytest.raises(ValueError, match="disagree on the hypothesis memory"):
        reg_net().predict(hyp_net().encode(x, y), xq)
