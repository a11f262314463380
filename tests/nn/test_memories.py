"""What the closed-form memories added to a regression-memory network share (the polynomial and
the hypothesis memory): exact streaming, fantasies that share the gram, finite gradients, and a
warm start that adds them through zero weights."""

from __future__ import annotations

import pytest
import torch

from cmanp_bo.train import widen_inputs
from tests.nn.test_regression import cube_data, reg_net
from tests.nn.test_streaming import max_diff, outputs

# memory -> the config that adds it to ``reg_net``'s network
MEMORIES = {
    "polynomial": {"polynomial_memory": True},
    "hypothesis": {"hypothesis_count": 3, "hypothesis_features": 6},
}


def memory_net(memory: str, dtype=torch.float64, **kw):
    return reg_net(dtype, **{**MEMORIES[memory], **kw})


@pytest.mark.parametrize("memory", MEMORIES)
def test_streamed_updated_and_permuted_equal_one_shot_through_the_model(memory):
    net = memory_net(memory)
    x, y, xq = cube_data(90, torch.float64)
    reference = outputs(net, net.encode(x, y), xq)
    assert max_diff(outputs(net, net.encode(x, y, block_size=7), xq), reference) < 1e-9
    state = net.encode(x[:, :20], y[:, :20])
    for start in range(20, 90, 13):
        state = net.update(state, x[:, start : start + 13], y[:, start : start + 13])
    assert max_diff(outputs(net, state, xq), reference) < 1e-9
    perm = torch.randperm(90, generator=torch.Generator().manual_seed(2))
    permuted = net.encode(x[:, perm], y[:, perm], block_size=11)
    assert max_diff(outputs(net, permuted, xq), reference) < 1e-9


@pytest.mark.parametrize("memory", MEMORIES)
def test_fantasies_share_the_gram_and_match_separate_updates(memory):
    net = memory_net(memory)
    x, y, xq = cube_data(20, torch.float64)
    state = net.encode(x, y)
    xf = torch.rand(2, 1, 3, dtype=torch.float64)
    yf = torch.randn(4, 2, 1, 1, dtype=torch.float64)
    fant = net.update(state, xf, yf)
    assert getattr(fant, memory).gram.shape[:-3] == torch.Size([2])
    for s in range(4):
        one = net.update(state, xf, yf[s])
        assert max_diff(outputs(net, one, xq), [t[s] for t in outputs(net, fant, xq)]) < 1e-10


@pytest.mark.parametrize("memory", MEMORIES)
def test_gradients_through_targets_and_fantasy_inputs_are_finite(memory):
    """Acquisition gradients: w.r.t. a target, and w.r.t. a fantasy point that joins the
    context (its gram), with fewer points than features (a singular gram)."""
    net = memory_net(memory)
    x, y, _ = cube_data(4, torch.float64)
    state = net.encode(x, y)
    xq = torch.rand(2, 3, 3, dtype=torch.float64, requires_grad=True)
    net.predict(state, xq).mean.sum().backward()
    assert torch.isfinite(xq.grad).all() and xq.grad.abs().sum() > 0
    xf = torch.rand(2, 1, 3, dtype=torch.float64, requires_grad=True)
    fant = net.update(state, xf, torch.zeros(2, 1, 1, dtype=torch.float64))
    net.predict(fant, torch.rand(2, 3, 3, dtype=torch.float64)).mean.sum().backward()
    assert torch.isfinite(xf.grad).all() and xf.grad.abs().sum() > 0


@pytest.mark.parametrize("memory", MEMORIES)
def test_adding_the_memory_to_a_trained_network_keeps_its_predictions(memory):
    source = reg_net(torch.float32)
    target = memory_net(memory, torch.float32, seed=5)
    target.load_state_dict(widen_inputs(source.state_dict(), target.state_dict(), source.cfg, 3))
    x, y, xq = cube_data(20, torch.float32)
    with torch.no_grad():
        a = outputs(source, source.encode(x, y), xq)
        b = outputs(target, target.encode(x, y), xq)
    assert max_diff(a, b) < 1e-5
    assert target.embed_query[0].weight[:, -3:].abs().max() == 0


