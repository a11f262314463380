"""Long streams: after 100,000 single-point updates the state still matches a fresh encode."""

from __future__ import annotations

import pytest
import torch

from cmanp_bo.nn import CMANP, CMANPConfig

NUM_UPDATES = 100_000


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_100k_single_point_updates_match_fresh_encode(dtype):
    torch.manual_seed(0)
    cfg = CMANPConfig(
        d_model=16,
        d_ff=32,
        num_heads=2,
        num_layers=2,
        num_latents=8,
        num_block_latents=8,
        embed_depth=2,
        joint_head=True,
    )
    net = CMANP(cfg).to(dtype).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, NUM_UPDATES + 1, 1, generator=g, dtype=torch.float64) * 4 - 2
    y = torch.sin(3 * x) + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    x, y = x.to(dtype), y.to(dtype)
    xq = torch.linspace(-2, 2, 7, dtype=dtype).view(1, 7, 1)

    state = net.encode(x[:, :1], y[:, :1])
    with torch.no_grad():
        for i in range(1, NUM_UPDATES + 1):
            state = net.update(state, x[:, i : i + 1], y[:, i : i + 1])
        assert state.num_points == NUM_UPDATES + 1
        fresh = (
            net.encode(x.double(), y.double(), block_size=4096)
            if dtype == torch.float64
            else net.double().encode(x.double(), y.double(), block_size=4096)
        )
        streamed = net.to(dtype).predict(state, xq)
        fresh_pred = net.double().predict(fresh, xq.double())
        fresh_mean, fresh_std = fresh_pred.mean, fresh_pred.stddev
    scale = fresh_mean.abs().max().item() + fresh_std.abs().max().item()
    err = max(
        (streamed.mean.double() - fresh_mean).abs().max().item(),
        (streamed.stddev.double() - fresh_std).abs().max().item(),
    )
    if dtype == torch.float64:
        assert err <= 1e-8
    else:  # float32 stream against the float64 reference
        assert err <= 1e-3 * scale
