"""experiments/ship_checkpoint.py: a checkpoint without training steps ships only as the named
checkpoint's weights, checked tensor by tensor (recipe stage 19 redraws a hypothesis bank)."""

from __future__ import annotations

import sys

import pytest
import torch

from cmanp_bo.checkpoint import read_card, save_checkpoint
from cmanp_bo.train import TrainConfig, _warm_start
from tests.helpers import load_experiment
from tests.nn.test_regression import reg_net


@pytest.fixture
def ship(tmp_path, monkeypatch):
    module = load_experiment("ship_checkpoint")
    monkeypatch.setattr(module, "PRETRAINED", tmp_path / "pretrained")
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "results").mkdir()

    def run(*args: str) -> None:
        monkeypatch.setattr(sys, "argv", ["ship_checkpoint.py", *args])
        module.main()

    return run


def test_a_redrawn_bank_ships_with_the_weights_it_carries(ship, tmp_path, capsys):
    trained = reg_net(torch.float32, hypothesis_count=3, hypothesis_features=6, seed=1)
    save_checkpoint(trained, tmp_path / "pretrained" / "src.pt", {"steps": 10, "note": "t"})
    other = reg_net(torch.float32, hypothesis_count=3, hypothesis_features=6, seed=2)
    save_checkpoint(other, tmp_path / "pretrained" / "other.pt", {"steps": 10, "note": "t"})
    redrawn = reg_net(torch.float32, hypothesis_count=5, hypothesis_features=9, seed=3)
    _warm_start(redrawn, TrainConfig(init_from=str(tmp_path / "pretrained" / "src.pt")))
    run = tmp_path / "run"
    save_checkpoint(redrawn, run / "model.pt", {"steps": 0, "heldout_curve": []})
    with pytest.raises(SystemExit):  # no steps and no source named
        ship(str(run), "--name", "dense", "--command", "x")
    assert "no training steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # another network's weights
        ship(str(run), "--name", "dense", "--command", "x", "--weights-from", "other")
    assert "the weights are not its own" in capsys.readouterr().err
    assert not (tmp_path / "pretrained" / "dense.pt").exists()
    ship(str(run), "--name", "dense", "--command", "x", "--weights-from", "src")
    card = read_card(tmp_path / "pretrained" / "dense.pt")
    assert card["weights_from"] == "src" and card["steps"] == 0
    assert card["config"]["hypothesis_count"] == 5
    assert not (tmp_path / "results" / "dense_curve.csv").exists()  # no curve to write


def test_weights_from_an_unshipped_run_record_its_provenance(ship, tmp_path):
    trained = reg_net(torch.float32, hypothesis_count=3, hypothesis_features=6, seed=1)
    source = tmp_path / "source-run"
    save_checkpoint(trained, source / "model.pt", {"steps": 10, "wall_time_s": 5.0, "note": "t"})
    redrawn = reg_net(torch.float32, hypothesis_count=5, hypothesis_features=9, seed=3)
    _warm_start(redrawn, TrainConfig(init_from=str(source / "model.pt")))
    run = tmp_path / "run"
    save_checkpoint(redrawn, run / "model.pt", {"steps": 0, "heldout_curve": []})
    ship(str(run), "--name", "dense", "--command", "x", "--weights-from", str(source))
    card = read_card(tmp_path / "pretrained" / "dense.pt")
    assert card["weights_from"]["run"] == str(source)
    assert card["weights_from"]["steps"] == 10 and card["weights_from"]["wall_time_s"] == 5.0
