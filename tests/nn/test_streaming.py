"""The streamed state equals the one-shot computation through the whole model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cmanp_bo.nn import CMANP, CMANPConfig, MultiHeadAttention

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def small_net(dtype: torch.dtype, joint: bool = True, seed: int = 0, **kw) -> CMANP:
    torch.manual_seed(seed)
    cfg = dict(
        d_model=32,
        d_ff=64,
        num_heads=4,
        num_layers=3,
        num_latents=16,
        num_block_latents=16,
        joint_head=joint,
    )
    cfg.update(kw)
    return CMANP(CMANPConfig(**cfg)).to(dtype).eval().requires_grad_(False)


def data(n: int, dtype: torch.dtype, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n, 1, generator=g, dtype=dtype) * 4 - 2
    y = torch.sin(3 * x) + 0.1 * torch.randn(batch, n, 1, generator=g, dtype=dtype)
    xq = torch.rand(batch, 9, 1, generator=g, dtype=dtype) * 4 - 2
    return x, y, xq


def outputs(net: CMANP, state, xq) -> list[torch.Tensor]:
    p = net.predict(state, xq)
    out = [p.mean, p.stddev]
    if net.cfg.joint_head:
        out += list(net.joint_moments(state, xq))
    return out


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((u - v).abs().max().item() for u, v in zip(a, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("block_size", [1, 7, 64, None])
def test_blocked_and_updated_equal_one_shot(dtype, block_size):
    net = small_net(dtype)
    n = 150
    x, y, xq = data(n, dtype)
    reference = outputs(net, net.encode(x, y), xq)
    # blocked encode of everything
    assert (
        max_diff(outputs(net, net.encode(x, y, block_size=block_size), xq), reference) <= TOL[dtype]
    )
    # prefix encode + updates of random sizes
    g = torch.Generator().manual_seed(block_size or 0)
    cut = int(torch.randint(1, n, (1,), generator=g))
    state = net.encode(x[:, :cut], y[:, :cut], block_size=block_size)
    while cut < n:
        step = int(torch.randint(1, 40, (1,), generator=g))
        state = net.update(state, x[:, cut : cut + step], y[:, cut : cut + step])
        cut += step
    assert state.num_points == n
    assert max_diff(outputs(net, state, xq), reference) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("joint", [False, True])
def test_permutation_invariance(dtype, joint):
    net = small_net(dtype, joint=joint)
    x, y, xq = data(120, dtype)
    perm = torch.randperm(120, generator=torch.Generator().manual_seed(3))
    a = outputs(net, net.encode(x, y), xq)
    b = outputs(net, net.encode(x[:, perm], y[:, perm], block_size=13), xq)
    assert max_diff(a, b) <= TOL[dtype]


def test_state_size_is_constant():
    net = small_net(torch.float32)
    sizes = set()
    for n in (1, 10, 1000, 5000):
        x, y, _ = data(n, torch.float32, batch=1)
        state = net.encode(x, y, block_size=512)
        sizes.add(state.numel())
        sizes.add(net.update(state, x[:, :1], y[:, :1]).numel())
    assert len(sizes) == 1
    # per layer: heads x latents x (head_dim + 1) numbers
    cfg = net.cfg
    assert sizes.pop() == cfg.num_layers * cfg.num_block_latents * (cfg.d_model + cfg.num_heads)


def test_update_does_not_read_old_context():
    """The update only sees the state: corrupting the old data after encoding changes nothing."""
    net = small_net(torch.float64)
    x, y, xq = data(50, torch.float64)
    state = net.encode(x[:, :40], y[:, :40])
    x[:, :40] = float("nan")  # old inputs destroyed in place
    updated = net.update(state, x[:, 40:], y[:, 40:])
    assert all(torch.isfinite(t).all() for t in outputs(net, updated, xq))


def test_fantasy_batch_broadcast():
    net = small_net(torch.float64)
    x, y, xq = data(30, torch.float64, batch=3)
    state = net.encode(x, y)
    y_new = torch.randn(5, 3, 2, 1, dtype=torch.float64)  # 5 fantasies x 3 tasks
    fantasized = net.update(state, x[:, :2], y_new)
    assert fantasized.batch_shape == torch.Size([5, 3])
    assert fantasized.num_points == 32
    for i in range(5):
        one = net.update(state, x[:, :2], y_new[i])
        assert (
            max_diff(outputs(net, one, xq), [t[i] for t in outputs(net, fantasized, xq)]) <= 1e-10
        )


def test_joint_head_is_consistent_and_psd():
    net = small_net(torch.float64)
    x, y, xq = data(40, torch.float64)
    state = net.encode(x, y)
    mean, cov, noise = net.joint_moments(state, xq)
    assert torch.linalg.eigvalsh(cov).min() > -1e-10
    # marginalisation consistency: a subset's moments equal the sub-blocks
    m2, c2, n2 = net.joint_moments(state, xq[:, [2, 5]])
    assert torch.allclose(m2, mean[:, [2, 5]], atol=1e-12)
    assert torch.allclose(c2, cov[:, [2, 5]][:, :, [2, 5]], atol=1e-12)
    # identical inputs are perfectly correlated in the function covariance
    dup = torch.cat([xq[:, :1], xq[:, :1]], dim=1)
    _, c, _ = net.joint_moments(state, dup)
    corr = c[:, 0, 1] / (c[:, 0, 0] * c[:, 1, 1]).sqrt()
    assert torch.allclose(corr, torch.ones_like(corr), atol=1e-12)
    # marginal predictions are the diagonal of the joint
    p = net.predict(state, xq)
    assert torch.allclose(p.variance.squeeze(-1), torch.diagonal(cov, dim1=-2, dim2=-1) + noise)


def test_block_autoregressive_joint_ll_single_block_equals_joint():
    net = small_net(torch.float64)
    x, y, xq = data(40, torch.float64)
    state = net.encode(x[:, :30], y[:, :30])
    xt, yt = x[:, 30:], y[:, 30:]
    one = net.joint_log_likelihood(state, xt, yt)
    expected = net.predict_joint(state, xt).log_prob(yt.squeeze(-1)) / 10
    assert torch.allclose(one, expected, atol=1e-12)
    # block-AR with blocks of 1 is the chain rule with marginals of each updated state
    ar = net.joint_log_likelihood(state, xt, yt, block_size=1)
    s, total = state, 0.0
    for i in range(10):
        total = total + net.predict(s, xt[:, i : i + 1]).log_prob(yt[:, i : i + 1]).squeeze(
            -1
        ).squeeze(-1)
        s = net.update(s, xt[:, i : i + 1], yt[:, i : i + 1])
    assert torch.allclose(ar, total / 10, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 60),
    splits=st.lists(st.integers(1, 60), min_size=1, max_size=6),
    heads=st.sampled_from([1, 2, 4]),
)
def test_attention_absorb_matches_softmax(n, splits, heads):
    """Property: the log-space update equals one-shot softmax attention for any split."""
    torch.manual_seed(n)
    attn = MultiHeadAttention(8, heads).double()
    q = torch.randn(5, 8, dtype=torch.float64) * 3
    tokens = torch.randn(2, n, 8, dtype=torch.float64) * 3
    full = attn.stats(q, tokens)
    stats, start = attn.empty_stats(q.expand(2, 5, 8)), 0
    for size in splits:
        if start >= n:
            break
        stats = attn.absorb(stats, q, tokens[:, start : start + size])
        start += size
    if start < n:
        stats = attn.absorb(stats, q, tokens[:, start:])
    assert torch.allclose(stats.log_norm, full.log_norm, atol=1e-10)
    assert torch.allclose(stats.output, full.output, atol=1e-10)
    assert torch.allclose(attn.project(stats), attn(q, tokens), atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_state_then_updates_equal_encode(dtype):
    net = small_net(dtype)
    x, y, xq = data(40, dtype)
    empty = net.empty_state((2,))
    assert empty.num_points == 0 and empty.batch_shape == torch.Size([2])
    assert all(torch.isfinite(t).all() for t in outputs(net, empty, xq))
    state = net.update(net.update(empty, x[:, :15], y[:, :15]), x[:, 15:], y[:, 15:])
    assert max_diff(outputs(net, state, xq), outputs(net, net.encode(x, y), xq)) <= TOL[dtype]


def test_state_expand_is_a_broadcast():
    net = small_net(torch.float64)
    x, y, xq = data(20, torch.float64, batch=1)
    state = net.encode(x, y)
    wide = state.expand((3, 1))
    assert wide.batch_shape == torch.Size([3, 1]) and wide.num_points == 20
    for a, b in zip(outputs(net, wide, xq), outputs(net, state, xq)):
        # equal up to rounding: BLAS kernels may differ with the batch size (seen on AMD EPYC)
        assert a.shape == (3, 1, *b.shape[1:])
        assert torch.allclose(a, b.expand_as(a), rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ["cmanp", "tnp", "lbanp"])
def test_columns_shared_across_the_batch_decode_like_separate_calls(arch):
    """An acquisition's baseline, repeated in every batch element, is decoded once: moments and
    the candidates' gradients equal those of decoding each batch element on its own."""
    from tests.helpers import small_net as peer_net

    net = peer_net(dtype=torch.float64, arch=arch, fourier_features=4)
    state = net.encode(torch.rand(12, 2, dtype=torch.float64), torch.randn(12, 1).double())
    base = torch.rand(7, 2, dtype=torch.float64)
    cand = torch.rand(5, 2, 2, dtype=torch.float64, requires_grad=True)
    X = torch.cat([base.expand(5, 7, 2), cand], dim=1)
    mean, cov, noise = net.joint_moments(state, X)
    ref = [net.joint_moments(state, X[i : i + 1]) for i in range(5)]
    for got, want in zip((mean, cov, noise), zip(*ref)):
        assert torch.allclose(got, torch.cat(want), atol=1e-12)
    (grad,) = torch.autograd.grad(mean.sum() + cov.sum(), cand)
    (grad_ref,) = torch.autograd.grad(sum(m.sum() + c.sum() for m, c, _ in ref), cand)
    assert torch.allclose(grad, grad_ref, atol=1e-10)
    # all columns shared (identical batch elements) and none shared take the same path
    same = base.expand(3, 7, 2)
    assert torch.allclose(net.joint_moments(state, same)[1], net.joint_moments(state, base)[1])


