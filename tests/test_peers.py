"""The neural-process peers TNP-D and LBANP: same interface and heads as CMANP, re-encoding update,
training, checkpoints by architecture name, and the BoTorch wrapper."""

from __future__ import annotations

import json

import pytest
import torch
from botorch.acquisition import qLogNoisyExpectedImprovement
from botorch.exceptions.errors import UnsupportedError
from botorch.sampling import SobolQMCNormalSampler
from helpers import small_net
from hypothesis import given, settings
from hypothesis import strategies as st

from cmanp_bo import CMANPModel
from cmanp_bo.architectures import ARCHITECTURES, build_network, network_class
from cmanp_bo.botorch_model import StateCache
from cmanp_bo.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, sha256_of
from cmanp_bo.nn import CMANP, CMANPConfig
from cmanp_bo.train import TrainConfig, evaluate, main, train
from surrogates.lbanp import LBANP, LBANPState
from surrogates.tnp import TNPD, TNPState

DTYPE = torch.float64
PEERS = ("tnp", "lbanp")
TOL = 1e-10


def net_of(arch: str, joint_head: bool = True, **kw) -> torch.nn.Module:
    """A tiny float64 network with Fourier features (shared input path exercised too)."""
    return small_net(
        dim_x=2, joint_head=joint_head, dtype=DTYPE, arch=arch, fourier_features=3, **kw
    )


def points(n: int, *batch: int, seed: int = 0, dim_y: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*batch, n, 2, generator=g, dtype=DTYPE)
    y = torch.sin(6 * x).sum(-1, keepdim=True).expand(*batch, n, dim_y) + 0.1 * torch.randn(
        *batch, n, dim_y, generator=g, dtype=DTYPE
    )
    return x, y


def outputs(net, state, xq: torch.Tensor) -> list[torch.Tensor]:
    p = net.predict(state, xq)
    return [p.mean, p.stddev, *net.joint_moments(state, xq)]


def assert_outputs_close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = TOL) -> None:
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, atol=atol, rtol=0)


# ----------------------------------------------------------------------------------- network
def test_architectures_by_name():
    assert ARCHITECTURES == ("cmanp", "tnp", "lbanp")
    assert [network_class(a) for a in ARCHITECTURES] == [CMANP, TNPD, LBANP]
    assert [network_class(a).arch for a in ARCHITECTURES] == list(ARCHITECTURES)
    assert [network_class(a).incremental_update for a in ARCHITECTURES] == [True, False, False]
    with pytest.raises(ValueError, match="unknown architecture 'gp'.*cmanp, tnp, lbanp"):
        network_class("gp")


@pytest.mark.parametrize("arch", PEERS)
def test_shapes(arch):
    net = net_of(arch)
    x, y = points(10, 3)
    state = net.encode(x, y)
    assert state.num_points == 10 and state.batch_shape == (3,)
    layers = {"tnp": (3, 10, 16), "lbanp": (3, 8, 16)}[arch]  # context tokens / latents
    assert [tuple(t.shape) for t in net.representations(state)] == [layers] * 2
    xq = points(5, 3, seed=1)[0]
    p = net.predict(state, xq)
    assert p.mean.shape == p.stddev.shape == (3, 5, 1) and (p.stddev > 0).all()
    mean, cov, noise_var = net.joint_moments(state, xq)
    assert mean.shape == noise_var.shape == (3, 5) and cov.shape == (3, 5, 5)
    # targets broadcast against the state's batch shape
    assert net.predict(state, xq.expand(4, 3, 5, 2)).mean.shape == (4, 3, 5, 1)
    # marginal head with two outputs
    marginal = net_of(arch, joint_head=False, dim_y=2)
    p2 = marginal.predict(marginal.encode(*points(10, 3, dim_y=2)), xq)
    assert p2.mean.shape == (3, 5, 2)
    with pytest.raises(RuntimeError, match="no joint head"):
        marginal.joint_moments(marginal.encode(*points(10, 3, dim_y=2)), xq)


