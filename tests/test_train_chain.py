"""The one-command recipe of the default BO checkpoints (experiments/train_bo_checkpoints.py),
at a tiny scale and width: stages chain, snapshot, widen, resume and skip when finished."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from cmanp_bo.checkpoint import read_card

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "train_bo_checkpoints.py"
TINY = dict(d_model=16, d_ff=32, num_heads=2, num_layers=1, num_latents=8, num_block_latents=8)


@pytest.fixture
def chain(monkeypatch):
    spec = importlib.util.spec_from_file_location("train_bo_checkpoints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_bo_checkpoints"] = module
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "MODEL", {**module.MODEL, **TINY, "fourier_features": 4})
    return module


def test_chain_trains_snapshots_widens_and_resumes(chain, tmp_path, capsys):
    with pytest.raises(SystemExit, match="run stage 2 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "3"])
    with pytest.raises(SystemExit, match="run stage 3 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "5"])
    with pytest.raises(SystemExit, match="run stage 4 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "6"])
    with pytest.raises(SystemExit, match="run stage 6 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "7"])
    with pytest.raises(SystemExit, match="run stage 5 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "9"])
    with pytest.raises(SystemExit, match="run stage 9 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "11"])
    with pytest.raises(SystemExit, match="run stage 8 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "12"])
    with pytest.raises(SystemExit, match="run stage 7 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "13"])
    with pytest.raises(SystemExit, match="run stage 11 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "14"])
    with pytest.raises(SystemExit, match="run stage 7 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "15"])
    with pytest.raises(SystemExit, match="run stage 17 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "18"])
    with pytest.raises(SystemExit, match="run stage 18 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "19"])
    with pytest.raises(SystemExit, match="run stage 18 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "20"])
    with pytest.raises(SystemExit, match="run stage 20 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "21"])
    with pytest.raises(SystemExit, match="run stage 20 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "22"])
    with pytest.raises(SystemExit, match="run stage 22 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "23"])
    with pytest.raises(SystemExit, match="run stage 20 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "24"])
    with pytest.raises(SystemExit, match="run stage 24 first"):
        chain.main(["--out", str(tmp_path), "--scale", "0.001", "--stage", "25"])
    chain.main(
        ["--out", str(tmp_path), "--scale", "0.001", "--threads", "1", "--eval-batches", "1"]
    )
    out = capsys.readouterr().out
    assert "snapshot at step 4" in out
    snapshot = torch.load(tmp_path / "bo-d2-snapshot.pt", weights_only=False)
    assert snapshot["step"] == 4
    d2, d36 = (
        read_card(tmp_path / "bo-d2" / "model.pt"),
        read_card(tmp_path / "bo-d36" / "model.pt"),
    )
    assert d2["steps"] == 34 and d2["loss_cap"] == 10.0 and d2["config"]["dim_x"] == 2
    assert d36["steps"] == 32 and d36["config"]["dim_x"] == 6
    assert d36["init_from"].endswith("bo-d2-snapshot.pt")
    short, wide = (read_card(tmp_path / s / "model.pt") for s in ("bo-d36-short", "bo-d710-short"))
    assert short["steps"] == 46 and short["config"]["dim_x"] == 6
    assert wide["steps"] == 36 and wide["config"]["dim_x"] == 10
    for card in (short, wide):  # fine-tuned from stage 3's final weights on the mixed prior
        assert card["init_from"].endswith("bo-d36/model.pt") and card["lr"] == 4e-4
        assert "'short_share': 0.5" in card["prior"] and card["seed"] in (1, 2)
        assert "near_share" not in card["prior"]
    near = read_card(tmp_path / "bo-d36-near" / "model.pt")  # stage 6: from stage 4, near targets
    assert near["steps"] == 36 and near["config"]["dim_x"] == 6 and near["seed"] == 3
    assert near["init_from"].endswith("bo-d36-short/model.pt") and near["lr"] == 4e-4
    assert "'short_share': 0.5" in near["prior"] and "'near_share': 0.5" in near["prior"]
    reg36, reg2 = (read_card(tmp_path / s / "model.pt") for s in ("bo-d36-reg", "bo-d2-reg"))
    assert reg36["init_from"].endswith("bo-d36-near/model.pt") and reg36["steps"] == 25
    assert "'near_share': 0.5" in reg36["prior"] and reg36["config"]["regression_features"] == 64
    assert reg2["init_from"].endswith("bo-d2/model.pt") and reg2["steps"] == 16
    assert reg2["config"]["dim_x"] == 2 and reg2["config"]["regression_features"] == 64
    assert "short_share" not in reg2["prior"] and reg2["seed"] == 6
    reg710 = read_card(tmp_path / "bo-d710-reg" / "model.pt")  # stage 9: from stage 5
    assert reg710["init_from"].endswith("bo-d710-short/model.pt") and reg710["steps"] == 22
    assert reg710["config"]["dim_x"] == 10 and reg710["config"]["regression_features"] == 64
    assert "'short_share': 0.5" in reg710["prior"] and "'near_share': 0.5" in reg710["prior"]
    assert "'min_dim': 4" in reg710["prior"] and reg710["seed"] == 7
    poly36, poly710 = (
        read_card(tmp_path / s / "model.pt") for s in ("bo-d36-poly", "bo-d710-poly")
    )
    assert poly36["init_from"].endswith("bo-d36-reg/model.pt") and poly36["seed"] == 8
    assert poly710["init_from"].endswith("bo-d710-reg/model.pt") and poly710["seed"] == 9
    for card, dim_x in ((poly36, 6), (poly710, 10)):  # stages 10, 11: the quadratic memory added
        assert card["steps"] == 14 and card["config"]["dim_x"] == dim_x
        assert card["config"]["polynomial_memory"] is True
        assert card["config"]["regression_features"] == 64
        assert "'short_share': 0.5" in card["prior"] and "'near_share': 0.5" in card["prior"]
    near2 = read_card(tmp_path / "bo-d2-near" / "model.pt")  # stage 12: from stage 8
    assert near2["init_from"].endswith("bo-d2-reg/model.pt") and near2["steps"] == 24
    assert near2["config"]["dim_x"] == 2 and near2["config"]["regression_features"] == 64
    assert "'short_share': 0.5" in near2["prior"] and "'near_share': 0.5" in near2["prior"]
    assert "'min_dim': 1" in near2["prior"] and near2["seed"] == 10 and near2["lr"] == 4e-4
    bo36 = read_card(tmp_path / "bo-d36-bo" / "model.pt")  # stage 13: from stage 7
    assert bo36["init_from"].endswith("bo-d36-reg/model.pt") and bo36["steps"] == 15
    assert bo36["config"]["dim_x"] == 6 and bo36["config"]["regression_features"] == 64
    assert "'cluster_share': 0.5" in bo36["prior"] and "'near_share': 0.5" in bo36["prior"]
    assert bo36["seed"] == 11
    long710 = read_card(tmp_path / "bo-d710-long" / "model.pt")  # stage 14: from stage 11
    assert long710["init_from"].endswith("bo-d710-poly/model.pt") and long710["steps"] == 10
    assert long710["config"]["dim_x"] == 10 and long710["config"]["polynomial_memory"] is True
    assert "'max_context': 1024" in long710["prior"] and "'min_dim': 4" in long710["prior"]
    assert "'near_share': 0.5" in long710["prior"] and long710["seed"] == 12
    exact, plain = (read_card(tmp_path / s / "model.pt") for s in ("bo-d36-exact", "bo-d36-plain"))
    for card, seed in ((exact, 13), (plain, 14)):  # stages 15, 16: from stage 7
        assert card["init_from"].endswith("bo-d36-reg/model.pt") and card["steps"] == 12
        assert card["config"]["regression_features"] == 64 and card["seed"] == seed
        assert "'short_share': 0.0" in card["prior"] and "'near_share': 0.5" in card["prior"]
    assert "'noise_max': 0.01" in exact["prior"] and "'noise_min': 0.0001" in exact["prior"]
    assert "noise_max" not in plain["prior"]
    pilot, hyp = (read_card(tmp_path / s / "model.pt") for s in ("bo-d36-hyp-pilot", "bo-d36-hyp"))
    assert pilot["init_from"].endswith("bo-d36-reg/model.pt") and pilot["steps"] == 3
    assert hyp["init_from"].endswith("bo-d36-hyp-pilot/model.pt") and hyp["steps"] == 9
    for card, seed in ((pilot, 4), (hyp, 5)):  # stages 17, 18: the hypothesis memory added
        assert card["config"]["hypothesis_count"] == 16 and card["seed"] == seed
        assert card["config"]["hypothesis_features"] == 32
        assert card["config"]["regression_features"] == 64
        assert "'short_share': 0.5" in card["prior"] and "'near_share': 0.5" in card["prior"]
    hyp64 = read_card(tmp_path / "bo-d36-hyp64" / "model.pt")  # stage 19: the bank redrawn
    assert hyp64["init_from"].endswith("bo-d36-hyp/model.pt") and hyp64["steps"] == 0
    assert hyp64["config"]["hypothesis_count"] == 64
    assert hyp64["config"]["hypothesis_features"] == 64
    assert hyp64["heldout_curve"] == []
    weights = {
        s: torch.load(tmp_path / s / "model.pt", weights_only=True)["state_dict"]
        for s in ("bo-d36-hyp", "bo-d36-hyp64")
    }
    assert weights["bo-d36-hyp64"]["hypothesis.frequencies"].shape == (128, 6, 64)
    for key, value in weights["bo-d36-hyp"].items():  # every learned weight is stage 18's
        if not key.startswith("hypothesis."):
            assert torch.equal(weights["bo-d36-hyp64"][key], value), key
    short, short64 = (
        read_card(tmp_path / s / "model.pt") for s in ("bo-d36-hyp-short", "bo-d36-hyp-short64")
    )
    assert short["init_from"].endswith("bo-d36-hyp/model.pt") and short["steps"] == 3
    assert short64["init_from"].endswith("bo-d36-hyp-short/model.pt") and short64["steps"] == 0
    assert short["seed"] == 15 and "'short_share': 0.5" in short["prior"]
    for card, size in ((short, (16, 32)), (short64, (64, 64))):  # stages 20, 21
        assert card["config"]["hypothesis_short_share"] == 0.5
        assert (card["config"]["hypothesis_count"], card["config"]["hypothesis_features"]) == size
    exact, exact64 = (
        read_card(tmp_path / s / "model.pt") for s in ("bo-d36-hyp-exact", "bo-d36-hyp-exact64")
    )
    assert exact["init_from"].endswith("bo-d36-hyp-short/model.pt") and exact["steps"] == 2
    assert exact64["init_from"].endswith("bo-d36-hyp-exact/model.pt") and exact64["steps"] == 0
    assert exact["seed"] == 16
    for card, size, points in ((exact, (16, 32), 64), (exact64, (64, 64), 128)):  # 22, 23
        assert card["config"]["hypothesis_short_share"] == 0.5
        assert (card["config"]["hypothesis_count"], card["config"]["hypothesis_features"]) == size
        assert card["config"]["hypothesis_exact_points"] == points
    resid, resid64 = (
        read_card(tmp_path / s / "model.pt") for s in ("bo-d36-hyp-resid", "bo-d36-hyp-resid64")
    )
    assert resid["init_from"].endswith("bo-d36-hyp-short/model.pt") and resid["steps"] == 2
    assert resid64["init_from"].endswith("bo-d36-hyp-resid/model.pt") and resid64["steps"] == 0
    for card, points in ((resid, 64), (resid64, 128)):  # stages 24, 25
        assert card["config"]["hypothesis_residual"] is True
        assert card["config"]["hypothesis_exact_points"] == points
    chain.main(["--out", str(tmp_path), "--scale", "0.001"])  # everything finished: skipped
    assert capsys.readouterr().out.count(": finished,") == 25


def test_chain_trains_a_peer_with_the_same_recipe(chain, tmp_path):
    args = ["--out", str(tmp_path), "--scale", "0.001", "--eval-batches", "1", "--arch", "lbanp"]
    chain.main([*args, "--stage", "1", "--stage", "2"])
    start, d2 = (read_card(tmp_path / s / "model.pt") for s in ("d2-start", "bo-d2"))
    assert start["arch"] == d2["arch"] == "lbanp"
    assert d2["loss_cap"] == 10.0 and d2["init_from"].endswith("d2-start/model.pt")
    assert not (tmp_path / "bo-d36").exists()
    with pytest.raises(SystemExit):
        chain.main([*args[:-1], "transformer"])  # unknown architecture: argparse refuses
