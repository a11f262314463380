from __future__ import annotations

import pytest
import torch

from cmanp_bo.priors import GPSampler, exact_gp_log_likelihood


@pytest.mark.parametrize("kernel", ["rbf", "matern", "periodic"])
def test_sampler_is_seeded_and_follows_protocol(kernel):
    a, b = GPSampler(kernel, seed=3).sample(4), GPSampler(kernel, seed=3).sample(4)
    assert torch.equal(a.xc, b.xc) and torch.equal(a.yt, b.yt)
    assert not torch.equal(a.yc[..., :1, :], GPSampler(kernel, seed=4).sample(4).yc[..., :1, :])
    for _ in range(20):
        batch = GPSampler(kernel, seed=_).sample(2)
        nc, nt = batch.xc.shape[1], batch.xt.shape[1]
        assert 3 <= nc <= 46 and 3 <= nt and nc + nt <= 49
        assert batch.xc.abs().max() <= 2 and batch.xt.abs().max() <= 2
        assert ((0.1 <= batch.lengthscale) & (batch.lengthscale < 0.6)).all()
        assert ((0.1 <= batch.scale) & (batch.scale < 1.0)).all()


def test_exact_gp_ceiling_matches_reference():
    """The paper-notes ceiling (1.51 RBF / 1.11 Matern on 300 x 16 tasks), on 60 x 16 tasks."""
    for kernel, ref in [("rbf", 1.51), ("matern", 1.11)]:
        sampler = GPSampler(kernel, seed=0, dtype=torch.float64)
        ll = torch.cat([exact_gp_log_likelihood(kernel, sampler.sample(16)) for _ in range(60)])
        se = ll.std() / len(ll) ** 0.5
        assert abs(ll.mean().item() - ref) < 4 * se.item() + 0.01


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="unknown kernel"):
        GPSampler("cosine")
    with pytest.raises(ValueError):
        GPSampler(max_context=60)


def test_bo_prior_tasks_are_in_the_model_frame_and_padded():
    from cmanp_bo.priors import BOPriorSampler

    a = BOPriorSampler(max_dim=6, seed=1).sample(8, dim=3, num_context=20)
    b = BOPriorSampler(max_dim=6, seed=1).sample(8, dim=3, num_context=20)
    assert torch.equal(a.yc, b.yc) and a.kernel == b.kernel
    assert a.xc.shape == (8, 20, 6) and a.xt.shape == (8, 64, 6) and a.yc.shape == (8, 20, 1)
    assert (a.xc[..., 3:] == 0).all() and (a.xc[..., :3] >= 0).all() and (a.xc <= 1).all()
    # the context is standardised exactly as CMANPModel's OutcomeFrame does
    assert torch.allclose(a.yc.mean(1), torch.zeros(8, 1), atol=1e-5)
    assert torch.allclose(a.yc.std(1), torch.ones(8, 1), atol=1e-5)
    assert torch.isfinite(a.lengthscales).any(-1).all()  # at least one relevant dimension
    sizes = {BOPriorSampler(seed=s).sample(1).xc.shape[1] for s in range(40)}
    assert min(sizes) >= 1 and max(sizes) <= 512 and len(sizes) > 10


def test_bo_prior_truth_reproduces_the_data_distribution():
    """The recorded hyperparameters (in frame units) are those that generated the framed data."""
    from cmanp_bo.priors import BOPriorSampler, bo_kernel

    b = BOPriorSampler(max_dim=4, seed=2, dtype=torch.float64).sample(64, dim=2, num_context=30)
    x = torch.cat([b.xc, b.xt], 1)[..., :2]
    y = torch.cat([b.yc, b.yt], 1).squeeze(-1)
    cov = b.signal_std[:, None, None] ** 2 * bo_kernel(b.kernel, x, x, b.lengthscales)
    cov = cov + torch.diag_embed((b.noise_std**2)[:, None].expand(-1, x.shape[1]))
    dist = torch.distributions.MultivariateNormal(b.mean[:, None].expand(-1, x.shape[1]), cov)
    whitened = torch.linalg.solve_triangular(
        dist.scale_tril, (y - dist.loc).unsqueeze(-1), upper=False
    ).squeeze(-1)
    # whitened residuals of the true model are standard normal
    assert abs(whitened.mean().item()) < 0.05 and abs(whitened.std().item() - 1) < 0.05


