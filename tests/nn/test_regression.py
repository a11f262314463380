"""The regression memory: exact Bayesian linear regression, streamed, inside the whole model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cmanp_bo.checkpoint import load_checkpoint, save_checkpoint
from cmanp_bo.nn import CMANP, CMANPConfig
from cmanp_bo.nn.regression import LOG_FLOOR, RegressionMemory
from cmanp_bo.train import widen_inputs
from tests.nn.test_streaming import max_diff, outputs

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def reg_net(dtype=torch.float64, dim_x=3, seed=0, **kw) -> CMANP:
    torch.manual_seed(seed)
    cfg = dict(
        dim_x=dim_x, d_model=32, d_ff=64, num_heads=4, num_layers=2, num_latents=8,
        num_block_latents=8, joint_head=True, fourier_features=8, regression_features=12,
    )  # fmt: skip
    cfg.update(kw)
    return CMANP(CMANPConfig(**cfg)).to(dtype).eval().requires_grad_(False)


def cube_data(n, dtype, dim_x=3, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n, dim_x, generator=g, dtype=dtype)
    y = torch.sin(4 * x.sum(-1, keepdim=True)) + 0.05 * torch.randn(
        batch, n, 1, generator=g, dtype=dtype
    )
    xq = torch.rand(batch, 9, dim_x, generator=g, dtype=dtype)
    return x, y, xq


def test_readout_equals_the_exact_gp_with_the_feature_kernel():
    """Mean, variance and evidence of each bank against the n x n computation with
    ``K = Phi Phi^T``: the Woodbury identities the memory relies on."""
    torch.manual_seed(0)
    mem = RegressionMemory(dim_x=2, num_features=10, lengthscales=(0.3, 2.0), noise=0.05).double()
    x, y, xq = cube_data(25, torch.float64, dim_x=2, batch=1)
    stats = mem.stats(x, y, torch.Size([1]))
    out = mem.readout(stats, 25, xq)[0]
    phi, phi_q = mem.features(x)[0], mem.features(xq)[0]  # banks x n x m
    lam = mem.noise()
    log_ev = []
    for b in range(2):
        K = phi[b] @ phi[b].T + lam[b] * torch.eye(25, dtype=torch.float64)
        Kq = phi_q[b] @ phi[b].T
        mean = Kq @ torch.linalg.solve(K, y[0, :, 0])
        var_f = (phi_q[b] * phi_q[b]).sum(-1) - (Kq * torch.linalg.solve(K, Kq.T).T).sum(-1)
        assert torch.allclose(out[:, b], mean, atol=1e-9)
        assert torch.allclose(out[:, 2 + b], 0.5 * (var_f + LOG_FLOOR).log(), atol=1e-8)
        log_ev.append(
            torch.distributions.MultivariateNormal(
                torch.zeros(25, dtype=torch.float64), K
            ).log_prob(y[0, :, 0])
        )
    weights = torch.softmax(torch.stack(log_ev), 0)
    assert torch.allclose(out[0, 4:6], weights, atol=1e-9)
    avg = weights[0] * out[:, 0] + weights[1] * out[:, 1]
    assert torch.allclose(out[:, 6], avg, atol=1e-9)


def test_empty_memory_reads_the_prior():
    mem = RegressionMemory(dim_x=2, num_features=10, lengthscales=(0.3, 2.0), noise=0.05).double()
    xq = torch.rand(4, 2, dtype=torch.float64)
    out = mem.readout(mem.empty(torch.Size([])), 0, xq)
    prior_var = (mem.features(xq) ** 2).sum(-1)  # phi^T phi, about 1
    assert torch.equal(out[:, :2], torch.zeros(4, 2, dtype=torch.float64))
    assert torch.allclose(out[:, 2:4], 0.5 * (prior_var.T + LOG_FLOOR).log(), atol=1e-12)
    assert torch.allclose(out[:, 4:6], torch.full((4, 2), 0.5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block_size", [1, 7, None])
def test_streamed_updated_and_permuted_equal_one_shot_through_the_model(dtype, block_size):
    net = reg_net(dtype)
    x, y, xq = cube_data(120, dtype)
    reference = outputs(net, net.encode(x, y), xq)
    assert (
        max_diff(outputs(net, net.encode(x, y, block_size=block_size), xq), reference)
        <= (TOL[dtype])
    )
    state = net.encode(x[:, :30], y[:, :30], block_size=block_size)
    for start in range(30, 120, 17):
        state = net.update(state, x[:, start : start + 17], y[:, start : start + 17])
    assert state.num_points == 120
    assert max_diff(outputs(net, state, xq), reference) <= TOL[dtype]
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(2))
    permuted = net.encode(x[:, perm], y[:, perm], block_size=block_size or 11)
    assert max_diff(outputs(net, permuted, xq), reference) <= TOL[dtype]


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 60), cuts=st.lists(st.integers(1, 59), max_size=4))
def test_any_split_gives_the_same_regression_state(n, cuts):
    net = reg_net()
    x, y, _ = cube_data(n, torch.float64)
    state = net.empty_state((2,))
    bounds = [0, *sorted({c for c in cuts if c < n}), n]
    for a, b in zip(bounds[:-1], bounds[1:]):
        state = net.update(state, x[:, a:b], y[:, a:b])
    fresh = net.encode(x, y)
    for u, v in zip(state.regression.tensors(), fresh.regression.tensors()):
        assert torch.allclose(u, v, atol=1e-10 * max(1.0, v.abs().max().item()))


def test_state_size_is_constant_and_counts_the_memory():
    net = reg_net()
    sizes = set()
    for n in (1, 10, 500):
        x, y, _ = cube_data(n, torch.float64)
        sizes.add(net.encode(x, y, block_size=64).numel())
    banks, m = len(net.cfg.regression_lengthscales), net.cfg.regression_features
    plain = reg_net(regression_features=0).encode(*cube_data(5, torch.float64)[:2]).numel()
    assert sizes == {plain + 2 * (banks * (m * m + m) + 1)}


def test_fantasy_broadcast_matches_separate_updates():
    net = reg_net()
    x, y, xq = cube_data(20, torch.float64)
    state = net.encode(x, y)
    xf = torch.rand(2, 1, 3, dtype=torch.float64)
    yf = torch.randn(4, 2, 1, 1, dtype=torch.float64)
    fant = net.update(state, xf, yf)
    assert fant.batch_shape == torch.Size([4, 2])
    assert fant.regression.gram.shape[:-3] == torch.Size([2])  # y's fantasy dim is not copied
    for s in range(4):
        one = net.update(state, xf, yf[s])
        assert max_diff(outputs(net, one, xq), [t[s] for t in outputs(net, fant, xq)]) < 1e-12


def test_training_gradients_reach_the_memory_and_float32_loss_is_finite():
    net = reg_net(torch.float32).train().requires_grad_(True)
    x, y, xq = cube_data(30, torch.float32)
    loss = net.loss(x, y, xq, torch.sin(4 * xq.sum(-1, keepdim=True)))
    loss.backward()
    assert math.isfinite(loss.item())
    assert net.regression.frequencies.grad.abs().sum() > 0
    assert net.regression.log_noise.grad.abs().sum() > 0


def test_checkpoint_roundtrip_with_the_memory(tmp_path):
    net = reg_net(torch.float32, regression_lengthscales=[0.2, 1.0])
    save_checkpoint(net, tmp_path / "m.pt", {"note": "test"})
    back = load_checkpoint(tmp_path / "m.pt")
    assert back.cfg == net.cfg and back.cfg.regression_lengthscales == (0.2, 1.0)
    x, y, xq = cube_data(15, torch.float32)
    with torch.no_grad():
        assert (
            max_diff(outputs(back, back.encode(x, y), xq), outputs(net, net.encode(x, y), xq)) == 0
        )


def test_adding_the_memory_to_a_trained_network_keeps_its_predictions():
    plain = reg_net(torch.float32, dim_x=2, regression_features=0)
    wide = reg_net(torch.float32, dim_x=4, seed=5)
    wide.load_state_dict(widen_inputs(plain.state_dict(), wide.state_dict(), plain.cfg, 4))
    x, y, xq = cube_data(20, torch.float32, dim_x=2)
    pad = lambda t: torch.nn.functional.pad(t, (0, 2))  # noqa: E731
    with torch.no_grad():
        a = outputs(plain, plain.encode(x, y), xq)
        b = outputs(wide, wide.encode(pad(x), y), pad(xq))
    assert max_diff(a, b) < 1e-5
    assert wide.embed_query[0].weight[:, -wide.regression.readout_width :].abs().max() == 0


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("regression_features", -1, "regression_features must be an int >= 0"),
        ("regression_lengthscales", [], "regression_lengthscales must be a non-empty"),
        ("regression_lengthscales", [0.5, -1.0], "regression_lengthscales must be a non-empty"),
        ("regression_noise", 1e-5, "regression_noise must be >"),
    ],
)
def test_config_errors_are_clear(field, value, message):
    with pytest.raises(ValueError, match=message):
        CMANPConfig(**{field: value})


@pytest.mark.parametrize("arch", ["tnp", "lbanp"])
def test_peers_refuse_a_regression_memory(arch):
    from cmanp_bo.architectures import build_network

    with pytest.raises(ValueError, match="has no regression memory"):
        build_network(arch, {"d_model": 16, "num_heads": 2, "regression_features": 4})


def test_state_of_another_network_is_refused():
    x, y, xq = cube_data(5, torch.float64)
    with pytest.raises(ValueError, match="disagree on the regression memory"):
        reg_net(regression_features=0).predict(reg_net().encode(x, y), xq)
