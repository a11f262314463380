"""CMANPModel as a BoTorch model: posterior, conditioning, fantasies, transforms, errors, loops."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from botorch.acquisition import (
    LogExpectedImprovement,
    PosteriorMean,
    UpperConfidenceBound,
    qExpectedImprovement,
    qKnowledgeGradient,
    qLogExpectedImprovement,
    qLogNoisyExpectedImprovement,
    qUpperConfidenceBound,
)
from botorch.acquisition.analytic import LogProbabilityOfImprovement
from botorch.acquisition.joint_entropy_search import qJointEntropySearch
from botorch.acquisition.max_value_entropy_search import qMaxValueEntropy
from botorch.acquisition.objective import ScalarizedPosteriorTransform
from botorch.acquisition.utils import get_optimal_samples
from botorch.exceptions.errors import InputDataError, UnsupportedError
from botorch.exceptions.warnings import InputDataWarning
from botorch.fit import fit_gpytorch_mll
from botorch.models.transforms.input import Normalize
from botorch.models.transforms.outcome import Log, Standardize
from botorch.optim import optimize_acqf
from botorch.posteriors.gpytorch import GPyTorchPosterior
from botorch.sampling import SobolQMCNormalSampler
from botorch.test_functions import Branin
from botorch.utils.datasets import SupervisedDataset
from botorch.utils.sampling import draw_sobol_samples
from gpytorch.distributions import MultivariateNormal
from gpytorch.mlls import ExactMarginalLogLikelihood
from helpers import small_net

import cmanp_bo.botorch_model as bm
from cmanp_bo import CMANPModel, pretrained
from cmanp_bo.botorch_model import OutcomeFrame, sample_optima
from cmanp_bo.checkpoint import save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:no pretrained BO checkpoint:RuntimeWarning")

DTYPE = torch.float64
ATOL = 1e-10  # condition_on_observations vs a fresh model, float64 (as the core issue)


def data(n: int, d: int, seed: int = 0, batch: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(*batch, n, d, generator=g, dtype=DTYPE)
    Y = torch.sin(6 * X).sum(-1, keepdim=True) + 0.05 * torch.randn(
        *batch, n, 1, generator=g, dtype=DTYPE
    )
    return X, Y


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def assert_same_posterior(a: GPyTorchPosterior, b: GPyTorchPosterior, atol: float = ATOL) -> None:
    assert a.mean.shape == b.mean.shape
    torch.testing.assert_close(a.mean, b.mean, atol=atol, rtol=0)
    torch.testing.assert_close(
        a.distribution.covariance_matrix, b.distribution.covariance_matrix, atol=atol, rtol=0
    )


@pytest.fixture
def model() -> CMANPModel:
    X, Y = data(12, 2)
    return CMANPModel(X, Y, checkpoint=small_net())


# ----------------------------------------------------------------------------------- posterior
@pytest.mark.parametrize(
    "x_shape, model_batch, out_batch",
    [
        ((5, 2), (), ()),
        ((4, 3, 2), (), (4,)),
        ((2, 4, 3, 2), (), (2, 4)),
        ((4, 3, 2), (3, 1), (3, 4)),  # a fantasy-batched model broadcasts with the X batch
        ((1, 3, 2), (3, 4), (3, 4)),
    ],
)
def test_posterior_shapes_and_dtype(x_shape, model_batch, out_batch):
    X, Y = data(10, 2, batch=model_batch)
    model = CMANPModel(X, Y, checkpoint=small_net())
    post = model.posterior(rand(*x_shape))
    q = x_shape[-2]
    assert isinstance(post, GPyTorchPosterior)
    assert isinstance(post.distribution, MultivariateNormal)
    assert post.mean.shape == (*out_batch, q, 1)
    assert post.distribution.covariance_matrix.shape == (*out_batch, q, q)
    assert post.mean.dtype == DTYPE and post.variance.dtype == DTYPE
    assert model.batch_shape == model_batch and model.num_outputs == 1


def test_joint_covariance_is_joint_and_consistent(model):
    X = rand(4, 5, 2)
    post = model.posterior(X)
    cov = post.distribution.covariance_matrix
    offdiag = cov - torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))
    assert offdiag.abs().max() > 1e-6  # not independent marginals
    # Marginalisation: any sub-batch of the q points has the same moments.
    sub = model.posterior(X[:, [3, 1]])
    torch.testing.assert_close(sub.distribution.covariance_matrix, cov[:, [3, 1]][:, :, [3, 1]])
    torch.testing.assert_close(sub.mean, post.mean[:, [3, 1]])
    # t-batches are independent: a point's value does not depend on other t-batches.
    one = model.posterior(X[2:3])
    torch.testing.assert_close(one.distribution.covariance_matrix, cov[2:3])


def test_mean_and_variance_need_no_factorisation(model, monkeypatch):
    """The posterior is lazy, as a GPyTorch model's: its mean and variance (all Ax's predictions
    read, 4096 points a call) come without a Cholesky factor; samples use the exact one."""
    X = rand(40, 2)
    post = model.posterior(X)
    assert post.distribution.islazy
    cov = post.distribution.covariance_matrix
    base = torch.randn(3, *post.base_sample_shape, generator=torch.Generator().manual_seed(0))
    base = base.to(DTYPE)
    want = post.mean + torch.linalg.cholesky(cov) @ base.reshape(3, 40, 1)
    torch.testing.assert_close(post.rsample_from_base_samples(torch.Size([3]), base), want)

    def refuse(*args, **kwargs):
        raise AssertionError("a Cholesky factor was computed")

    monkeypatch.setattr(torch.linalg, "cholesky", refuse)
    monkeypatch.setattr(torch.linalg, "cholesky_ex", refuse)
    fresh = model.posterior(X)
    torch.testing.assert_close(fresh.variance.squeeze(-1), torch.diagonal(cov))
    torch.testing.assert_close(fresh.mean, post.mean)


def test_identical_points_are_perfectly_correlated(model):
    x = rand(6, 1, 2)
    cov = model.posterior(torch.cat([x, x], dim=-2)).distribution.covariance_matrix
    corr = cov[..., 0, 1] / (cov[..., 0, 0] * cov[..., 1, 1]).sqrt()
    assert (corr > 1 - 1e-8).all()
    noisy = model.posterior(torch.cat([x, x], dim=-2), observation_noise=True)
    ncov = noisy.distribution.covariance_matrix
    assert (ncov[..., 0, 0] > cov[..., 0, 0]).all()
    torch.testing.assert_close(ncov[..., 0, 1], cov[..., 0, 1])  # noise is diagonal only


def test_no_batch_collapse():
    X, Y = data(15, 2)
    model = CMANPModel(X, Y)
    acqf = qExpectedImprovement(
        model, best_f=Y.max() - 0.5, sampler=SobolQMCNormalSampler(torch.Size([256]), seed=0)
    )
    x = rand(20, 1, 2, seed=3)
    single, double = acqf(x), acqf(torch.cat([x, x], dim=-2))
    # a confident posterior far below best_f gives an MC estimate of exactly 0 at some points
    assert (single >= 0).all() and (single > 0).sum() >= 10
    # a repeated point adds nothing, up to the MC error (relatively large where EI is tiny)
    assert (double <= 1.1 * single + 0.01 * single.max()).all()


def test_nearby_points_correlated_distant_not_with_trained_checkpoint():
    if pretrained.DEFAULT_BO not in pretrained.available():
        pytest.skip("no trained BO checkpoint shipped yet (pretrained-surrogates issue)")
    net = pretrained.load(pretrained.DEFAULT_BO)
    if net.cfg.dim_x < 2 or not net.cfg.joint_head:
        pytest.skip("the shipped BO checkpoint has no 2-D joint head")
    X = draw_sobol_samples(torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=DTYPE), 32, 1, seed=0)
    X = X.squeeze(-2)
    Y = torch.sin(12 * X).sum(-1, keepdim=True)  # short lengthscale in context
    model = CMANPModel(X, Y)
    pts = torch.tensor([[0.30, 0.30], [0.305, 0.30], [0.95, 0.95]], dtype=DTYPE)
    samples = model.posterior(pts).rsample(torch.Size([4096])).squeeze(-1)
    corr = torch.corrcoef(samples.T)
    assert corr[0, 1] > 0.9
    assert corr[0, 2].abs() < 0.3


def test_trained_joint_head_correlates_nearby_points_only():
    """With the trained 1-D CMANP-AND checkpoint: joint samples of two nearby points are strongly
    correlated, those of two distant points nearly uncorrelated."""
    X = torch.rand(12, 1, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    model = CMANPModel(X, torch.sin(6 * X), checkpoint="gp1d-rbf-cmanp-and")
    pts = torch.tensor([[0.50], [0.505], [0.05], [0.95]], dtype=DTYPE)
    samples = model.posterior(pts).rsample(torch.Size([4096])).squeeze(-1)
    corr = torch.corrcoef(samples.T)
    assert corr[0, 1] > 0.9
    assert corr[2, 3].abs() < 0.3 and corr[0, 2].abs() < 0.3


def test_observation_noise_and_posterior_transform(model):
    X = rand(3, 2, 2)
    base = model.posterior(X)
    noise = torch.full((3, 2, 1), 0.25, dtype=DTYPE)
    given = model.posterior(X, observation_noise=noise)
    torch.testing.assert_close(given.variance, base.variance + 0.25)
    inferred = model.posterior(X, observation_noise=True)
    assert (inferred.variance > base.variance).all()
    neg = ScalarizedPosteriorTransform(weights=torch.tensor([-1.0], dtype=DTYPE))
    torch.testing.assert_close(model.posterior(X, posterior_transform=neg).mean, -base.mean)
    with pytest.raises(UnsupportedError, match="one output"):
        model.posterior(X, output_indices=[1])


def test_deterministic_and_differentiable(model):
    X = rand(4, 3, 2).requires_grad_(True)
    a, b = model.posterior(X), model.posterior(X)
    assert torch.equal(a.mean, b.mean)
    assert torch.equal(a.distribution.covariance_matrix, b.distribution.covariance_matrix)
    again = CMANPModel(*data(12, 2), checkpoint=small_net())
    assert torch.equal(again.posterior(X).mean, a.mean)
    (a.mean.sum() + a.variance.sum()).backward()
    assert X.grad is not None and torch.isfinite(X.grad).all() and X.grad.abs().sum() > 0


def test_large_q_is_assembled_exactly_from_blocks(model, monkeypatch):
    X = rand(11, 2)
    full = model.posterior(X)
    monkeypatch.setattr(bm, "JOINT_BLOCK", 4)
    assert_same_posterior(model.posterior(X), full, atol=1e-12)


def test_float32_inputs_come_back_float32(model):
    post = model.posterior(rand(3, 2).float())
    assert post.mean.dtype == torch.float32


# ----------------------------------------------------------------------------------- updates
def test_condition_equals_fresh_model_in_same_frame(model, monkeypatch):
    X0, Y0 = data(12, 2)
    Xn, Yn = data(4, 2, seed=5)
    before = model.posterior(rand(3, 4, 2))

    def no_encode(*args, **kwargs):
        raise AssertionError("condition_on_observations re-encoded the old context")

    monkeypatch.setattr(model.network, "encode", no_encode)
    new = model.condition_on_observations(Xn, Yn)
    monkeypatch.undo()
    assert new.num_points == 16 and model.num_points == 12
    fresh = CMANPModel(
        torch.cat([X0, Xn]),
        torch.cat([Y0, Yn]),
        checkpoint=small_net(),
        outcome_frame=model.outcome_frame,
    )
    Xt = rand(3, 4, 2)
    assert_same_posterior(new.posterior(Xt), fresh.posterior(Xt))
    assert_same_posterior(model.posterior(rand(3, 4, 2)), before, atol=0)  # old one unchanged


def test_condition_with_fantasy_batch_dims(model):
    X0, Y0 = data(12, 2)
    Xn = rand(3, 2, seed=7)
    Yn = rand(5, 3, 1, seed=8)  # 5 fantasies
    new = model.condition_on_observations(Xn, Yn)
    assert new.batch_shape == (5,)
    assert new.outcome_frame is model.outcome_frame  # fantasies never re-base
    Xt = rand(2, 2)
    post = new.posterior(Xt)
    assert post.mean.shape == (5, 2, 1)
    for s in (0, 4):
        fresh = CMANPModel(
            torch.cat([X0, Xn]),
            torch.cat([Y0, Yn[s]]),
            checkpoint=small_net(),
            outcome_frame=model.outcome_frame,
        )
        ref = fresh.posterior(Xt)
        torch.testing.assert_close(post.mean[s], ref.mean, atol=ATOL, rtol=0)
        torch.testing.assert_close(
            post.distribution.covariance_matrix[s],
            ref.distribution.covariance_matrix,
            atol=ATOL,
            rtol=0,
        )


def test_fantasize_shapes(model):
    X = rand(4, 2, 2)  # b=4 t-batches of 2 points
    fm = model.fantasize(X, SobolQMCNormalSampler(torch.Size([8]), seed=0))
    assert fm.batch_shape == (8, 4)
    assert fm.num_points == model.num_points + 2
    assert fm.posterior(rand(4, 3, 2)).mean.shape == (8, 4, 3, 1)
    empty = model.fantasize(rand(4, 0, 2), SobolQMCNormalSampler(torch.Size([8]), seed=0))
    assert empty.batch_shape == (8, 4) and empty.num_points == model.num_points


def test_rebase_when_count_doubles_equals_fresh_model():
    X0, Y0 = data(8, 2)
    model = CMANPModel(X0, Y0, checkpoint=small_net())
    Xs, Ys = [X0], [Y0]
    for i in range(8):
        x, y = data(1, 2, seed=100 + i)
        y = 3.0 * y + 2.0  # shift the outcome scale so the frame matters
        model = model.condition_on_observations(x, y)
        Xs.append(x)
        Ys.append(y)
        if model.num_points < 16:
            assert model.outcome_frame.num_points == 8
    assert model.outcome_frame.num_points == 16  # re-based at 2 x 8
    fresh = CMANPModel(torch.cat(Xs), torch.cat(Ys), checkpoint=small_net())  # its own frame
    Xt = rand(3, 4, 2)
    assert_same_posterior(model.posterior(Xt), fresh.posterior(Xt))
    never = CMANPModel(X0, Y0, checkpoint=small_net(), rebase_factor=None)
    never = never.condition_on_observations(torch.cat(Xs[1:]), torch.cat(Ys[1:]))
    assert never.outcome_frame.num_points == 8


def test_outcome_frame_standardises():
    X, Y = data(12, 2)
    frame = OutcomeFrame.from_data(100 + 10 * Y)
    z = frame.apply(100 + 10 * Y)
    torch.testing.assert_close(z.mean(), torch.tensor(0.0, dtype=DTYPE), atol=1e-12, rtol=0)
    torch.testing.assert_close(z.std(), torch.tensor(1.0, dtype=DTYPE))
    assert OutcomeFrame.from_data(torch.ones(3, 1, dtype=DTYPE)).std == 1  # constant outcome


# ----------------------------------------------------------------------------------- transforms
def test_transforms_behave_as_in_singletaskgp():
    X, Y = data(15, 2)
    lower = torch.tensor([-5.0, 10.0], dtype=DTYPE)
    width = torch.tensor([15.0, 3.0], dtype=DTYPE)
    X_raw, Y_raw = lower + width * X, 50.0 + 7.0 * Y
    model = CMANPModel(
        X_raw,
        Y_raw,
        input_transform=Normalize(d=2),
        outcome_transform=Standardize(m=1),
        checkpoint=small_net(),
    )
    # Reference: the same scaling done by hand (learned bounds = data min/max, Standardize).
    X_ref = (X_raw - X_raw.min(0).values) / (X_raw.max(0).values - X_raw.min(0).values)
    mu, sd = Y_raw.mean(), Y_raw.std()
    ref = CMANPModel(X_ref, (Y_raw - mu) / sd, checkpoint=small_net())
    Xt = rand(3, 4, 2)
    Xt_raw = X_raw.min(0).values + (X_raw.max(0).values - X_raw.min(0).values) * Xt
    post, rpost = model.posterior(Xt_raw), ref.posterior(Xt)
    torch.testing.assert_close(post.mean, mu + sd * rpost.mean)
    torch.testing.assert_close(
        post.distribution.covariance_matrix, sd**2 * rpost.distribution.covariance_matrix
    )
    # conditioning uses the frozen transforms
    xn, yn = X_raw[:2] + 0.1, Y_raw[:2] + 1.0
    new = model.condition_on_observations(xn, yn)
    fresh = CMANPModel(
        torch.cat(
            [X_ref, (xn - X_raw.min(0).values) / (X_raw.max(0).values - X_raw.min(0).values)]
        ),
        torch.cat([(Y_raw - mu) / sd, (yn - mu) / sd]),
        checkpoint=small_net(),
        outcome_frame=ref.outcome_frame,
    )
    torch.testing.assert_close(new.posterior(Xt_raw).mean, mu + sd * fresh.posterior(Xt).mean)


def test_state_dict_reload_across_data_sizes():
    # Ax rebuilds the model on more data, then loads the previous state dict.
    small = CMANPModel(*data(6, 2), input_transform=Normalize(d=2), checkpoint=small_net())
    big = CMANPModel(*data(20, 2), input_transform=Normalize(d=2), checkpoint=small_net())
    before = big.posterior(rand(3, 2)).mean
    big.load_state_dict(small.state_dict())  # must not fail on context size
    assert big.num_points == 20 and torch.isfinite(big.posterior(rand(3, 2)).mean).all()
    assert before.shape == (3, 1)


def test_fit_gpytorch_mll_is_a_noop(model):
    X = rand(3, 2)
    before = model.posterior(X).mean
    mll = fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    assert not mll.training
    torch.testing.assert_close(model.posterior(X).mean, before, atol=0, rtol=0)


def test_construct_inputs_and_subset_output(model):
    X, Y = data(5, 2)
    inputs = CMANPModel.construct_inputs(
        SupervisedDataset(X, Y, feature_names=["a", "b"], outcome_names=["y"]),
        checkpoint="default",
        categorical_features=[],
    )
    assert set(inputs) == {"train_X", "train_Y", "checkpoint"}
    assert model.subset_output([0]) is model
    with pytest.raises(NotImplementedError):
        model.subset_output([1])


# ----------------------------------------------------------------------------------- checkpoints
def test_checkpoint_options(tmp_path):
    X, Y = data(6, 2)
    net = small_net()
    model = CMANPModel(X, Y, checkpoint=net)
    assert net.model_latents.dtype == torch.float32 and net.model_latents.requires_grad
    save_checkpoint(net, tmp_path / "net.pt")
    from_path = CMANPModel(X, Y, checkpoint=str(tmp_path / "net.pt"))
    assert_same_posterior(
        from_path.posterior(rand(2, 3, 2)), model.posterior(rand(2, 3, 2)), atol=1e-12
    )
    with pytest.raises(UnsupportedError, match="unknown checkpoint"):
        CMANPModel(X, Y, checkpoint="no-such-checkpoint")
    # fewer input dims than the network: padded with a constant input
    X1 = X[:, :1]
    assert CMANPModel(X1, Y, checkpoint=net).posterior(rand(4, 1)).mean.shape == (4, 1)


def test_network_without_joint_head_refuses_silent_independence():
    X, Y = data(8, 2)
    model = CMANPModel(X, Y, checkpoint=small_net(joint_head=False))
    assert model.posterior(rand(5, 1, 2)).mean.shape == (5, 1, 1)
    with pytest.raises(UnsupportedError, match="joint head"):
        model.posterior(rand(5, 2, 2))
    diag = model.posterior(rand(5, 2, 2), independent=True).distribution.covariance_matrix
    assert torch.equal(diag, torch.diag_embed(torch.diagonal(diag, dim1=-2, dim2=-1)))


def test_nn_package_stays_free_of_botorch():
    code = "import sys, cmanp_bo.nn, cmanp_bo; assert 'botorch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------- errors
NAN_X = data(6, 2)[0].index_fill(0, torch.tensor([2]), float("nan"))
INF_Y = data(6, 2)[1].index_fill(0, torch.tensor([1]), float("inf"))


@pytest.mark.parametrize(
    "X, Y, error, match",
    [
        (NAN_X, data(6, 2)[1], InputDataError, "NaN or inf"),
        (data(6, 2)[0], INF_Y, InputDataError, "NaN or inf"),
        (data(6, 2)[0], data(6, 2)[1].squeeze(-1), InputDataError, r"unsqueeze\(-1\)"),
        (data(6, 2)[0], data(6, 2)[1].expand(6, 2), UnsupportedError, "ModelList"),
        (data(6, 2)[0], data(5, 2)[1], InputDataError, "holds 6 points"),
        (data(6, 3)[0], data(6, 3)[1], UnsupportedError, "at most 2"),
        (data(0, 2)[0], data(0, 2)[1], InputDataError, "at least one"),
    ],
)
def test_bad_training_data(X, Y, error, match):
    tf_in, tf_out = Normalize(d=X.shape[-1]), Standardize(m=1)
    before = {k: v.clone() for k, v in tf_in.state_dict().items()}
    with pytest.raises(error, match=match):
        CMANPModel(X, Y, input_transform=tf_in, outcome_transform=tf_out, checkpoint=small_net())
    for k, v in tf_in.state_dict().items():
        assert torch.equal(v, before[k])


def test_failed_outcome_transform_leaves_transforms_unchanged():
    X, Y = data(6, 2)
    tf_in = Normalize(d=2)
    before = {k: v.clone() for k, v in tf_in.state_dict().items()}
    with pytest.raises(InputDataError, match="after the outcome transform"):
        CMANPModel(
            X, Y - 10, input_transform=tf_in, outcome_transform=Log(), checkpoint=small_net()
        )
    for k, v in tf_in.state_dict().items():
        assert torch.equal(v, before[k])
    assert tf_in.training


def test_bad_conditioning_and_query_data(model):
    state = model.context_state
    with pytest.raises(InputDataError, match="NaN or inf"):
        model.condition_on_observations(
            rand(2, 2), torch.tensor([[1.0], [float("nan")]], dtype=DTYPE)
        )
    with pytest.raises(InputDataError, match="d=2"):
        model.condition_on_observations(rand(2, 3), rand(2, 1))
    with pytest.raises(InputDataError, match="do not broadcast"):
        model.condition_on_observations(rand(3, 2, 2), rand(4, 2, 1))
    assert model.context_state is state and model.num_points == 12
    with pytest.raises(InputDataError, match="d=2"):
        model.posterior(rand(3, 3))
    with pytest.raises(InputDataError, match="unsqueeze"):
        model.posterior(rand(2))
    with pytest.raises(InputDataError, match="NaN"):
        model.posterior(torch.full((2, 2), float("nan"), dtype=DTYPE))
    fantasy = model.condition_on_observations(rand(1, 2), rand(3, 1, 1))  # batch (3,)
    with pytest.raises(InputDataError, match="does not broadcast"):
        fantasy.posterior(rand(2, 4, 2))


def test_warnings_for_scaling_and_known_noise():
    X, Y = data(6, 2)
    with pytest.warns(InputDataWarning, match="unit cube"):
        CMANPModel(10 * X, Y, checkpoint=small_net())
    with pytest.warns(InputDataWarning, match="ignores train_Yvar"):
        CMANPModel(X, Y, train_Yvar=torch.full_like(Y, 0.01), checkpoint=small_net())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", InputDataWarning)
        CMANPModel(X, Y, checkpoint=small_net())  # in the unit cube: silent


# ----------------------------------------------------------------------------------- acquisition
def acquisition_cases(model, X, Y, d):
    cases = []
    neg = ScalarizedPosteriorTransform(weights=torch.tensor([-1.0], dtype=DTYPE))
    for pt in (None, neg):
        best = Y.max() if pt is None else (-Y).max()
        cases += [
            ("LogEI", LogExpectedImprovement(model, best_f=best, posterior_transform=pt), 1),
            ("UCB", UpperConfidenceBound(model, beta=2.0, posterior_transform=pt), 1),
            ("PosteriorMean", PosteriorMean(model, posterior_transform=pt), 1),
            ("LogPI", LogProbabilityOfImprovement(model, best_f=best, posterior_transform=pt), 1),
        ]
        sampler = SobolQMCNormalSampler(torch.Size([32]), seed=0)
        for q in (1, 2, 3):
            cases += [
                ("qEI", qExpectedImprovement(model, best, sampler, posterior_transform=pt), q),
                (
                    "qLogEI",
                    qLogExpectedImprovement(model, best, sampler, posterior_transform=pt),
                    q,
                ),
                ("qUCB", qUpperConfidenceBound(model, 2.0, sampler, posterior_transform=pt), q),
                (
                    "qLogNEI",
                    qLogNoisyExpectedImprovement(model, X, sampler, posterior_transform=pt),
                    q,
                ),
            ]
    cases.append(("qKG", qKnowledgeGradient(model, num_fantasies=8), 1))
    cases.append(("qMES", qMaxValueEntropy(model, candidate_set=rand(64, d, seed=4)), 1))
    bounds = torch.stack([torch.zeros(d, dtype=DTYPE), torch.ones(d, dtype=DTYPE)])
    optimal_inputs, optimal_outputs = sample_optima(model, bounds, num_optima=4, seed=0)
    cases.append(("qJES", qJointEntropySearch(model, optimal_inputs, optimal_outputs), 1))
    return cases


@pytest.mark.parametrize("d", [2, 6])
def test_acquisition_matrix(d):
    X, Y = data(16, d)
    model = CMANPModel(X, Y)
    bounds = torch.stack([torch.zeros(d, dtype=DTYPE), torch.ones(d, dtype=DTYPE)])
    for name, acqf, q in acquisition_cases(model, X, Y, d):
        cand, value = optimize_acqf(
            acqf,
            bounds,
            q=q,
            num_restarts=2,
            raw_samples=16,
            options={"maxiter": 5, "batch_limit": 16},
        )
        assert cand.shape == (q, d), name
        assert torch.isfinite(value).all(), (name, q)
        # gradients at the candidate (qKG's one-shot input holds q + 8 fantasy points)
        Xg = rand(1, q + 8, d) if name == "qKG" else cand.detach().unsqueeze(0)
        Xg = Xg.clone().requires_grad_(True)
        acqf(Xg).sum().backward()
        assert torch.isfinite(Xg.grad).all(), (name, q)


def test_get_optimal_samples_error_is_actionable(model):
    bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=DTYPE)
    with pytest.raises(UnsupportedError, match="sample_optima"):
        get_optimal_samples(model, bounds, num_optima=4)
    xs, fs = sample_optima(model, bounds, num_optima=4, seed=0)
    assert xs.shape == (4, 2) and fs.shape == (4, 1)


# ----------------------------------------------------------------------------------- loop
def test_branin_loop_improves():
    problem = Branin(negate=True).to(DTYPE)
    bounds = problem.bounds
    X = draw_sobol_samples(bounds, n=6, q=1, seed=0).squeeze(-2)
    Y = problem(X).unsqueeze(-1)
    initial_best = Y.max().item()
    model = CMANPModel(X, Y, input_transform=Normalize(d=2, bounds=bounds))
    for i in range(30):
        acqf = qLogNoisyExpectedImprovement(
            model,
            X_baseline=X,
            sampler=SobolQMCNormalSampler(torch.Size([32]), seed=i),
            prune_baseline=False,
        )
        cand, _ = optimize_acqf(
            acqf, bounds, q=1, num_restarts=2, raw_samples=16, options={"maxiter": 8, "seed": i}
        )
        y = problem(cand).unsqueeze(-1)
        model = model.condition_on_observations(cand, y)
        X, Y = torch.cat([X, cand]), torch.cat([Y, y])
    assert model.num_points == 36
    assert torch.isfinite(Y).all()
    assert Y.max().item() > initial_best


def test_network_with_every_memory_conditions_exactly_and_optimises_qlognei(monkeypatch):
    """A network with the regression, polynomial and hypothesis memories behind CMANPModel:
    an update never re-encodes and equals a fresh model, and qLogNEI (with the baseline cache)
    gives finite values and gradients."""
    memories = {"regression_features": 6, "polynomial_memory": True, "hypothesis_count": 2}
    net = small_net(dim_x=3, hypothesis_features=5, **memories)
    X0, Y0 = data(12, 3)
    Xn, Yn = data(3, 3, seed=5)
    model = CMANPModel(X0, Y0, checkpoint=net)
    assert model.context_state.hypothesis is not None

    def no_encode(*args, **kwargs):
        raise AssertionError("condition_on_observations re-encoded the old context")

    monkeypatch.setattr(model.network, "encode", no_encode)
    new = model.condition_on_observations(Xn, Yn)
    monkeypatch.undo()
    fresh = CMANPModel(
        torch.cat([X0, Xn]), torch.cat([Y0, Yn]), checkpoint=net, outcome_frame=model.outcome_frame
    )
    Xt = rand(2, 3, 3)
    assert_same_posterior(new.posterior(Xt), fresh.posterior(Xt))
    sampler = SobolQMCNormalSampler(torch.Size([16]), seed=0)
    acqf = qLogNoisyExpectedImprovement(model, X0, sampler)
    Xq = rand(4, 2, 3, seed=9).requires_grad_(True)
    value = acqf(Xq)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(Xq.grad).all()
    assert Xq.grad.abs().sum() > 0