def test_bo_prior_dimension_range_and_padding():
    from cmanp_bo.priors import BOPriorSampler

    s = BOPriorSampler(max_dim=6, min_dim=3, pad_dim=10, seed=4)
    batches = [s.sample(2, num_context=5) for _ in range(40)]
    assert {b.dim for b in batches} == {3, 4, 5, 6}
    for b in batches:
        assert b.xc.shape == (2, 5, 10) and (b.xt[..., b.dim :] == 0).all()
        assert (b.xc[..., : b.dim] > 0).all()
    with pytest.raises(ValueError, match="min_dim"):
        BOPriorSampler(max_dim=2, min_dim=3)
    with pytest.raises(ValueError, match="pad_dim"):
        BOPriorSampler(max_dim=6, pad_dim=4)


def test_bo_prior_short_lengthscale_share():
    import math

    from cmanp_bo.priors import BOPriorSampler

    # off by default, and the default random stream is unchanged by the option's existence
    a = BOPriorSampler(max_dim=4, seed=3).sample(4, dim=4, num_context=10)
    b = BOPriorSampler(max_dim=4, seed=3, short_share=0.0).sample(4, dim=4, num_context=10)
    assert torch.equal(a.yc, b.yc) and torch.equal(a.lengthscales, b.lengthscales)
    # share 1: every lengthscale is the default draw divided by the factor
    plain = BOPriorSampler(max_dim=4, seed=5).hyperparameters(2000, 4)[1]
    short = BOPriorSampler(max_dim=4, seed=5, short_share=1.0, short_factor=16).hyperparameters(
        2000, 4
    )[1]
    finite = plain.isfinite()
    assert torch.equal(finite, short.isfinite())
    assert torch.allclose(short[finite] * 16, plain[finite])
    # share 0.5: half the lengthscales come from the short component
    s = BOPriorSampler(max_dim=4, seed=6, short_share=0.5, short_factor=16)
    ls = s.hyperparameters(4000, 4)[1].clamp_max(1e6).log()
    finite = ls < math.log(1e6)
    median = math.sqrt(2) + 0.5 * math.log(4)  # log of the prior's median lengthscale
    below = ((ls < median - math.log(16) / 2) & finite).float().sum() / finite.float().sum()
    assert 0.4 < below.item() < 0.6  # 0.5 * P(z < 0.80) + 0.5 * P(z < -0.80) = 0.5 exactly
    with pytest.raises(ValueError, match="short_share"):
        BOPriorSampler(short_share=1.5)
    with pytest.raises(ValueError, match="short_factor"):
        BOPriorSampler(short_share=0.5, short_factor=0)


def test_bo_prior_near_context_targets():
    from cmanp_bo.priors import BOPriorSampler

    # off by default, and the default random stream is unchanged by the option's existence
    a = BOPriorSampler(max_dim=4, seed=3).sample(4, dim=4, num_context=10)
    b = BOPriorSampler(max_dim=4, seed=3, near_share=0.0).sample(4, dim=4, num_context=10)
    assert torch.equal(a.xt, b.xt) and torch.equal(a.yt, b.yt)

    def nearest(batch):  # distance of each target to its nearest context point
        return torch.cdist(batch.xt.double(), batch.xc.double()).min(-1).values

    plain = nearest(BOPriorSampler(max_dim=4, seed=4).sample(64, dim=4, num_context=20))
    s = BOPriorSampler(max_dim=4, seed=4, near_share=1.0, near_min=1e-3, near_max=0.01)
    batch = s.sample(64, dim=4, num_context=20)
    near = nearest(batch)
    assert near.max() < 0.01 * 6 * 2  # every target within a few jitter stds of a context point
    assert plain.median() > 0.1  # uniform targets at d = 4 are far from 20 context points
    assert batch.xt.min() >= 0 and batch.xt.max() <= 1
    # targets at a context point get their own noise: y differs from the context's y there
    diff = (batch.yt[..., 0, None] - batch.yc[..., 0][:, None, :]).abs()
    close = torch.cdist(batch.xt.double(), batch.xc.double()) < 1e-3
    assert close.any() and (diff[close] > 0).all()
    # share 0.5: about half the targets move
    half = BOPriorSampler(max_dim=4, seed=5, near_share=0.5, near_max=0.01)
    moved = (nearest(half.sample(64, dim=4, num_context=20)) < 0.06).double().mean()
    assert 0.4 < moved.item() < 0.65
    with pytest.raises(ValueError, match="near_share"):
        BOPriorSampler(near_share=-0.1)
    with pytest.raises(ValueError, match="near_min"):
        BOPriorSampler(near_share=0.5, near_min=0.3, near_max=0.2)