@pytest.mark.parametrize("memory", MEMORIES)
def test_warm_start_may_add_the_memory_but_not_drop_it(memory, tmp_path):
    from cmanp_bo.checkpoint import save_checkpoint
    from cmanp_bo.train import TrainConfig, _warm_start

    save_checkpoint(reg_net(torch.float32), tmp_path / "plain.pt", {"note": "test"})
    save_checkpoint(memory_net(memory, torch.float32), tmp_path / "with.pt", {"note": "test"})
    grown = memory_net(memory, torch.float32, seed=9)
    _warm_start(grown, TrainConfig(init_from=str(tmp_path / "plain.pt")))
    assert grown.embed_query[0].weight[:, -3:].abs().max() == 0
    with pytest.raises(ValueError, match="hypothesis memories may be added"):
        _warm_start(reg_net(torch.float32), TrainConfig(init_from=str(tmp_path / "with.pt")))


def test_warm_start_may_redraw_the_hypothesis_bank_at_another_size(tmp_path):
    """Every learned weight is copied; the bank is the target's own draw of the new size (the
    one ``HypothesisMemory`` makes), and the readout it feeds keeps its width and weights."""
    from cmanp_bo.checkpoint import save_checkpoint
    from cmanp_bo.nn.regression import HypothesisMemory
    from cmanp_bo.train import TrainConfig, _warm_start

    source = memory_net("hypothesis", torch.float32, seed=3)
    save_checkpoint(source, tmp_path / "small.pt", {"note": "test"})
    bigger = reg_net(torch.float32, hypothesis_count=5, hypothesis_features=9, seed=8)
    _warm_start(bigger, TrainConfig(init_from=str(tmp_path / "small.pt")))
    fresh = HypothesisMemory(bigger.cfg.dim_x, 5, 9)
    assert bigger.hypothesis.frequencies.shape == (10, bigger.cfg.dim_x, 9)
    assert torch.equal(bigger.hypothesis.frequencies, fresh.frequencies.float())
    for key, value in source.state_dict().items():
        if not key.startswith("hypothesis."):
            assert torch.equal(bigger.state_dict()[key], value), key
    x, y, xq = cube_data(20, torch.float32)
    with torch.no_grad():
        pred = bigger.predict(bigger.encode(x, y), xq)
    assert torch.isfinite(pred.mean).all() and torch.isfinite(pred.stddev).all()
    # dropping the memory is still refused
    with pytest.raises(ValueError, match="hypothesis memories may be added"):
        _warm_start(reg_net(torch.float32), TrainConfig(init_from=str(tmp_path / "small.pt")))


def test_warm_start_redraws_a_bank_of_the_same_size_with_short_hypotheses(tmp_path):
    """A bank whose short share changed is the target's draw even though its buffers keep their
    shapes; every learned weight is still the source's."""
    from cmanp_bo.checkpoint import save_checkpoint
    from cmanp_bo.nn.regression import HypothesisMemory
    from cmanp_bo.train import TrainConfig, _warm_start

    source = reg_net(torch.float32, hypothesis_count=4, hypothesis_features=6, seed=3)
    save_checkpoint(source, tmp_path / "long.pt", {"note": "test"})
    short = reg_net(
        torch.float32,
        hypothesis_count=4,
        hypothesis_features=6,
        hypothesis_short_share=0.5,
        seed=8,
    )
    _warm_start(short, TrainConfig(init_from=str(tmp_path / "long.pt")))
    fresh = HypothesisMemory(short.cfg.dim_x, 4, 6, short_share=0.5)
    assert torch.equal(short.hypothesis.frequencies, fresh.frequencies.float())
    assert not torch.equal(short.hypothesis.frequencies, source.hypothesis.frequencies)
    for key, value in source.state_dict().items():
        if not key.startswith("hypothesis."):
            assert torch.equal(short.state_dict()[key], value), key
    # the same settings copy the source's bank as they did
    same = reg_net(torch.float32, hypothesis_count=4, hypothesis_features=6, seed=9)
    _warm_start(same, TrainConfig(init_from=str(tmp_path / "long.pt")))
    assert torch.equal(same.hypothesis.frequencies, source.hypothesis.frequencies)


