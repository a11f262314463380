from __future__ import annotations

import json
import warnings

import pytest
import torch

from cmanp_bo import pretrained
from cmanp_bo.architectures import network_class
from cmanp_bo.checkpoint import CheckpointError, load_checkpoint, read_card, save_checkpoint
from cmanp_bo.nn import CMANP, CMANPConfig
from cmanp_bo.train import TrainConfig, _warm_start, train

TINY = dict(
    d_model=16,
    d_ff=32,
    num_heads=2,
    num_layers=2,
    num_latents=8,
    num_block_latents=8,
    embed_depth=2,
)


def tiny_net(**kw) -> CMANP:
    torch.manual_seed(0)
    return CMANP(CMANPConfig(**{**TINY, **kw}))


def test_roundtrip(tmp_path):
    net = tiny_net(joint_head=True)
    card = save_checkpoint(net, tmp_path / "m.pt", {"prior": "test"})
    loaded = load_checkpoint(tmp_path / "m.pt", dtype=torch.float64)
    assert card["prior"] == "test" and len(card["sha256"]) == 64
    assert loaded.cfg == net.cfg and loaded.dtype == torch.float64
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a.double(), b), k


def test_corrupt_file_fails_clearly(tmp_path):
    save_checkpoint(tiny_net(), tmp_path / "m.pt")
    data = bytearray((tmp_path / "m.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "m.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(tmp_path / "m.pt")
    # without the checksum a flipped weight byte goes unnoticed; a truncated file still fails
    (tmp_path / "m.pt").write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path / "m.pt", verify=False)


def test_missing_card_and_file(tmp_path):
    save_checkpoint(tiny_net(), tmp_path / "m.pt")
    (tmp_path / "m.json").unlink()
    with pytest.raises(CheckpointError, match="model card"):
        load_checkpoint(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_mismatched_config_fails_clearly(tmp_path):
    save_checkpoint(tiny_net(), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="dim_x"):
        load_checkpoint(tmp_path / "m.pt", expected_config={"dim_x": 3})
    # weights that do not fit the config in the file
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["config"]["d_model"] = 32
    payload["config"]["d_ff"] = 32
    torch.save(payload, tmp_path / "m.pt")
    card = json.loads((tmp_path / "m.json").read_text())
    from cmanp_bo.checkpoint import sha256_of

    card["sha256"] = sha256_of(tmp_path / "m.pt")
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_checkpoint(tmp_path / "m.pt")


def test_training_resumes_exactly(tmp_path):
    cfg = TrainConfig(
        steps=12, batch_size=4, eval_every=6, eval_batches=2, checkpoint_every=100, model=TINY
    )
    straight = train(cfg, tmp_path / "a", progress=False)
    assert train(cfg, tmp_path / "b", progress=False, stop_after=5) is None
    assert (tmp_path / "b" / "last.pt").exists() and not (tmp_path / "b" / "model.pt").exists()
    resumed = train(cfg, tmp_path / "b", progress=False)
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    for (k, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(u, v, atol=1e-6), k
    card = json.loads((tmp_path / "b" / "model.json").read_text())
    assert card["steps"] == 12 and len(card["heldout_curve"]) == 2
    assert (tmp_path / "b" / "curve.csv").read_text().count("\n") == 3


def test_resume_with_other_settings_is_refused(tmp_path):
    cfg = TrainConfig(steps=4, batch_size=2, eval_every=4, eval_batches=1, model=TINY)
    train(cfg, tmp_path, progress=False, stop_after=2)
    with pytest.raises(ValueError, match="different configuration"):
        train(
            TrainConfig(steps=4, batch_size=3, eval_every=4, eval_batches=1, model=TINY),
            tmp_path,
            progress=False,
        )


def test_resume_may_change_the_step_total(tmp_path):
    cfg = TrainConfig(steps=8, batch_size=2, eval_every=4, eval_batches=1, model=TINY)
    train(cfg, tmp_path, progress=False, stop_after=2)
    shorter = TrainConfig(steps=5, batch_size=2, eval_every=4, eval_batches=1, model=TINY)
    path = train(shorter, tmp_path, progress=False)
    card = read_card(path)
    assert card["steps"] == 5 and [row[0] for row in card["heldout_curve"]] == [4, 5]


def test_training_reduces_loss(tmp_path):
    """A short run must beat the untrained network on held-out tasks."""
    from cmanp_bo.train import evaluate

    cfg = TrainConfig(steps=150, batch_size=8, lr=2e-3, eval_every=150, eval_batches=4, model=TINY)
    torch.manual_seed(cfg.seed)
    untrained = CMANP(CMANPConfig(**TINY))
    before, _ = evaluate(untrained, "rbf", 8)
    after, _ = evaluate(load_checkpoint(train(cfg, tmp_path, progress=False)), "rbf", 8)
    assert after > before + 0.1


def test_shipped_checkpoints_load_and_verify():
    names = pretrained.available()
    assert {"gp1d-rbf-cmanp", "gp1d-rbf-cmanp-and"} <= set(names)
    for name in names:
        net = pretrained.load(name)
        card = pretrained.card(name)
        assert card["sha256"] and "hardware" in card
        # trained, or carrying a trained checkpoint's weights (only its hypothesis bank redrawn)
        source = card.get("weights_from")
        if isinstance(source, dict):  # an unshipped run's weights, with its provenance
            assert card["steps"] > 0 or source["steps"] > 0
        else:
            assert card["steps"] > 0 or pretrained.card(source)["steps"] > 0
        # config fields added after a card was written take their defaults
        assert net.cfg == CMANPConfig(**card["config"])
        # a card without an arch field (written before peers existed) is a CMANP
        assert isinstance(net, network_class(card.get("arch", "cmanp")))
        assert isinstance(net, CMANP) or card["arch"] in ("tnp", "lbanp")
    with pytest.raises(CheckpointError, match="no shipped checkpoint"):
        pretrained.path_of("does-not-exist")


def test_training_on_the_bo_prior(tmp_path):
    model = {**TINY, "dim_x": 3, "joint_head": True}
    cfg = TrainConfig(
        prior="bo",
        prior_options={"max_dim": 3, "max_context": 32, "num_targets": 8},
        steps=4,
        batch_size=2,
        eval_every=4,
        eval_batches=2,
        model=model,
    )
    net = load_checkpoint(train(cfg, tmp_path, progress=False))
    card = json.loads((tmp_path / "model.json").read_text())
    assert net.cfg.dim_x == 3 and "unit cube" in card["prior"] and len(card["heldout_curve"]) == 1
    with pytest.raises(ValueError, match="unknown prior"):
        train(TrainConfig(prior="nope", model=TINY), tmp_path / "x", progress=False)


def test_loading_a_checkpoint_leaves_the_global_rng_alone(tmp_path):
    # A lazily loaded network inside a seeded loop (Ax under with_rng_seed) must not shift
    # every random draw after it.
    path = tmp_path / "net.pt"
    save_checkpoint(CMANP(CMANPConfig(**TINY, fourier_features=3)), path)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    load_checkpoint(path)
    assert torch.equal(torch.rand(3), expected)


def test_default_bo_network_serves_its_dimensions_and_repeats_its_card_warning(monkeypatch):
    assert pretrained.default_bo_name(11) == "bo-default"  # no specialist beyond d=10
    with pytest.raises(CheckpointError, match="supports up to d=10 inputs, got d=11"):
        pretrained.default_bo_network(11)
    with pytest.raises(ValueError, match="positive int"):
        pretrained.default_bo_network(0)
    real = pretrained.card("bo-default")
    weak = {"min_dim": 3, "message": "measured weakness"}
    monkeypatch.setattr(pretrained, "available", lambda: ["bo-default"])
    monkeypatch.setattr(pretrained, "card", lambda name: {**real, "known_weakness": weak})
    net = pretrained.default_bo_network(1)
    assert net.cfg.dim_x == 10 and net.cfg.joint_head
    with pytest.warns(RuntimeWarning, match="bo-default for d=4: measured weakness"):
        pretrained.default_bo_network(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pretrained.default_bo_network(2)  # below min_dim: silent


def test_default_bo_network_prefers_the_narrowest_specialist(monkeypatch):
    cards = {
        "bo-default": {},
        "wide": {"default_for_dims": [1, 6]},
        "narrow": {"default_for_dims": [3, 4]},
        "other": {"default_for_dims": [7, 8]},
    }
    monkeypatch.setattr(pretrained, "available", lambda: sorted(cards))
    monkeypatch.setattr(pretrained, "card", lambda name: cards[name])
    picks = {d: pretrained.default_bo_name(d) for d in range(1, 11)}
    assert picks == {
        1: "wide", 2: "wide", 3: "narrow", 4: "narrow", 5: "wide", 6: "wide",
        7: "other", 8: "other", 9: "bo-default", 10: "bo-default",
    }  # fmt: skip
    monkeypatch.setattr(pretrained, "available", lambda: ["wide"])
    assert pretrained.default_bo_name(9) is None  # nothing serves d=9: the untrained fallback


def test_peers_route_only_to_their_own_architecture(monkeypatch):
    cards = {
        "bo-default": {},
        "bo-d1-2": {"default_for_dims": [1, 2]},
        "tnp-d1-2": {"arch": "tnp", "default_for_dims": [1, 2]},
        "lbanp-wide": {"arch": "lbanp", "default_for_dims": [1, 6]},
    }
    monkeypatch.setattr(pretrained, "available", lambda: sorted(cards))
    monkeypatch.setattr(pretrained, "card", lambda name: cards[name])
    assert [pretrained.default_bo_name(d) for d in (1, 2, 3)] == ["bo-d1-2"] * 2 + ["bo-default"]
    assert [pretrained.default_bo_name(d, "tnp") for d in (1, 2, 3)] == ["tnp-d1-2"] * 2 + [None]
    assert pretrained.default_bo_name(6, "lbanp") == "lbanp-wide"


def test_shipped_specialists_serve_their_dimensions():
    for name in pretrained.available():
        card = pretrained.card(name)
        if card.get("default_for_dims"):
            lo, hi = card["default_for_dims"]
            assert pretrained.load(name).cfg.dim_x >= hi
            arch = card.get("arch", "cmanp")
            assert all(pretrained.default_bo_name(d, arch) == name for d in range(lo, hi + 1))


def test_soft_cap_keeps_ordinary_losses_and_bounds_outliers():
    from cmanp_bo.nn.process import soft_cap

    loss = torch.tensor([-2.0, 0.5, 3.0, 1e4], requires_grad=True)
    capped = soft_cap(loss, 10.0)
    assert torch.allclose(capped[:3], loss[:3], atol=0.05)
    assert capped[3] < 100  # 1e4 nats -> about 76
    capped.sum().backward()
    assert (loss.grad <= 1).all() and loss.grad[3] < 0.01
    with pytest.raises(ValueError, match="positive"):
        soft_cap(loss, 0.0)


def test_loss_cap_and_warm_start(tmp_path):
    base = dict(prior="bo", prior_options={"max_dim": 2}, batch_size=2, eval_every=3)
    cfg = TrainConfig(steps=3, eval_batches=1, model={**TINY, "dim_x": 2}, **base)
    first = train(cfg, tmp_path / "a", progress=False)
    warm_cfg = TrainConfig(
        steps=2, eval_batches=1, model={**TINY, "dim_x": 2}, loss_cap=5.0,
        init_from=str(first), **{**base, "eval_every": 100},
    )  # fmt: skip
    fresh = tiny_net(dim_x=2, joint_head=False)
    _warm_start(fresh, warm_cfg)  # what a new run with init_from starts from
    for k, v in load_checkpoint(first).state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    done = train(warm_cfg, tmp_path / "b", progress=False)
    card = read_card(done)
    assert card["loss_cap"] == 5.0 and card["init_from"] == str(first)
    with pytest.raises(ValueError, match="pass the same --arch/--model"):
        bad = TrainConfig(steps=1, model={**TINY, "num_layers": 3}, init_from=str(first), **base)
        train(bad, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="more than this run's 1"):
        bad = TrainConfig(steps=1, model={**TINY, "dim_x": 1}, init_from=str(first), **base)
        train(bad, tmp_path / "c", progress=False)


def test_warm_start_widens_the_inputs_without_changing_predictions(tmp_path):
    from cmanp_bo.train import widen_inputs

    small = tiny_net(dim_x=2, joint_head=True, fourier_features=8)
    torch.manual_seed(3)
    wide = CMANP(CMANPConfig(**{**TINY, "dim_x": 5, "joint_head": True, "fourier_features": 8}))
    fresh_rows = wide.fourier_matrix[2:].clone()
    wide.load_state_dict(widen_inputs(small.state_dict(), wide.state_dict(), small.cfg))
    assert torch.equal(wide.fourier_matrix[2:], fresh_rows)  # new dimensions: fresh frequencies
    x, y, xt = torch.rand(3, 9, 2), torch.randn(3, 9, 1), torch.rand(3, 4, 2)
    pad = lambda t: torch.nn.functional.pad(t, (0, 3))  # noqa: E731
    with torch.no_grad():
        a = small.predict(small.encode(x, y), xt)
        b = wide.predict(wide.encode(pad(x), y), pad(xt))
    assert torch.allclose(a.mean, b.mean, atol=1e-5) and torch.allclose(a.stddev, b.stddev)
    # a run's last.pt is a valid source too, and --model only needs the new dim_x
    cfg = TrainConfig(prior="bo", prior_options={"max_dim": 2}, steps=2, batch_size=2,
                      eval_every=2, eval_batches=1, model={**TINY, "dim_x": 2})  # fmt: skip
    train(cfg, tmp_path / "run", progress=False)
    from cmanp_bo.cli import main as cli_main

    cli_main(["train", "--out", str(tmp_path / "wide"), "--prior", "bo", "--prior-options",
              '{"max_dim": 4, "min_dim": 3}', "--init-from", str(tmp_path / "run" / "last.pt"),
              "--model", '{"dim_x": 4}', "--steps", "2", "--batch-size", "2", "--eval-every", "2",
              "--eval-batches", "1"])  # fmt: skip
    card = read_card(tmp_path / "wide" / "model.pt")
    assert card["config"]["dim_x"] == 4 and card["config"]["d_model"] == TINY["d_model"]


def test_cli_checkpoints_lists_cards_and_the_default_per_dimension(capsys):
    from cmanp_bo.cli import main as cli_main

    cli_main(["checkpoints"])
    out = capsys.readouterr().out
    for name in pretrained.available():
        assert out.count(f"{name} {{") == 1
    for d in range(1, 11):
        assert f"  d={d}: {pretrained.default_bo_name(d)}\n" in out
