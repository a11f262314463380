"""AnchoredModel: a posterior conditioned exactly on the best observations."""

from __future__ import annotations

import pytest
import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.exceptions.errors import UnsupportedError
from botorch.models import SingleTaskGP
from botorch.models.model import Model
from botorch.posteriors.gpytorch import GPyTorchPosterior
from gpytorch.distributions import MultivariateNormal

from cmanp_bo import CMANPModel
from cmanp_bo.anchor import AnchoredModel
from surrogates.registry import AcquisitionOptions, make_surrogate
from tests.helpers import small_net


def _gp(X, Y, noise):
    """A GP with fixed hyperparameters and known noise variances (nothing fitted)."""
    gp = SingleTaskGP(X, Y, train_Yvar=noise, outcome_transform=None)
    gp.covar_module.lengthscale = 0.3
    return gp.eval()


def test_conditioning_a_gp_posterior_equals_adding_the_anchors_noise_free():
    # For a GP, conditioning its posterior on f(B) = y_B is the GP with B added at zero noise.
    torch.manual_seed(0)
    X1, XB, Z = (torch.rand(n, 2, dtype=torch.float64) for n in (8, 5, 6))
    f = lambda x: torch.sin(6 * x).sum(-1, keepdim=True)  # noqa: E731
    Y1, YB = f(X1) + 0.1 * torch.randn(8, 1, dtype=torch.float64), f(XB)
    base = _gp(X1, Y1, torch.full_like(Y1, 0.01))
    noise = torch.cat([torch.full_like(Y1, 0.01), torch.full_like(YB, 1e-6)])
    full = _gp(torch.cat([X1, XB]), torch.cat([Y1, YB]), noise)
    anchored = AnchoredModel(base, XB, YB, k=5)
    with torch.no_grad():
        a, b = anchored.posterior(Z), full.posterior(Z)
    torch.testing.assert_close(a.mean, b.mean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        a.distribution.covariance_matrix, b.distribution.covariance_matrix, atol=1e-4, rtol=1e-4
    )


def test_anchors_are_the_k_best_and_interpolated_by_a_cmanp():
    # the shipped network: an untrained one's covariance is near rank one (nothing to condition)
    torch.manual_seed(1)
    X = torch.rand(20, 2, dtype=torch.float64)
    Y = -(X - 0.3).pow(2).sum(-1, keepdim=True)
    base = CMANPModel(X, Y, checkpoint="default")
    model = AnchoredModel(base, X, Y, k=4)
    best = Y[:, 0].topk(4).indices
    assert set(map(tuple, model.anchor_X.tolist())) == set(map(tuple, X[best].tolist()))
    with torch.no_grad():
        at = model.posterior(X.unsqueeze(-2))  # one point at a time
        free = base.posterior(X.unsqueeze(-2))
    std, std_free = at.variance.sqrt().reshape(-1), free.variance.sqrt().reshape(-1)
    assert (std[best] < 1e-2 * std_free[best]).all()  # the network alone is far from exact
    torch.testing.assert_close(at.mean.reshape(-1)[best], Y[best, 0], atol=1e-4, rtol=0)
    others = torch.ones(20, dtype=torch.bool)
    others[best] = False
    assert (std[others] <= std_free[others] + 1e-9).all()  # conditioning never adds variance


def test_batched_joint_posterior_and_gradients_for_an_acquisition():
    torch.manual_seed(2)
    X = torch.rand(12, 3, dtype=torch.float64)
    Y = torch.randn(12, 1, dtype=torch.float64)
    model = AnchoredModel(CMANPModel(X, Y, checkpoint=small_net(3, dtype=torch.float64)), X, Y)
    Z = torch.rand(4, 2, 3, dtype=torch.float64, requires_grad=True)
    post = model.posterior(Z)
    assert post.mean.shape == (4, 2, 1)
    assert post.distribution.covariance_matrix.shape == (4, 2, 2)
    acqf = qLogNoisyExpectedImprovement(model, X_baseline=X)
    acqf(Z).sum().backward()
    assert torch.isfinite(Z.grad).all() and Z.grad.abs().sum() > 0


