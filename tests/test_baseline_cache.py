"""``CMANPModel(cache_baseline=True)``: an acquisition's baseline decoded and factorised once."""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.posteriors.gpytorch import GPyTorchPosterior
from botorch.sampling import SobolQMCNormalSampler

from cmanp_bo import CMANPModel
from cmanp_bo.botorch_model import PrefixRootPosterior
from tests.helpers import small_net


def _data(n: int = 24, d: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    Y = torch.sin(5 * X).sum(-1, keepdim=True) + 0.05 * torch.randn(n, 1, generator=g).double()
    return X, Y


def _model(cache: bool = True, **kwargs) -> CMANPModel:
    X, Y = _data()
    return CMANPModel(X, Y, checkpoint=small_net(dtype=torch.float64), cache_baseline=cache)


def _acqf(model: CMANPModel, baseline: torch.Tensor) -> qLogNoisyExpectedImprovement:
    return qLogNoisyExpectedImprovement(
        model,
        X_baseline=baseline,
        sampler=SobolQMCNormalSampler(torch.Size([64]), seed=3),
        prune_baseline=False,
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_acquisition_and_gradients_equal_the_full_computation(seed):
    X, _ = _data()
    g = torch.Generator().manual_seed(seed)
    cand = torch.rand(5, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)  # q = 2
    got = _acqf(_model(), X)(cand)
    (grad,) = torch.autograd.grad(got.sum(), cand)
    want = _acqf(_model(cache=False), X)(cand)
    (grad_want,) = torch.autograd.grad(want.sum(), cand)
    # each element alone (a batch of one: never the cached path)
    alone = torch.cat([_acqf(_model(cache=False), X)(cand[i : i + 1]) for i in range(5)])
    (grad_alone,) = torch.autograd.grad(alone.sum(), cand)
    # Blockwise and whole Cholesky factors differ by rounding, which log-EI far below the
    # incumbent (values near -35 here) magnifies: over 40 seeds the three computations differed
    # by up to 1e-6 (relative) in value and 2e-5 (relative norm) in the gradient, the uncached
    # batch and the uncached single elements included. The tolerances leave about a 10x margin.
    for a, b in ((got, want), (got, alone)):
        assert torch.allclose(a, b, atol=0, rtol=1e-5)
    assert _rel(grad, grad_want) < 2e-4 and _rel(grad, grad_alone) < 2e-4
    assert _rel(grad_want, grad_alone) < 2e-4


def test_only_a_shared_prefix_of_observed_inputs_is_taken_as_constant():
    X, _ = _data()
    model = _model()
    cand = torch.rand(3, 1, 2, dtype=torch.float64)
    full = torch.cat([X.expand(3, *X.shape), cand], dim=-2)
    assert isinstance(model.posterior(full), PrefixRootPosterior)
    not_observed = torch.cat([(X + 1e-3).expand(3, *X.shape), cand], dim=-2)
    cases = {
        "prefix not observed": (model, not_observed, {}),
        "batch of one, nothing cached": (_model(), full[:1], {}),
        "batch of one, not the cached prefix": (model, full[:1, 1:], {}),
        "batch of one, only the cached prefix": (model, full[:1, : X.shape[0]], {}),
        "observation noise": (model, full, {"observation_noise": True}),
        "independent": (model, full, {"independent": True}),
        "every column shared": (model, X.expand(3, *X.shape), {}),
        "cache off": (_model(cache=False), full, {}),
    }
    for name, (m, Z, kwargs) in cases.items():
        post = m.posterior(Z, **kwargs)
        assert type(post) is GPyTorchPosterior, name


def test_a_batch_of_one_that_begins_with_the_cached_prefix_uses_it():
    """An optimiser's last restart alone (``1 x (k + q) x d``) gets the cached factor, and the
    same values and gradients as without the cache."""
    X, _ = _data()
    model = _model()
    _acqf(model, X)(torch.rand(3, 1, 2, dtype=torch.float64))  # fills the cache
    cand = torch.rand(1, 2, 2, dtype=torch.float64, requires_grad=True)
    full = torch.cat([X.expand(1, *X.shape), cand], dim=-2)
    assert isinstance(model.posterior(full), PrefixRootPosterior)
    got = _acqf(model, X)(cand)
    (grad,) = torch.autograd.grad(got.sum(), cand)
    want = _acqf(_model(cache=False), X)(cand)
    (grad_want,) = torch.autograd.grad(want.sum(), cand)
    assert torch.allclose(got, want, atol=0, rtol=1e-5)
    assert _rel(grad, grad_want) < 2e-4


def test_shared_columns_that_are_not_observed_keep_their_gradients():
    X, _ = _data()
    model = _model()
    pending = torch.rand(4, 2, dtype=torch.float64, requires_grad=True)
    cand = torch.rand(3, 1, 2, dtype=torch.float64)
    post = model.posterior(torch.cat([pending.expand(3, 4, 2), cand], dim=-2))
    (grad,) = torch.autograd.grad(post.mean.sum() + post.variance.sum(), pending)
    assert grad.abs().sum() > 0


def test_the_prefix_is_decoded_once_per_model():
    X, _ = _data()
    model = _model()
    decoded: list[int] = []
    net = model.network
    original = net._decode_points

    def counting(state, memory, x):
        decoded.append(x.shape[-2] * x.shape[:-2].numel())
        return original(state, memory, x)

    net._decode_points = counting
    acqf = _acqf(model, X)
    for _ in range(3):
        acqf(torch.rand(4, 1, 2, dtype=torch.float64))
    # the 24 baseline points once, then the 4 candidates per call
    assert decoded == [24, 4, 4, 4]
    # a new model (new context) starts afresh
    new = model.condition_on_observations(X[:2] * 0.5, torch.zeros(2, 1, dtype=torch.float64))
    decoded.clear()
    _acqf(new, X)(torch.rand(4, 1, 2, dtype=torch.float64))
    assert decoded == [24, 4]
    net._decode_points = original


def test_a_new_model_does_not_reuse_the_old_context():
    X, _ = _data()
    cand = torch.rand(3, 1, 2, dtype=torch.float64)
    full = torch.cat([X.expand(3, *X.shape), cand], dim=-2)
    model = _model()
    model.posterior(full)  # fills the cache
    x_new, y_new = torch.rand(3, 2, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    new = model.condition_on_observations(x_new, y_new)
    ref = _model(cache=False).condition_on_observations(x_new, y_new)
    got, want = new.posterior(full), ref.posterior(full)
    assert isinstance(got, PrefixRootPosterior)
    assert torch.allclose(got.mean, want.mean, atol=1e-10)
    assert torch.allclose(got.distribution.covariance_matrix, want.distribution.covariance_matrix)


@pytest.mark.parametrize("shared_base_samples", [True, False])
def test_blockwise_samples_equal_those_of_the_full_cholesky_factor(shared_base_samples):
    X, _ = _data()
    model = _model()
    cand = torch.rand(3, 2, 2, dtype=torch.float64)
    post = model.posterior(torch.cat([X.expand(3, *X.shape), cand], dim=-2))
    assert isinstance(post, PrefixRootPosterior)
    shape = (7, 1 if shared_base_samples else 3, X.shape[0] + 2)
    base = torch.randn(*shape, dtype=torch.float64).expand(7, 3, X.shape[0] + 2)
    got = post.rsample_from_base_samples(torch.Size([7]), base)
    dense = GPyTorchPosterior(post.distribution).rsample_from_base_samples(torch.Size([7]), base)
    assert got.shape == dense.shape == (7, 3, X.shape[0] + 2, 1)
    assert torch.allclose(got, dense, atol=1e-8)
    with pytest.raises(RuntimeError, match="sample_shape"):
        post.rsample_from_base_samples(torch.Size([5]), base)


def test_the_prefix_samples_are_reused_across_calls_with_the_same_base_samples(monkeypatch):
    import cmanp_bo.botorch_model as bm

    X, _ = _data()
    model = _model()
    products: list[tuple] = []
    original = bm._rows_times

    def counting(A, M):
        products.append(tuple(A.shape))
        return original(A, M)

    monkeypatch.setattr(bm, "_rows_times", counting)
    full = lambda cand: torch.cat([X.expand(3, *X.shape), cand], dim=-2)  # noqa: E731
    base = torch.randn(7, 1, X.shape[0] + 1, dtype=torch.float64).expand(7, 3, -1)
    draws = []
    for i in range(3):
        cand = torch.rand(3, 1, 2, dtype=torch.float64)
        post = model.posterior(full(cand))
        got = post.rsample_from_base_samples(torch.Size([7]), base if i < 2 else base + 1)
        dense = GPyTorchPosterior(post.distribution).rsample_from_base_samples(
            torch.Size([7]), base if i < 2 else base + 1
        )
        assert torch.allclose(got, dense, atol=1e-8)  # a reused prefix is still exact
        draws.append(got[..., : X.shape[0], 0])
    # the k x k product: once for the first base samples, once more for new ones
    assert products == [(7, 1, X.shape[0])] * 2
    assert torch.equal(draws[0], draws[1]) and not torch.allclose(draws[0], draws[2])
    # a new model (another prefix factor) starts afresh
    new = model.condition_on_observations(X[:1] * 0.5, torch.zeros(1, 1, dtype=torch.float64))
    new.posterior(full(cand)).rsample_from_base_samples(torch.Size([7]), base)
    assert len(products) == 3


def test_prefix_samples_are_shared_only_for_a_constant_prefix():
    X, _ = _data()
    model = _model()
    cand = torch.rand(3, 1, 2, dtype=torch.float64)
    post = model.posterior(torch.cat([X.expand(3, *X.shape), cand], dim=-2))
    k, root = X.shape[0], post.prefix_root
    loc = post.distribution.loc.detach().requires_grad_()
    mvn = type(post.distribution)(loc, post.distribution.lazy_covariance_matrix)
    with pytest.raises(ValueError, match="both"):
        PrefixRootPosterior(mvn, root, prefix_samples={})
    with pytest.raises(ValueError, match="constants"):
        PrefixRootPosterior(mvn, root, prefix_samples={}, prefix_loc=loc[0, :k])
    # a prefix mean with a gradient (no sharing): the gradient reaches it
    graded = PrefixRootPosterior(mvn, root)
    base = torch.randn(5, 1, k + 1, dtype=torch.float64).expand(5, 3, -1)
    graded.rsample_from_base_samples(torch.Size([5]), base).sum().backward()
    # every sample of every batch element moves with the prefix mean (the shared-sample path
    # reads it from the first batch element, where the prefix is the same in all)
    total = loc.grad[..., :k].sum(0)
    assert torch.equal(total, torch.full_like(total, 15.0))