def test_short_hypotheses_are_the_hyperprior_draws_divided_by_the_factor():
    """``lengthscale_hypotheses``: the share of short rows is exact and evenly spread, the other
    rows are the share-0 draws unchanged, and ``HypothesisMemory`` builds its frequencies from
    them (a short hypothesis has 16 times the frequencies of its long twin)."""
    from cmanp_bo.nn.regression import HypothesisMemory
    from cmanp_bo.priors.bo import lengthscale_hyperprior, lengthscale_hypotheses

    def draw(share):
        return lengthscale_hypotheses(3, 10, share, 16.0, torch.Generator().manual_seed(5))

    base, half = draw(0.0), draw(0.5)
    loc, scale = lengthscale_hyperprior(3)
    expected = (loc + scale * torch.randn(10, 3, generator=torch.Generator().manual_seed(5))).exp()
    assert torch.equal(base, expected)  # share 0: the draw HypothesisMemory always made
    short = ~torch.isclose(half, base).all(-1)
    assert short.tolist() == [i % 2 == 1 for i in range(10)]
    torch.testing.assert_close(half[short], base[short] / 16.0)
    assert int((~torch.isclose(draw(0.3), base).all(-1)).sum()) == 3
    with pytest.raises(ValueError, match="short_share"):
        draw(1.5)
    long_bank = HypothesisMemory(3, 10, 4, seed=2)
    short_bank = HypothesisMemory(3, 10, 4, seed=2, short_share=0.5)
    ratio = short_bank.frequencies / long_bank.frequencies  # banks: rbf rows, then matern rows
    rows = torch.cat([short, short])
    torch.testing.assert_close(ratio[rows], torch.full_like(ratio[rows], 16.0))
    torch.testing.assert_close(ratio[~rows], torch.ones_like(ratio[~rows]))


# ------------------------------------------------------------------ the exact small-context readout
def exact_net(exact_points=30, **kw):
    return memory_net("hypothesis", hypothesis_exact_points=exact_points, **kw)