@pytest.mark.parametrize("arch", ["cmanp", "tnp", "lbanp"])
def test_a_t_batch_of_an_unbatched_context_decodes_like_separate_calls(arch):
    """The t-batch of an unbatched context is decoded as one set of targets (no copy of the
    context per batch element): the moments and gradients of each element are those of decoding
    it alone."""
    from tests.helpers import small_net as peer_net

    net = peer_net(dtype=torch.float64, arch=arch, fourier_features=4)
    state = net.encode(torch.rand(12, 2, dtype=torch.float64), torch.randn(12, 1).double())
    X = torch.rand(2, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    mean, cov, noise = net.joint_moments(state, X)
    assert cov.shape == (2, 3, 4, 4)
    ref = [[net.joint_moments(state, X[i, j]) for j in range(3)] for i in range(2)]
    for k, got in enumerate((mean, cov, noise)):
        want = torch.stack([torch.stack([r[k] for r in row]) for row in ref])
        assert torch.allclose(got, want, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(mean.sum() + cov.sum(), X)
    total = sum(r[0].sum() + r[1].sum() for row in ref for r in row)
    (grad_ref,) = torch.autograd.grad(total, X)
    assert torch.allclose(grad, grad_ref, atol=1e-10)


def test_a_cross_covariance_block_equals_that_of_the_joint_covariance():
    net = small_net(torch.float64)
    x, y, xq = data(40, torch.float64)
    state = net.encode(x, y)
    a, b = xq[:, :3], xq[:, 3:8]
    out_a, out_b = net.head_outputs(state, a), net.head_outputs(state, b)
    _, cov, _ = net.moments_from_outputs(torch.cat([out_a, out_b], dim=-2))
    cross = net.covariance_from_outputs(out_a, out_b)
    assert cross.shape == (xq.shape[0], 3, 5)
    assert torch.allclose(cross, cov[..., :3, 3:], rtol=0, atol=1e-12)
    # an unbatched block broadcasts against a batched one
    cross_b = net.covariance_from_outputs(out_a, out_b[0])
    assert torch.allclose(cross_b[0], cross[0], rtol=0, atol=1e-12)