def test_bo_prior_bo_like_contexts():
    from cmanp_bo.priors import BOPriorSampler
    from cmanp_bo.priors.bo import bo_kernel

    # off by default, and the default random stream is unchanged by the option's existence
    a = BOPriorSampler(max_dim=4, seed=3).sample(4, dim=4, num_context=10)
    b = BOPriorSampler(max_dim=4, seed=3, cluster_share=0.0).sample(4, dim=4, num_context=10)
    assert torch.equal(a.xc, b.xc) and torch.equal(a.yc, b.yc)

    def crowding(batch):  # share of context points within 0.1 of another context point
        dist = torch.cdist(batch.xc.double(), batch.xc.double())
        dist = dist + 10 * torch.eye(dist.shape[-1], dtype=dist.dtype)
        return (dist.min(-1).values < 0.1).double().mean().item()

    plain = BOPriorSampler(max_dim=4, seed=4).sample(64, dim=4, num_context=60)
    s = BOPriorSampler(max_dim=4, seed=4, cluster_share=1.0, near_max=0.05)
    batch = s.sample(64, dim=4, num_context=60)
    assert crowding(plain) < 0.15 and crowding(batch) > 0.5
    assert batch.xc.min() >= 0 and batch.xc.max() <= 1
    # the points placed after the initial design sit near the best (or worst) observations: the
    # extreme context value's neighbourhood holds far more points than a uniform design's
    y = batch.yc[..., 0]
    hi = torch.gather(batch.xc, 1, y.argmax(-1)[:, None, None].expand(-1, 1, 4))
    lo = torch.gather(batch.xc, 1, y.argmin(-1)[:, None, None].expand(-1, 1, 4))
    around = torch.minimum((batch.xc - hi).norm(dim=-1), (batch.xc - lo).norm(dim=-1))
    assert (around < 0.15).double().mean() > 0.2
    # the outcomes are still one exact GP draw at the final inputs: standardised by the true
    # covariance (RBF, known hyperparameters, the sampler's jitter), they are i.i.d. normal,
    # although each round's inputs depend on the outcomes before it
    exact = BOPriorSampler(
        max_dim=3,
        seed=7,
        cluster_share=1.0,
        matern_share=0.0,
        noise_min=1e-9,
        noise_max=1e-9,
        irrelevant_share=0.0,
        dtype=torch.float64,
    )
    zs = []
    for _ in range(30):
        t = exact.sample(8, dim=3, num_context=40)
        x = t.xc
        cov = bo_kernel(t.kernel, x, x, t.lengthscales) * t.signal_std[:, None, None] ** 2
        nugget = t.noise_std**2 + 1e-8 * t.signal_std**2
        chol = torch.linalg.cholesky(cov + nugget[:, None, None] * torch.eye(40, dtype=cov.dtype))
        z = torch.linalg.solve_triangular(chol, t.yc - t.mean[:, None, None], upper=False)
        zs.append(z.flatten())
    z = torch.cat(zs)
    assert abs(z.mean().item()) < 0.05 and 0.95 < z.std().item() < 1.05
    with pytest.raises(ValueError, match="cluster_share"):
        BOPriorSampler(cluster_share=2.0)
    with pytest.raises(ValueError, match="cluster_rounds"):
        BOPriorSampler(cluster_share=0.5, cluster_rounds=0)