def standardised_context(dim: int, n: int, targets: int, seed: int):
    """``n x dim`` inputs with standardised smooth outputs, and ``targets x dim`` queries."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=g, dtype=torch.float64)
    y = torch.sin(6 * x).sum(-1, keepdim=True)
    xq = torch.rand(targets, dim, generator=g, dtype=torch.float64)
    return x, (y - y.mean()) / y.std(), xq


def test_exact_readout_is_the_hypothesis_averaged_gp_on_the_same_hypotheses():
    """Kernel form of the same average: ``HypothesisAveragedGP`` with the memory's lengthscale
    vectors, its pruning rule and component count, on an already standardised context."""
    from cmanp_bo.hypothesis_gp import HypothesisAveragedGP
    from cmanp_bo.nn.regression import LOG_FLOOR, HypothesisMemory

    memory = HypothesisMemory(4, 16, 8, seed=3, short_share=0.5, exact_points=64)
    x, y, xq = standardised_context(4, 25, 11, seed=0)
    stats = memory.stats(x, y, torch.Size([]))
    assert stats.x.shape == (25, 4) and stats.y.shape == (25, 1)
    out = memory.readout(stats, 25, xq)
    gp = HypothesisAveragedGP(
        x, y, hypotheses=memory.lengthscales, max_components=memory.EXACT_COMPONENTS
    )
    mean, var = gp.moments(xq.unsqueeze(-2))
    assert torch.allclose(out[:, 0], mean.squeeze(-1), atol=1e-9)
    var_f = out[:, 1].exp().pow(2) - LOG_FLOOR  # the readout's log std has the floor added
    assert torch.allclose(var_f, var.squeeze(-1).squeeze(-1), rtol=1e-6)
    # the noise is averaged over every component, before pruning
    every = HypothesisAveragedGP(x, y, hypotheses=memory.lengthscales, max_components=10**6)
    assert abs(out[0, 2].exp().pow(2) - every.noise_variance) < 1e-3 * every.noise_variance
    # and not the random-feature readout, which 8 features per bank approximate coarsely
    assert (memory.readout(stats.__class__(*stats.tensors()[:3]), 25, xq) - out).abs().max() > 1e-3


def test_exact_context_streams_and_drops_its_points_beyond_the_cap():
    """Blocks, updates and one-shot give the same state and outputs while exact; past the cap
    the points are dropped and the outputs are the random-feature network's."""
    net = exact_net(30)
    plain = memory_net("hypothesis")
    x, y, xq = cube_data(45, torch.float64)
    ref = outputs(net, net.encode(x[:, :30], y[:, :30]), xq)
    state = net.encode(x[:, :12], y[:, :12], block_size=5)
    state = net.update(state, x[:, 12:30], y[:, 12:30])
    assert state.hypothesis.x.shape == (2, 30, 3)
    assert max_diff(outputs(net, state, xq), ref) < 1e-9
    assert max_diff(outputs(plain, plain.encode(x[:, :30], y[:, :30]), xq), ref) > 1e-4
    full = net.update(state, x[:, 30:31], y[:, 30:31])
    assert full.hypothesis.x is None and full.hypothesis.y is None
    assert full.numel() == plain.encode(x[:, :31], y[:, :31]).numel()
    later = net.update(full, x[:, 31:], y[:, 31:])
    expected = outputs(plain, plain.encode(x, y), xq)
    assert max_diff(outputs(net, later, xq), expected) < 1e-9


def test_exact_state_broadcasts_fantasies_and_keeps_gradients():
    net = exact_net(30)
    x, y, xq = cube_data(10, torch.float64)
    state = net.encode(x, y)
    xf = torch.rand(2, 1, 3, dtype=torch.float64, requires_grad=True)
    yf = torch.randn(4, 2, 1, 1, dtype=torch.float64)
    fant = net.update(state, xf, yf)
    assert fant.hypothesis.x.shape == (4, 2, 11, 3)
    for s in range(4):
        one = net.update(state, xf, yf[s])
        assert max_diff(outputs(net, one, xq), [t[s] for t in outputs(net, fant, xq)]) < 1e-10
    xq = xq.clone().requires_grad_(True)
    net.predict(fant, xq).mean.sum().backward()
    assert torch.isfinite(xq.grad).all() and xq.grad.abs().sum() > 0
    assert torch.isfinite(xf.grad).all() and xf.grad.abs().sum() > 0
    expanded = state.expand((3, 2))
    assert expanded.hypothesis.x.shape == (3, 2, 10, 3)
    assert max_diff(outputs(net, expanded, xq.detach()), outputs(net, state, xq.detach())) < 1e-12


def test_exact_readout_survives_repeated_points():
    """Duplicates make the smallest noise ratios' factors fail or near-fail: those components
    get no weight, and the readout stays finite."""
    net = exact_net(30)
    x, y, xq = cube_data(6, torch.float64)
    x = torch.cat([x, x, x], -2)
    y = torch.cat([y, y + 0.3, y - 0.3], -2)
    out = net.hypothesis.readout(net.encode(x, y).hypothesis, 18, xq)
    assert torch.isfinite(out).all()


def test_exact_points_is_checked():
    from cmanp_bo.nn.cmanp import CMANPConfig
    from cmanp_bo.nn.regression import HypothesisMemory

    with pytest.raises(ValueError, match="hypothesis_exact_points"):
        CMANPConfig(dim_x=2, hypothesis_count=2, hypothesis_exact_points=-1)
    with pytest.raises(ValueError, match="exact_points"):
        HypothesisMemory(2, 2, 4, exact_points=-3)


