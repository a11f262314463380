"""TrustRegion: TuRBO-1's side-length schedule and the model's local frame."""

from __future__ import annotations

import pytest
import torch

from cmanp_bo.trust import TrustRegion
from surrogates.registry import AcquisitionOptions, make_surrogate
from tests.helpers import small_net

FAST = AcquisitionOptions(num_restarts=2, raw_samples=16, mc_samples=16)


def test_schedule_doubles_halves_and_restarts():
    tr = TrustRegion(dim=2)  # failure tolerance max(4, 2) = 4, success tolerance 3
    y = torch.tensor([5.0, 4.0])
    tr.observe(y)
    assert tr.best == 4.0 and tr.length == 0.8
    # three improvements in a row double the side (capped at 1.6)
    y = torch.cat([y, torch.tensor([3.0, 2.0, 1.0])])
    tr.observe(y)
    assert tr.length == pytest.approx(1.6) and tr.successes == 0
    # an improvement smaller than 1e-3 |best| is a failure; four failures halve the side
    y = torch.cat([y, torch.tensor([1.0 - 1e-4, 2.0, 3.0, 7.0])])
    tr.observe(y)
    assert tr.length == pytest.approx(0.8) and tr.failures == 0
    assert tr.best == pytest.approx(1.0 - 1e-4)
    # halving below 0.5**7 resets the side to its initial value
    for _ in range(7):
        y = torch.cat([y, torch.full((4,), 9.0)])
        tr.observe(y)
    assert tr.restarts == 1 and tr.length == pytest.approx(0.8)
    # a failure streak broken by an improvement starts again
    y = torch.cat([y, torch.tensor([9.0, 9.0, 9.0, 0.5, 9.0, 9.0, 9.0])])
    tr.observe(y)
    assert tr.length == pytest.approx(0.8) and tr.failures == 3


def test_frame_is_the_region_around_the_incumbent_in_local_coordinates():
    torch.manual_seed(0)
    X = torch.rand(60, 3, dtype=torch.float64)
    y = (X - 0.3).pow(2).sum(-1)
    tr = TrustRegion(dim=3)
    tr.observe(y)
    tr.length = 0.4
    f = tr.frame(X, y)
    center = X[y.argmin()]
    # the context box is the region (when it holds enough points), clipped to the cube
    lower, upper = (center - 0.2).clamp(0, 1), (center + 0.2).clamp(0, 1)
    inside = ((X >= lower) & (X <= upper)).all(-1)
    assert inside.sum() >= tr.min_context
    assert torch.allclose(f.lower, lower) and torch.allclose(f.width, upper - lower)
    assert f.X.shape == (int(inside.sum()), 3) and torch.equal(f.y, y[inside])
    assert ((f.X >= 0) & (f.X <= 1)).all()
    assert torch.allclose(f.to_global(f.X), X[inside])
    # the trust region is the whole local cube here; the incumbent is in it
    assert torch.allclose(f.bounds, torch.stack([torch.zeros(3), torch.ones(3)]).double())
    assert torch.allclose(f.to_global(f.X[f.y.argmin()]), center)


def test_a_small_region_is_widened_to_hold_the_minimum_context():
    torch.manual_seed(1)
    X = torch.rand(40, 2, dtype=torch.float64)
    y = X.sum(-1)
    tr = TrustRegion(dim=2)  # min_context max(5, 2 * 2) = 5
    tr.observe(y)
    tr.length = 0.01
    f = tr.frame(X, y)
    assert f.X.shape[0] >= 5
    # the region is a sub-box of the local cube that holds the incumbent
    lo, hi = f.bounds
    assert ((0 <= lo) & (lo < hi) & (hi <= 1)).all()
    center = f.X[f.y.argmin()]
    assert ((lo - 1e-12 <= center) & (center <= hi + 1e-12)).all()
    incumbent = X[y.argmin()]
    assert torch.allclose(f.to_global(lo), (incumbent - 0.005).clamp(0, 1))
    assert torch.allclose(f.to_global(hi), (incumbent + 0.005).clamp(0, 1))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="length"):
        TrustRegion(2, length_init=2.0)
    tr = TrustRegion(2)
    tr.observe(torch.rand(5))
    with pytest.raises(ValueError, match="seen"):
        tr.observe(torch.rand(3))
    with pytest.raises(ValueError, match="vector"):
        tr.observe(torch.rand(6, 1))
    with pytest.raises(ValueError, match="need X"):
        tr.frame(torch.rand(5, 3), torch.rand(5))
    for bad in (float("nan"), float("inf")):
        y = torch.rand(6)
        y[2] = bad
        with pytest.raises(ValueError, match="finite"):
            tr.observe(y)
        with pytest.raises(ValueError, match="finite"):
            tr.frame(torch.rand(6, 2), y)
    assert tr.seen == 5 and tr.length == 0.8  # the refused calls changed nothing
    with pytest.raises(ValueError, match="at least one point"):
        tr.frame(torch.rand(0, 2), torch.rand(0))
    for name in ("cmanp", "gp"):
        with pytest.raises(ValueError, match="trust_region"):
            make_surrogate(name, 2, 0, trust_region=1)


@pytest.mark.parametrize("name", ["cmanp", "gp"])
def test_surrogates_propose_inside_the_trust_region(name):
    torch.manual_seed(2)
    X = torch.rand(12, 2, dtype=torch.float64)
    y = (X - 0.7).pow(2).sum(-1)
    options = {"checkpoint": small_net(dtype=torch.float64)} if name == "cmanp" else {}
    s = make_surrogate(name, 2, 0, FAST, trust_region=True, warp="rank", **options)
    s.ask(X, y)
    # five failures: the side halves once (tolerance 4)
    X = torch.cat([X, torch.rand(5, 2, dtype=torch.float64)])
    y = torch.cat([y, torch.full((5,), 10.0, dtype=torch.float64)])
    x = s.ask(X, y)
    assert s.lengths == [0.8, 0.4]
    center = X[y.argmin()]
    assert ((x - center).abs() <= 0.2 + 1e-9).all() and ((0 <= x) & (x <= 1)).all()
