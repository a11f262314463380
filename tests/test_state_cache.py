"""StateCache: a model rebuilt on more data embeds only the new points and equals a fresh build."""

from __future__ import annotations

import pytest
import torch
from helpers import small_net as _small_net

from cmanp_bo.botorch_model import CMANPModel, StateCache, frame_base
from cmanp_bo.nn import CMANP

DTYPE = torch.float64
ATOL = 1e-10


def small_net(dim_x: int = 2) -> CMANP:
    return _small_net(dim_x, dtype=DTYPE)


@pytest.fixture(scope="module")
def net() -> CMANP:
    # One instance shared by every model below (the cache keys on the network's identity);
    # CMANPModel copies a CMANP instance, so the models are built from a saved checkpoint path.
    return small_net()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, net) -> str:
    from cmanp_bo.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(net, path)
    return str(path)


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 2, dtype=DTYPE, generator=g)
    return X, torch.sin(5 * X).sum(-1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)


def test_frame_base_schedule():
    assert [frame_base(n, 2.0) for n in (1, 2, 3, 4, 7, 8, 15, 16, 2000)] == [
        1,
        2,
        2,
        4,
        4,
        8,
        8,
        16,
        1024,
    ]
    assert [frame_base(n, 1.5) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 3, 3, 5, 5, 5]
    assert frame_base(37, None) == 37


def test_prefix_is_reused_and_equals_a_fresh_build(ckpt):
    cache = StateCache()
    X, Y = data(15)
    first = CMANPModel(X[:9], Y[:9], checkpoint=ckpt, state_cache=cache)
    assert first.num_embedded == 9 and first.outcome_frame.num_points == 8
    second = CMANPModel(X[:12], Y[:12], checkpoint=ckpt, state_cache=cache)
    assert second.num_embedded == 3 and second.num_points == 12
    assert second.outcome_frame is first.outcome_frame  # same frame, no re-base before 16
    third = CMANPModel(X[:12], Y[:12], checkpoint=ckpt, state_cache=cache)
    assert third.num_embedded == 0
    fresh = CMANPModel(X[:12], Y[:12], checkpoint=ckpt, state_cache=StateCache())
    assert fresh.num_embedded == 12
    Xq = torch.rand(5, 2, dtype=DTYPE)
    a, b = second.posterior(Xq), fresh.posterior(Xq)
    torch.testing.assert_close(a.mean, b.mean, atol=ATOL, rtol=0)
    torch.testing.assert_close(a.covariance_matrix, b.covariance_matrix, atol=ATOL, rtol=0)
    assert [r.embedded for r in cache.records] == [9, 3, 0]
    assert [r.reused for r in cache.records] == [0, 9, 12]


def test_changed_old_point_is_never_reused(ckpt):
    cache = StateCache()
    X, Y = data(12)
    CMANPModel(X[:9], Y[:9], checkpoint=ckpt, state_cache=cache)
    Y2 = Y.clone()
    Y2[3] += 1.0  # an old observation changed (e.g. re-standardised by someone else)
    model = CMANPModel(X[:11], Y2[:11], checkpoint=ckpt, state_cache=cache)
    assert model.num_embedded == 11
    X2 = X.flip(0)  # reordered
    assert CMANPModel(X2, Y.flip(0), checkpoint=ckpt, state_cache=cache).num_embedded == 12


def test_rebase_on_schedule_equals_fresh(ckpt):
    cache = StateCache()
    X, Y = data(20)
    CMANPModel(X[:10], Y[:10], checkpoint=ckpt, state_cache=cache)
    model = CMANPModel(X[:17], Y[:17], checkpoint=ckpt, state_cache=cache)
    assert model.num_embedded == 17 and model.outcome_frame.num_points == 16
    assert cache.records[-1].rebased
    fresh = CMANPModel(X[:17], Y[:17], checkpoint=ckpt, state_cache=StateCache())
    torch.testing.assert_close(model.outcome_frame.mean, fresh.outcome_frame.mean)
    torch.testing.assert_close(
        model.posterior(X[:3]).mean, fresh.posterior(X[:3]).mean, atol=ATOL, rtol=0
    )


def test_other_settings_miss_and_lru_eviction(ckpt):
    cache = StateCache(max_entries=2)
    X, Y = data(10)
    CMANPModel(X[:5], Y[:5], checkpoint=ckpt, state_cache=cache)
    CMANPModel(X[:6], Y[:6], checkpoint=ckpt, rebase_factor=3.0, state_cache=cache)
    assert cache.records[-1].embedded == 6  # other rebase factor: not reused
    CMANPModel(X[:7] + 1e-3, Y[:7], checkpoint=ckpt, state_cache=cache)
    assert len(cache) == 2  # the first entry was evicted
    CMANPModel(X[:8], Y[:8], checkpoint=ckpt, state_cache=cache)
    assert cache.records[-1].embedded == 8
    cache.clear()
    assert len(cache) == 0 and cache.records == []


def test_batched_data_and_explicit_frame_bypass_the_cache(ckpt):
    cache = StateCache()
    X, Y = data(6)
    model = CMANPModel(X.expand(2, 6, 2), Y.expand(2, 6, 1), checkpoint=ckpt, state_cache=cache)
    assert model.num_embedded == 6 and len(cache) == 0
    base = CMANPModel(X, Y, checkpoint=ckpt)
    CMANPModel(X, Y, checkpoint=ckpt, outcome_frame=base.outcome_frame, state_cache=cache)
    assert len(cache) == 0


def test_conditioned_model_counts_new_points(ckpt):
    X, Y = data(8)
    model = CMANPModel(X[:5], Y[:5], checkpoint=ckpt)
    assert model.num_embedded == 5
    assert model.condition_on_observations(X[5:7], Y[5:7]).num_embedded == 2