def test_residual_network_with_a_zero_head_is_its_hypothesis_readout(tmp_path):
    """``hypothesis_residual``: a warm start from a plain network zeroes the head's mean and std
    outputs, so the marginals are the readout's (mean; function and noise std), exact or not."""
    from cmanp_bo.checkpoint import save_checkpoint
    from cmanp_bo.train import TrainConfig, _warm_start

    save_checkpoint(exact_net(30, dtype=torch.float32), tmp_path / "plain.pt", {"note": "test"})
    net = exact_net(30, dtype=torch.float32, seed=4, hypothesis_residual=True)
    _warm_start(net, TrainConfig(init_from=str(tmp_path / "plain.pt")))
    net = net.double()
    for n in (12, 40):  # exact, then the random features
        x, y, xq = cube_data(n, torch.float64)
        state = net.encode(x, y)
        read = net.hypothesis.readout(state.hypothesis, n, xq)
        mean, cov, noise = net.joint_moments(state, xq)
        assert torch.allclose(mean, read[..., 0], atol=1e-9)
        assert torch.allclose(torch.diagonal(cov, dim1=-2, dim2=-1).sqrt(), read[..., 1].exp())
        assert torch.allclose(noise.sqrt(), read[..., 2].exp())
        xg = xq.clone().requires_grad_(True)
        net.predict(state, xg).mean.sum().backward()
        assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="hypothesis_residual needs"):
        memory_net("hypothesis", joint_head=False, hypothesis_residual=True)


def residual_net(exact_points=30, seed=4, **kw):
    return exact_net(exact_points, seed=seed, hypothesis_residual=True, **kw)


def test_exact_readout_correlation_is_the_hypothesis_averaged_gps():
    """The mixture's joint covariance over targets, normalised: ``HypothesisAveragedGP``'s
    moment-matched joint covariance on the same hypotheses, as a correlation."""
    from cmanp_bo.hypothesis_gp import HypothesisAveragedGP
    from cmanp_bo.nn.regression import HypothesisMemory

    memory = HypothesisMemory(3, 12, 8, seed=1, short_share=0.5, exact_points=64)
    x, y, xq = standardised_context(3, 20, 7, seed=5)
    stats = memory.stats(x, y, torch.Size([]))
    corr = memory.readout_correlation(stats, 20, xq[:4], xq)
    gp = HypothesisAveragedGP(x, y, hypotheses=memory.lengthscales, max_components=32)
    _, cov = gp.moments(xq)
    std = torch.diagonal(cov).sqrt()
    assert torch.allclose(corr, (cov / std[:, None] / std[None, :])[:4], atol=1e-7)


@pytest.mark.parametrize("n", [12, 40])  # exact, then the random features
def test_residual_covariance_is_a_consistent_correlation_of_the_network_stds(n):
    net = residual_net(30)
    x, y, xq = cube_data(n, torch.float64)
    state = net.encode(x, y)
    a, b = xq[:, :3], xq[:, 3:8]
    out_a, out_b = net.head_outputs(state, a), net.head_outputs(state, b)
    _, cov, _ = net.moments_from_outputs(torch.cat([out_a, out_b], -2), state)
    cross = net.covariance_from_outputs(out_a, out_b, state)
    assert torch.allclose(cross, cov[..., :3, 3:], rtol=0, atol=1e-12)
    mean, joint, noise = net.joint_moments(state, xq)
    marginal = net.predict(state, xq)
    var = torch.diagonal(joint, dim1=-2, dim2=-1)
    assert torch.allclose(var + noise, marginal.variance.squeeze(-1), rtol=1e-6)
    assert torch.linalg.eigvalsh(joint).min() > -1e-9 * var.max()
    # the memory's mixture correlates nearby targets more than distant ones
    near = torch.cat([xq[:, :1], xq[:, :1] + 0.01, xq[:, :1].flip(-1).mul(-1).add(1)], -2)
    corr = net.hypothesis.readout_correlation(state.hypothesis, n, near, near)
    assert (corr[:, 0, 1] > 0.9).all() and (corr[:, 0, 1] > corr[:, 0, 2]).all()
    with pytest.raises(ValueError, match="needs the context state"):
        net.covariance_from_outputs(out_a, out_b)
    # a float32 network (its buffers cast) gives the same moments in float32
    net32 = residual_net(30).float()
    state32 = net32.encode(x.float(), y.float())
    mean32, joint32, _ = net32.joint_moments(state32, xq.float())
    assert joint32.dtype == torch.float32
    assert torch.allclose(mean32.double(), mean, atol=1e-4)
    assert torch.allclose(joint32.double(), joint, atol=1e-4 * joint.abs().max())