@pytest.mark.parametrize("arch", PEERS)
def test_joint_covariance_is_psd_and_consistent_with_the_marginals(arch):
    net = net_of(arch)
    state = net.encode(*points(12, 2))
    xq = points(7, 2, seed=3)[0]
    xq = torch.cat([xq, xq[:, :1]], dim=1)  # a repeated target
    mean, cov, noise_var = net.joint_moments(state, xq)
    torch.testing.assert_close(cov, cov.transpose(-1, -2), atol=1e-14, rtol=0)
    assert torch.linalg.eigvalsh(cov).min() > -1e-10
    marginal = net.predict(state, xq)
    torch.testing.assert_close(mean, marginal.mean.squeeze(-1), atol=TOL, rtol=0)
    var = torch.diagonal(cov, dim1=-2, dim2=-1) + noise_var
    torch.testing.assert_close(var, marginal.variance.squeeze(-1), atol=TOL, rtol=0)
    # identical inputs are perfectly correlated (correlation exactly 1)
    torch.testing.assert_close(cov[:, 0, -1], cov[:, 0, 0], atol=TOL, rtol=0)
    # marginalisation: the joint over a subset is the sub-block of the joint over all
    idx = torch.tensor([4, 1, 6])
    _, sub_cov, _ = net.joint_moments(state, xq[:, idx])
    torch.testing.assert_close(sub_cov, cov[:, idx][:, :, idx], atol=TOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_update_equals_encode_of_the_union(arch):
    net = net_of(arch)
    x, y = points(15, 2)
    xq = points(6, 2, seed=2)[0]
    reference = outputs(net, net.encode(x, y), xq)
    old = net.encode(x[:, :9], y[:, :9])
    new = net.update(old, x[:, 9:], y[:, 9:])
    assert new.num_points == 15 and old.num_points == 9
    assert_outputs_close(outputs(net, new, xq), reference)
    # from the empty state, and through the streamed encode (block_size is accepted by all)
    assert_outputs_close(outputs(net, net.update(net.empty_state((2,)), x, y), xq), reference)
    assert_outputs_close(outputs(net, net.encode(x, y, block_size=4), xq), reference)


@pytest.mark.parametrize("arch", PEERS)
def test_update_broadcasts_fantasies(arch):
    net = net_of(arch)
    x, y = points(8, 3)
    state = net.encode(x, y)
    xf = points(2, 3, seed=4)[0]
    yf = torch.randn(5, 3, 2, 1, dtype=DTYPE)  # 5 fantasies of each batch's 2 points
    fantasy = net.update(state, xf, yf)
    assert fantasy.batch_shape == (5, 3) and fantasy.num_points == 10
    xq = points(4, 3, seed=5)[0]
    one = net.encode(torch.cat([x, xf], dim=1), torch.cat([y, yf[2]], dim=1))
    torch.testing.assert_close(
        net.predict(fantasy, xq).mean[2], net.predict(one, xq).mean, atol=TOL, rtol=0
    )
    assert fantasy.expand((2, 5, 3)).batch_shape == (2, 5, 3)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 12), data=st.data(), arch=st.sampled_from(PEERS))
def test_update_is_independent_of_the_split(n, data, arch):
    net = net_of(arch)
    x, y = points(n, 1, seed=n)
    k = data.draw(st.integers(1, n - 1))
    xq = points(3, 1, seed=7)[0]
    split = net.update(net.encode(x[:, :k], y[:, :k]), x[:, k:], y[:, k:])
    assert_outputs_close(outputs(net, split, xq), outputs(net, net.encode(x, y), xq))


@pytest.mark.parametrize("arch", PEERS)
def test_empty_state_is_the_same_prior_everywhere_in_the_batch(arch):
    net = net_of(arch)
    empty = net.empty_state((2,))
    assert empty.num_points == 0 and empty.batch_shape == (2,)
    xq = points(4)[0]
    p = net.predict(empty, xq.expand(2, 4, 2))
    assert torch.isfinite(p.mean).all() and torch.isfinite(p.stddev).all()
    torch.testing.assert_close(p.mean[0], p.mean[1], atol=TOL, rtol=0)
    torch.testing.assert_close(p.mean[0], net.predict(net.empty_state(), xq).mean, atol=TOL, rtol=0)


