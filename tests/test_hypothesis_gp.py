"""HypothesisAveragedGP: the exact evidence-weighted average over lengthscale hypotheses."""

from __future__ import annotations

import math

import pytest
import torch
from botorch.exceptions.errors import InputDataError, UnsupportedError

import cmanp_bo.hypothesis_gp as hgp
from cmanp_bo.hypothesis_gp import HypothesisAveragedGP
from cmanp_bo.nn.regression import (
    HYPOTHESIS_NOISE_RATIOS,
    HYPOTHESIS_SIGNAL_VARIANCES,
)


def data(n=9, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    Y = (torch.sin(5 * X[:, :1]) + X[:, 1:2] ** 2) * 3.0 + 7.0
    return X, Y


def kernel(kind, a, b, ls):
    r = torch.cdist(a / ls, b / ls)
    if kind == "rbf":
        return torch.exp(-0.5 * r**2)
    r = math.sqrt(5) * r
    return (1 + r + r**2 / 3) * torch.exp(-r)


def brute_force(X, Y, Xq, hypotheses):
    """Every (kernel, hypothesis, ratio, scale) as a separate exact GP, weighted by its marginal
    likelihood, moment-matched: (mean, covariance) of f in the standardised frame."""
    y = ((Y - Y.mean()) / Y.std()).squeeze(-1)
    n = X.shape[0]
    means, covs, logp = [], [], []
    for kind in ("rbf", "matern"):
        for ls in hypotheses:
            k_cc = kernel(kind, X, X, ls) + 1
            k_qc = kernel(kind, Xq, X, ls) + 1
            k_qq = kernel(kind, Xq, Xq, ls) + 1
            for r in HYPOTHESIS_NOISE_RATIOS:
                c = k_cc + r * torch.eye(n, dtype=torch.float64)
                solve = torch.linalg.solve(c, torch.cat([y[:, None], k_qc.T], 1))
                for s in HYPOTHESIS_SIGNAL_VARIANCES:
                    dist = torch.distributions.MultivariateNormal(torch.zeros(n).double(), s * c)
                    logp.append(dist.log_prob(y))
                    means.append(k_qc @ solve[:, 0])
                    covs.append(s * (k_qq - k_qc @ solve[:, 1:]))
    w = torch.softmax(torch.stack(logp), 0)
    mean_k, cov_k = torch.stack(means), torch.stack(covs)
    mean = (w[:, None] * mean_k).sum(0)
    dev = mean_k - mean
    cov = (w[:, None, None] * (cov_k + dev[:, :, None] * dev[:, None, :])).sum(0)
    return mean, cov


def test_the_average_equals_separate_exact_gps_weighted_by_their_evidence(monkeypatch):
    monkeypatch.setattr(hgp, "MIN_WEIGHT", 0.0)  # keep every component
    X, Y = data()
    model = HypothesisAveragedGP(X, Y, hypotheses=3, short_share=0.5, max_components=10_000)
    assert model.num_components == 2 * 3 * len(HYPOTHESIS_NOISE_RATIOS)
    Xq = torch.rand(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mean, cov = model.moments(Xq)
    ref_mean, ref_cov = brute_force(X, Y, Xq, model.hypotheses)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(cov, ref_cov, rtol=1e-6, atol=1e-8)
    # the posterior is the same in the outcome's units
    post = model.posterior(Xq)
    torch.testing.assert_close(post.mean.squeeze(-1), ref_mean * Y.std() + Y.mean())
    torch.testing.assert_close(
        post.covariance_matrix,
        ref_cov * Y.var() + 1e-9 * Y.var() * torch.eye(4, dtype=torch.float64),
    )


def test_pruning_keeps_the_heaviest_components_and_renormalises():
    X, Y = data(n=12)
    full = HypothesisAveragedGP(X, Y, hypotheses=16)
    few = HypothesisAveragedGP(X, Y, hypotheses=16, max_components=2)
    assert few.num_components == 2 <= full.num_components <= 32
    weights = torch.cat([c.weight for c in few._components])
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    heaviest = torch.cat([c.weight for c in full._components]).max()
    assert weights.max() >= heaviest  # the same top component, renormalised


def test_noise_free_data_are_interpolated_and_the_std_shrinks_there():
    X, Y = data(n=15)
    model = HypothesisAveragedGP(X, Y)
    post = model.posterior(X.unsqueeze(-2))  # 15 marginals
    assert (post.mean.squeeze() - Y.squeeze()).abs().max() < 1e-2 * Y.std()
    far = model.posterior(torch.tensor([[[1.5, -0.5]]], dtype=torch.float64))
    assert post.variance.sqrt().max() < 0.05 * far.variance.sqrt().item()
    noisy = model.posterior(X.unsqueeze(-2), observation_noise=True)
    torch.testing.assert_close(
        noisy.variance - post.variance, (model.noise_variance * Y.var()).expand_as(post.variance)
    )


def test_batched_points_give_a_joint_posterior_per_batch():
    X, Y = data()
    model = HypothesisAveragedGP(X, Y, hypotheses=8)
    Xq = torch.rand(5, 3, 2, dtype=torch.float64)
    post = model.posterior(Xq)
    assert post.mean.shape == (5, 3, 1) and post.covariance_matrix.shape == (5, 3, 3)
    one = model.posterior(Xq[2])
    torch.testing.assert_close(post.mean[2], one.mean)
    torch.testing.assert_close(post.covariance_matrix[2], one.covariance_matrix)
    assert torch.linalg.eigvalsh(post.covariance_matrix).min() > 0
    assert model.posterior(Xq.float()).mean.dtype == torch.float64  # the training data's


def test_bad_input_is_refused_with_what_to_pass():
    X, Y = data()
    with pytest.raises(UnsupportedError, match="unbatched"):
        HypothesisAveragedGP(X[None], Y[None])
    with pytest.raises(InputDataError, match="rows"):
        HypothesisAveragedGP(X, Y[:-1])
    bad = Y.clone()
    bad[0] = float("nan")
    with pytest.raises(InputDataError, match="finite"):
        HypothesisAveragedGP(X, bad)
    with pytest.raises(InputDataError, match="finite"):
        HypothesisAveragedGP(X.clone().fill_(float("inf")), Y)
    with pytest.raises(InputDataError, match="n >= 1"):
        HypothesisAveragedGP(X[:0], Y[:0])
    model = HypothesisAveragedGP(X, Y, hypotheses=4)
    with pytest.raises(InputDataError, match="batch_shape x q x 2"):
        model.posterior(torch.rand(3, 3, dtype=torch.float64))
    with pytest.raises(UnsupportedError, match="one output"):
        model.posterior(X, output_indices=[1])
    with pytest.raises(ValueError, match="short_share"):
        HypothesisAveragedGP(X, Y, short_share=2.0)
    with pytest.raises(InputDataError, match="H x 2 lengthscales"):
        HypothesisAveragedGP(X, Y, hypotheses=torch.ones(3, 3))
    with pytest.raises(InputDataError, match="positive"):
        HypothesisAveragedGP(X, Y, hypotheses=-torch.ones(3, 2))


def test_given_hypotheses_are_used_as_drawn_ones():
    X, Y = data()
    drawn = HypothesisAveragedGP(X, Y, hypotheses=6, seed=4)
    given = HypothesisAveragedGP(X, Y, hypotheses=drawn.hypotheses.clone())
    Xq = torch.rand(3, 2, dtype=torch.float64)
    torch.testing.assert_close(given.posterior(Xq).mean, drawn.posterior(Xq).mean)
    assert (
        drawn.hypotheses
        < HypothesisAveragedGP(X, Y, hypotheses=6, short_share=0.0, seed=4).hypotheses
    ).any()


def test_the_surrogate_proposes_a_point_in_the_cube():
    from surrogates.registry import AcquisitionOptions, make_surrogate

    X, Y = data(n=6)
    acq = AcquisitionOptions(num_restarts=2, raw_samples=16, mc_samples=16)
    surrogate = make_surrogate("hyp-gp", 2, 0, acq, hypotheses=8)
    x = surrogate.ask(X, Y.squeeze(-1))
    assert x.shape == (2,) and ((x >= 0) & (x <= 1)).all()
    with pytest.raises(ValueError, match="hypotheses must be a positive integer"):
        make_surrogate("hyp-gp", 2, 0, hypotheses=0)
    with pytest.raises(ValueError, match="unknown warp|warp"):
        make_surrogate("hyp-gp", 2, 0, warp="log")