def test_residual_network_posterior_in_botorch_caches_the_baseline_exactly():
    """qLogNEI on a residual network: the cached-baseline blocks equal the full computation,
    and the gradients reach the candidates."""
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.sampling import SobolQMCNormalSampler

    from cmanp_bo import CMANPModel

    net = residual_net(30, dim_x=3)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(16, 3, generator=g, dtype=torch.float64)
    Y = torch.sin(5 * X).sum(-1, keepdim=True)
    cand = torch.rand(4, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    values = []
    for cache in (True, False):
        model = CMANPModel(X, Y, checkpoint=net, cache_baseline=cache)
        acqf = qLogNoisyExpectedImprovement(
            model, X_baseline=X, sampler=SobolQMCNormalSampler(torch.Size([64]), seed=3),
            prune_baseline=False,
        )  # fmt: skip
        values.append(acqf(cand))
    assert torch.allclose(values[0], values[1], rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(values[0].sum(), cand)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_a_bank_drawn_for_fewer_dimensions_is_the_same_draws_shorter(tmp_path):
    """``prior_dim``: the hyperprior of d dimensions (median lengthscale proportional to
    sqrt(d)), the same normal draws; a warm start that changes it redraws the bank only."""
    from cmanp_bo.checkpoint import save_checkpoint
    from cmanp_bo.nn.regression import HypothesisMemory
    from cmanp_bo.train import TrainConfig, _warm_start

    full = HypothesisMemory(6, 8, 5, seed=2, short_share=0.5)
    three = HypothesisMemory(6, 8, 5, seed=2, short_share=0.5, prior_dim=3)
    assert torch.allclose(three.lengthscales, full.lengthscales * 0.5**0.5)
    assert torch.allclose(three.frequencies, full.frequencies / 0.5**0.5)
    assert torch.equal(three.phases, full.phases)
    source = memory_net("hypothesis", torch.float32)
    save_checkpoint(source, tmp_path / "src.pt", {"note": "test"})
    target = memory_net("hypothesis", torch.float32, seed=7, hypothesis_prior_dim=2)
    _warm_start(target, TrainConfig(init_from=str(tmp_path / "src.pt")))
    for key, value in source.state_dict().items():
        if not key.startswith("hypothesis."):
            assert torch.equal(target.state_dict()[key], value), key
    ratio = target.hypothesis.frequencies / source.hypothesis.frequencies
    assert torch.allclose(ratio, torch.full_like(ratio, (3 / 2) ** 0.5))
    with pytest.raises(ValueError, match="prior_dim"):
        HypothesisMemory(2, 2, 4, prior_dim=-1)


def test_a_bank_drawn_for_the_tasks_own_dimension_is_a_view_of_the_network(tmp_path):
    """``hypothesis_task_dim``: ``for_task_dim(d)`` is the network with its bank drawn for d
    (the same outputs as ``hypothesis_prior_dim=d``), sharing every parameter; the network's
    own bank is untouched; ``CMANPModel`` and the trainer pick the view for the task's d."""
    from types import SimpleNamespace

    from cmanp_bo import CMANPModel
    from cmanp_bo.checkpoint import save_checkpoint
    from cmanp_bo.train import TrainConfig, _for_batch, _warm_start

    kw = dict(hypothesis_exact_points=12, hypothesis_residual=True)
    net = memory_net("hypothesis", seed=3, hypothesis_task_dim=True, **kw)
    fixed = memory_net("hypothesis", seed=3, hypothesis_prior_dim=2, **kw)
    base_freq = net.hypothesis.frequencies.clone()
    view = net.for_task_dim(2)
    assert view is not net and net.for_task_dim(3) is net and view.for_task_dim(2) is view
    assert view.for_task_dim(3).hypothesis.prior_dim == 3
    assert all(a is b for a, b in zip(view.parameters(), net.parameters()))
    assert torch.equal(net.hypothesis.frequencies, base_freq)  # the network's bank is kept
    assert torch.allclose(view.hypothesis.frequencies, fixed.hypothesis.frequencies)
    x, y, xq = cube_data(20, torch.float64)
    x, xq = x.clone(), xq.clone()
    x[..., 2], xq[..., 2] = 0.0, 0.0  # a 2-D task, padded
    for n in (8, 20):  # exact readout, then the random features
        want = outputs(fixed, fixed.encode(x[:, :n], y[:, :n]), xq)
        got = outputs(view, view.encode(x[:, :n], y[:, :n]), xq)
        assert max_diff(got, want) < 1e-6  # the same draws, rescaled in another order
        assert max_diff(outputs(net, net.encode(x[:, :n], y[:, :n]), xq), want) > 1e-4
    # the BoTorch model on 2-D data takes the view: the posterior of the d = 2 bank
    post = [
        CMANPModel(x[0, :, :2], y[0], checkpoint=m).posterior(xq[0, :5, :2]) for m in (net, fixed)
    ]
    assert torch.allclose(post[0].mean, post[1].mean, atol=1e-6)
    assert torch.allclose(post[0].covariance_matrix, post[1].covariance_matrix, atol=1e-6)
    assert _for_batch(net, SimpleNamespace(dim=2)).hypothesis.prior_dim == 2
    assert _for_batch(net, SimpleNamespace()) is net  # a prior without padding
    # switching it on by a warm start changes no weight and no buffer
    plain = memory_net("hypothesis", seed=3, **kw)
    save_checkpoint(plain, tmp_path / "src.pt", {"note": "test"})
    _warm_start(net, TrainConfig(init_from=str(tmp_path / "src.pt")))
    for key, value in plain.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    with pytest.raises(ValueError, match="dim must be"):
        net.for_task_dim(4)
    with pytest.raises(ValueError, match="hypothesis_task_dim"):
        memory_net("hypothesis", hypothesis_task_dim=True, hypothesis_prior_dim=2)
    with pytest.raises(ValueError, match="hypothesis_task_dim"):
        reg_net(hypothesis_task_dim=True)


def test_a_task_view_is_kept_so_that_rebuilt_models_reuse_cached_states(tmp_path):
    """One view per d: models rebuilt from the same checkpoint share it, so ``StateCache``
    reuses the longest cached prefix (a new view per model would miss every time); a network
    whose bank tensors were replaced (``.to``) makes a fresh view."""
    import copy

    from cmanp_bo import CMANPModel
    from cmanp_bo.botorch_model import StateCache
    from cmanp_bo.checkpoint import save_checkpoint

    net = memory_net("hypothesis", seed=3, hypothesis_task_dim=True)
    view = net.for_task_dim(2)
    assert net.for_task_dim(2) is view and view.for_task_dim(3) is net
    assert copy.deepcopy(net).state_dict().keys() == net.state_dict().keys()
    assert net.to(torch.float32).for_task_dim(2) is not view  # its bank was replaced
    save_checkpoint(memory_net("hypothesis", seed=3, hypothesis_task_dim=True), tmp_path / "t.pt")
    g = torch.Generator().manual_seed(0)
    X = torch.rand(12, 2, generator=g, dtype=torch.float64)
    Y = torch.sin(5 * X).sum(-1, keepdim=True)
    cache = StateCache()
    for n in (9, 12):
        CMANPModel(X[:n], Y[:n], checkpoint=str(tmp_path / "t.pt"), state_cache=cache)
    assert [(r.embedded, r.reused) for r in cache.records] == [(9, 0), (3, 9)]


def _every_component_readout(memory, stats, n, xq):
    """The random-feature readout summed over every (ratio, bank) component, unpruned
    (``experiments/readout_pruning.py``'s reference), its ``A^{-1} M`` checked."""
    from tests.helpers import load_experiment

    out, w_rb, chol = load_experiment("readout_pruning").every_component_readout(
        memory, stats, n, xq
    )
    alpha = memory._posterior(stats, n)[0]
    torch.testing.assert_close(
        alpha,
        torch.cholesky_solve(
            stats.moment.unsqueeze(-3).unsqueeze(-1).expand(*chol.shape[:-1], 1), chol
        ).squeeze(-1),
    )
    return out, w_rb


def test_marginal_feature_readout_drops_only_negligible_components():
    """Beyond the exact points the readout sums only the components with at least
    ``MARGINAL_MIN_WEIGHT`` of the heaviest one's weight: as many slots as the task that
    keeps the most needs, and the same outputs as the sum over all of them."""
    from cmanp_bo.nn.regression import HypothesisMemory

    memory = HypothesisMemory(3, 16, 8, seed=2, short_share=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 400, 3, generator=g, dtype=torch.float64)
    y = torch.stack([torch.sin(6 * x[0]).sum(-1), torch.cos(2 * x[1]).prod(-1)])[..., None]
    y = (y - y.mean(-2, keepdim=True)) / y.std(-2, keepdim=True)
    for n in (6, 400):  # barely informative (every component kept), then decisive
        stats = memory.stats(x[:, :n], y[:, :n], torch.Size([2]))
        xq = torch.rand(2, 9, 3, generator=g, dtype=torch.float64)
        expected, w_rb = _every_component_readout(memory, stats, n, xq)
        share = w_rb.flatten(-2) / w_rb.flatten(-2).amax(-1, keepdim=True)
        kept = (share >= memory.MARGINAL_MIN_WEIGHT).sum(-1)
        post = memory._marginal_feature_components(stats, n)
        assert post[0].shape[-3] == int(kept.max())  # the slots: the most any task keeps
        assert torch.allclose(memory.readout(stats, n, xq), expected, rtol=0, atol=1e-8)
        if n == 400:
            assert int(kept.max()) < w_rb[0].numel() // 4  # most components are dropped
            assert (post[2] == 0).any()  # the task keeping fewer: its extra slots weigh 0


def test_keep_heaviest_returns_only_the_slots_some_task_keeps():
    from cmanp_bo.nn.regression import _keep_heaviest

    w = torch.tensor([[0.5, 0.3, 0.2, 1e-6, 0.0], [0.98, 0.02, 0.0, 0.0, 0.0]])
    coef = torch.arange(10.0).reshape(2, 5)
    idx, weight, kept_coef = _keep_heaviest(w, coef, count=4, min_share=1e-3)
    assert weight.shape == idx.shape == (2, 3)  # 1e-6 < 1e-3 * 0.5: the 4th slot no task keeps
    assert idx[0].tolist() == [0, 1, 2] and idx[1, :2].tolist() == [0, 1]
    torch.testing.assert_close(weight, torch.tensor([[0.5, 0.3, 0.2], [0.98, 0.02, 0.0]]))
    torch.testing.assert_close(kept_coef, torch.tensor([[0.0, 1.0, 2.0], [5.0, 6.0, 0.0]]))
    idx, weight, _ = _keep_heaviest(w, coef, count=2, min_share=0.1)
    assert weight.shape == (2, 2) and weight[1, 1] == 0  # 0.02 < 0.1 * 0.98: dropped, zero
    torch.testing.assert_close(weight[1], torch.tensor([1.0, 0.0]))