def test_peer_errors_are_clear():
    tnp, lbanp = net_of("tnp"), net_of("lbanp")
    x, y = points(5, 2)
    state = tnp.encode(x, y)
    with pytest.raises(TypeError, match="state must be a TNPState, got LBANPState"):
        tnp.predict(lbanp.encode(x, y), x)
    with pytest.raises(TypeError, match="state must be a LBANPState, got ContextState"):
        lbanp.update(net_of("cmanp").encode(x, y), x, y)
    with pytest.raises(ValueError, match="block_size"):
        tnp.encode(x, y, block_size=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        tnp.update(state, x.index_fill(1, torch.tensor([0]), float("nan")), y)
    with pytest.raises(ValueError, match="dim_x=2"):
        lbanp.encode(torch.rand(2, 5, 3, dtype=DTYPE), y)
    with pytest.raises(ValueError, match="batch shapes do not match"):
        tnp.update(state, *points(2, 4))
    with pytest.raises(TypeError, match="dtype"):
        tnp.float().predict(state, x.float())
    assert state.num_points == 5  # failed updates left it alone


def test_tnp_state_keeps_its_public_fields():
    # experiments/scaling.py builds TNPState(x, y, tokens) and reads .tokens
    x, y, t = torch.zeros(1, 3, 1), torch.zeros(1, 3, 1), (torch.ones(1, 3, 4),)
    state = TNPState(x, y, t)
    assert state.tokens is t and state.num_points == 3 and state.numel() == 18
    assert LBANPState(x, y, t).latents is t


# ----------------------------------------------------------------------------------- training
TINY = dict(d_model=16, d_ff=32, num_heads=2, num_layers=2, num_latents=8, embed_depth=2, dim_x=2)


def bo_config(arch: str, steps: int = 30) -> TrainConfig:
    return TrainConfig(
        prior="bo",
        prior_options={"max_dim": 2, "max_context": 16, "num_targets": 8},
        steps=steps,
        batch_size=8,
        lr=3e-3,
        eval_every=steps,
        eval_batches=4,
        model={**TINY, "joint_head": True},
        arch=arch,
    )


@pytest.mark.parametrize("arch", PEERS)
def test_training_on_the_bo_prior_and_checkpoint_roundtrip(arch, tmp_path):
    cfg = bo_config(arch)
    torch.manual_seed(cfg.seed)
    before, _ = evaluate(build_network(arch, cfg.model), cfg, 4)
    path = train(cfg, tmp_path, progress=False)
    net = load_checkpoint(path, dtype=DTYPE)
    assert type(net) is network_class(arch) and not net.training
    after, _ = evaluate(net.float(), cfg, 4)
    assert after > before + 1.0  # the untrained joint head is far off; 30 steps fix a lot
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["arch"] == arch and card["config"]["dim_x"] == 2
    # the checkpoint predicts exactly as the trained weights (kept in last.pt) do
    trained = build_network(arch, cfg.model)
    trained.load_state_dict(torch.load(tmp_path / "last.pt", weights_only=False)["model"])
    trained = trained.double().eval()
    net = net.double()
    x, y = points(9, 2)
    xq = points(5, 2, seed=1)[0]
    with torch.no_grad():
        assert_outputs_close(
            outputs(net, net.encode(x, y), xq), outputs(trained, trained.encode(x, y), xq), atol=0
        )


def test_command_line_arch(tmp_path):
    main(
        [
            "--out", str(tmp_path), "--arch", "lbanp", "--prior", "bo", "--steps", "2",
            "--batch-size", "2", "--eval-every", "2", "--eval-batches", "1",
            "--prior-options", '{"max_dim": 2, "max_context": 8, "num_targets": 4}',
            "--model", json.dumps(TINY),
        ]
    )  # fmt: skip
    assert isinstance(load_checkpoint(tmp_path / "model.pt"), LBANP)
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--arch", "gp"])


def test_old_run_without_arch_resumes_as_cmanp(tmp_path):
    cfg = bo_config("cmanp", steps=4)
    train(cfg, tmp_path, progress=False, stop_after=2)
    last = torch.load(tmp_path / "last.pt", weights_only=False)
    assert last["train_config"].pop("arch") == "cmanp"
    torch.save(last, tmp_path / "last.pt")  # as written before the field existed
    with pytest.raises(ValueError, match="different configuration"):
        train(bo_config("tnp", steps=4), tmp_path, progress=False)
    assert isinstance(load_checkpoint(train(cfg, tmp_path, progress=False)), CMANP)


def test_checkpoint_arch_field(tmp_path):
    net = net_of("lbanp").float()
    save_checkpoint(net, tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=True)["arch"] == "lbanp"

    def rewrite(change) -> None:
        payload = torch.load(tmp_path / "m.pt", weights_only=True)
        change(payload)
        torch.save(payload, tmp_path / "m.pt")
        card = json.loads((tmp_path / "m.json").read_text())
        card["sha256"] = sha256_of(tmp_path / "m.pt")
        (tmp_path / "m.json").write_text(json.dumps(card))

    rewrite(lambda p: p.update(arch="transformer"))
    with pytest.raises(CheckpointError, match="unknown architecture 'transformer'"):
        load_checkpoint(tmp_path / "m.pt")
    # a file without the field is a CMANP (all files written before it existed are)
    save_checkpoint(net_of("cmanp").float(), tmp_path / "m.pt")
    rewrite(lambda p: p.pop("arch"))
    assert type(load_checkpoint(tmp_path / "m.pt")) is CMANP


# ----------------------------------------------------------------------------------- BoTorch
@pytest.mark.parametrize("arch", PEERS)
def test_botorch_model_with_a_peer(arch, tmp_path):
    net = small_net(arch=arch)  # float32, as a checkpoint stores it
    X, Y = points(8)
    model = CMANPModel(X, Y, checkpoint=net)
    assert type(model.network) is type(net) and model.network is not net
    posterior = model.posterior(torch.rand(3, 4, 2, dtype=DTYPE))
    assert posterior.mean.shape == (3, 4, 1)
    samples = posterior.rsample(torch.Size([5]))
    assert samples.shape == (5, 3, 4, 1) and torch.isfinite(samples).all()
    acqf = qLogNoisyExpectedImprovement(
        model, X_baseline=X, sampler=SobolQMCNormalSampler(torch.Size([16]))
    )
    assert torch.isfinite(acqf(torch.rand(2, 3, 2, dtype=DTYPE))).all()

    # conditioning adds the points: the same model as one built on all of them (same frame)
    Xn, Yn = points(3, seed=9)
    updated = model.condition_on_observations(Xn, Yn)
    assert updated.num_points == 11 and model.num_points == 8
    assert updated.num_embedded == 11  # a peer re-encodes everything
    fresh = CMANPModel(
        torch.cat([X, Xn]), torch.cat([Y, Yn]), checkpoint=net, outcome_frame=model.outcome_frame
    )
    Xq = torch.rand(4, 2, dtype=DTYPE)
    a, b = updated.posterior(Xq).distribution, fresh.posterior(Xq).distribution
    torch.testing.assert_close(a.mean, b.mean, atol=TOL, rtol=0)
    torch.testing.assert_close(a.covariance_matrix, b.covariance_matrix, atol=TOL, rtol=0)

    # fantasies
    fantasy = model.fantasize(Xn[:2], SobolQMCNormalSampler(torch.Size([4])))
    assert fantasy.batch_shape == (4,) and fantasy.num_points == 10

    # from a checkpoint file: same class, same posterior
    save_checkpoint(net, tmp_path / "peer.pt")
    from_path = CMANPModel(X, Y, checkpoint=str(tmp_path / "peer.pt"))
    assert type(from_path.network) is type(net)
    torch.testing.assert_close(
        from_path.posterior(Xq).mean, model.posterior(Xq).mean, atol=0, rtol=0
    )


def test_state_cache_counts_reencoded_points_for_a_peer(tmp_path):
    # the cache keys on the network's identity: a path is loaded once and shared
    save_checkpoint(small_net(arch="tnp"), tmp_path / "tnp.pt")
    ckpt = str(tmp_path / "tnp.pt")
    X, Y = points(12, seed=3)
    cache = StateCache()
    CMANPModel(X[:9], Y[:9], checkpoint=ckpt, state_cache=cache)
    model = CMANPModel(X[:11], Y[:11], checkpoint=ckpt, state_cache=cache)
    record = cache.records[-1]
    assert (record.embedded, record.reused, record.rebased) == (11, 0, False)
    assert model.num_embedded == 11
    fresh = CMANPModel(X[:11], Y[:11], checkpoint=ckpt, state_cache=StateCache())
    Xq = torch.rand(3, 2, dtype=DTYPE)
    torch.testing.assert_close(model.posterior(Xq).mean, fresh.posterior(Xq).mean, atol=TOL, rtol=0)


def test_unsupported_checkpoint_type_names_the_networks():
    X, Y = points(4)
    with pytest.raises(UnsupportedError, match="CMANP, surrogates.tnp.TNPD or surrogates.lbanp"):
        CMANPModel(X, Y, checkpoint=torch.nn.Linear(2, 1))
    assert CMANPConfig().num_latents == 128  # the peers share the config and its defaults