def test_bad_inputs_are_refused():
    X = torch.rand(6, 2, dtype=torch.float64)
    Y = torch.randn(6, 1, dtype=torch.float64)
    base = _gp(X, Y, torch.full_like(Y, 0.01))
    for bad in (0, True, 2.0):  # a bool is not a count
        with pytest.raises(ValueError, match="k must be"):
            AnchoredModel(base, X, Y, k=bad)
    with pytest.raises(ValueError, match="n x 1"):
        AnchoredModel(base, X, Y[:, 0])
    with pytest.raises(ValueError, match="finite"):
        AnchoredModel(base, X, Y.clone().fill_(float("nan")))
    model = AnchoredModel(base, X, Y, k=3)
    with pytest.raises(UnsupportedError, match="latent"):
        model.posterior(X[:2], observation_noise=True)
    with pytest.raises(UnsupportedError, match="wrap the updated"):
        model.condition_on_observations(X[:1], Y[:1])


def test_the_surrogate_option():
    for bad in (-1, True):
        with pytest.raises(ValueError, match="anchor"):
            make_surrogate("cmanp", 2, 0, anchor=bad)
    torch.manual_seed(3)
    X = torch.rand(8, 2, dtype=torch.float64)
    y = (X - 0.5).pow(2).sum(-1)
    options = AcquisitionOptions(num_restarts=2, raw_samples=16, mc_samples=16)
    s = make_surrogate("cmanp", 2, 0, options, checkpoint=small_net(dtype=torch.float64), anchor=3)
    x = s.ask(X, y)
    assert x.shape == (2,) and ((0 <= x) & (x <= 1)).all()


def test_tempered_model_scales_the_std_and_keeps_the_mean():
    from cmanp_bo.temper import TemperedModel

    torch.manual_seed(4)
    X = torch.rand(10, 2, dtype=torch.float64)
    Y = torch.randn(10, 1, dtype=torch.float64)
    base = _gp(X, Y, torch.full_like(Y, 0.01))
    model = TemperedModel(base, 0.5)
    Z = torch.rand(3, 4, 2, dtype=torch.float64)
    with torch.no_grad():
        a, b = model.posterior(Z), base.posterior(Z)
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(
        a.distribution.covariance_matrix, 0.25 * b.distribution.covariance_matrix
    )
    for bad in (0, -1.0, float("inf"), "0.5", True):
        with pytest.raises(ValueError, match="std_scale"):
            TemperedModel(base, bad)
        with pytest.raises(ValueError, match="std_scale"):
            make_surrogate("cmanp", 2, 0, std_scale=bad)
    with pytest.raises(UnsupportedError, match="latent"):
        model.posterior(Z, observation_noise=True)


class _ConstantModel(Model):
    """Predicts N(0, var) everywhere; records the data it was built on."""

    def __init__(self, X, Y, var):
        super().__init__()
        self.n, self.var = X.shape[0], var

    @property
    def num_outputs(self):
        return 1

    def posterior(self, X, observation_noise=False, **kwargs):
        mean = torch.zeros(X.shape[:-1], dtype=X.dtype)
        cov = torch.diag_embed(torch.full(X.shape[:-1], self.var, dtype=X.dtype))
        return GPyTorchPosterior(MultivariateNormal(mean, cov))


def test_heldout_std_scale_is_the_rms_z_of_the_last_points():
    from cmanp_bo.temper import heldout_std_scale

    built = []

    def build(X, Y):
        built.append(X.shape[0])
        return _ConstantModel(X, Y, var=4.0)

    X = torch.rand(20, 2, dtype=torch.float64)
    Y = torch.arange(20, dtype=torch.float64)[:, None] / 10
    # m = min(8, 20 // 4) = 5 held out: the model sees 15 points and predicts the last 5
    scale = heldout_std_scale(build, X, Y, holdout=8, bounds=(0.01, 10.0))
    assert built == [15]
    assert scale == pytest.approx((Y[-5:, 0] / 2).pow(2).mean().sqrt().item())
    assert heldout_std_scale(build, X, Y, holdout=8, bounds=(0.01, 0.5)) == 0.5  # clipped
    assert heldout_std_scale(build, X[:3], Y[:3], holdout=8) == 1.0  # too few points
    with pytest.raises(ValueError, match="n x 1"):
        heldout_std_scale(build, X, Y[:, 0], holdout=8)
    for bad in (-2, True):
        with pytest.raises(ValueError, match="calibrate"):
            make_surrogate("cmanp", 2, 0, calibrate=bad)
