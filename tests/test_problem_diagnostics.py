"""The problem-side diagnostics: experiments/problem_fit.py and fitted_lengthscales.py."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cmanp_bo.checkpoint import save_checkpoint
from cmanp_bo.nn import CMANP, CMANPConfig
from tests.helpers import load_experiment


def _load(name: str):
    return load_experiment(name)


def test_prior_share_below_is_the_mixture_cdf():
    fl = _load("fitted_lengthscales")
    median = math.exp(math.sqrt(2) + 0.5 * math.log(4))
    assert fl.prior_share_below(median, 4, 0.0, 16.0) == pytest.approx(0.5)
    # the short component has its median at median / 16: half of it lies below that value
    low = fl.prior_share_below(median / 16, 4, 1.0, 16.0)
    assert low == pytest.approx(0.5)
    mixed = fl.prior_share_below(median / 16, 4, 0.5, 16.0)
    plain = fl.prior_share_below(median / 16, 4, 0.0, 16.0)
    assert mixed == pytest.approx(0.5 * plain + 0.25) and plain < 0.1


def test_problem_fit_scores_the_gp_and_a_checkpoint(tmp_path):
    pf = _load("problem_fit")
    torch.manual_seed(0)
    cfg = CMANPConfig(
        dim_x=2, d_model=16, d_ff=32, embed_depth=2, num_layers=1, num_latents=8,
        num_block_latents=8, num_heads=2,
    )  # fmt: skip
    path = tmp_path / "tiny.pt"
    save_checkpoint(CMANP(cfg).eval(), path)
    out = tmp_path / "fit.json"
    pf.main(["--checkpoint", str(path), "--problems", "branin", "--n", "20", "--seeds", "1",
             "--out", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1 and rows[0]["problem"] == "branin" and rows[0]["n"] == 20
    assert rows[0]["gp"] > 0.7  # a fitted GP ranks branin's cube well from 20 points
    assert -1.0 <= rows[0][str(path)] <= 1.0  # an untrained network: any value, but a number
    assert rows[0]["gp:context_corr"] > 0.9 and rows[0]["gp:context_std_ratio"] < 0.2
    assert rows[0][f"{path}:context_std_ratio"] > 0


def test_copy_runs_moves_runs_with_their_steps_once(tmp_path):
    from cmanp_bo.bench.store import ResultStore, RunKey

    copy = _load("copy_runs")
    src, dest = tmp_path / "src.sqlite", tmp_path / "dest.sqlite"
    store = ResultStore(src)
    run = dict(
        dim=2, budget=3, num_evals=3, stopped=None, best_value=0.5, optimal_value=0.0,
        wall_s=1.0, surrogate_s=0.5, peak_rss_mb=None, hardware="cpu", finished="now",
    )  # fmt: skip
    step = dict(
        step=1, x=[0.25, 0.75], value=1.0, best=1.0, regret=1.0, score=None, surrogate_s=0.0,
        cum_surrogate_s=0.0, cum_wall_s=0.1, rss_mb=None,
    )  # fmt: skip
    for surrogate, problem in (("gp", "branin"), ("cmanp", "branin"), ("gp", "levy4")):
        key = RunKey.make("standard", problem, surrogate, 0, {"a": 1})
        store.add(key, run, [step, {**step, "step": 2, "x": [0.5, 0.5]}])
    store.close()
    ResultStore(dest).close()
    assert copy.copy_runs(src, dest, surrogates={"gp"}, problems={"branin"}) == 1
    assert copy.copy_runs(src, dest, surrogates={"gp"}, problems={"branin"}) == 0  # no copies
    assert copy.copy_runs(src, dest) == 2  # the other two
    out = ResultStore(dest)
    runs = out.runs("standard")
    assert sorted((r["surrogate"], r["problem"]) for r in runs) == [
        ("cmanp", "branin"),
        ("gp", "branin"),
        ("gp", "levy4"),
    ]
    steps = out.steps(runs[0]["id"])
    assert [json.loads(s["x"]) for s in steps] == [[0.25, 0.75], [0.5, 0.5]]  # not re-encoded
    assert runs[0]["settings"] == json.dumps({"a": 1})
    out.close()
    with pytest.raises(FileNotFoundError):
        copy.copy_runs(tmp_path / "missing.sqlite", dest)


def test_incumbent_probe_reads_histories_and_measures_the_neighbourhood(tmp_path):
    from botorch.models import SingleTaskGP

    from cmanp_bo.bench.store import ResultStore, RunKey

    ip = _load("incumbent_probe")
    store = ResultStore(tmp_path / "r.sqlite")
    settings = {"acquisition": {"num_restarts": 2, "raw_samples": 16}, "options": {}}
    for seed in (0, 1):
        key = RunKey.make("standard", "branin", "gp", seed, settings)
        run = {"dim": 2, "budget": 3, "num_evals": 3, "stopped": None, "best_value": 0.0}
        run |= {"optimal_value": 0.0, "wall_s": 1.0, "surrogate_s": 0.0}
        run |= {"peak_rss_mb": None, "hardware": "test", "finished": "2026-12-02"}
        steps = [
            {"step": i + 1, "x": [0.1 * i, 0.5], "value": 3.0 - i, "best": 3.0 - i}
            | {"regret": None, "score": None, "surrogate_s": 0.0, "cum_surrogate_s": 0.0}
            | {"cum_wall_s": 0.0, "rss_mb": None}
            for i in range(3)
        ]
        store.add(key, run, steps)
    import sqlite3

    runs = ip.histories(sqlite3.connect(tmp_path / "r.sqlite"), "branin", "gp", seeds=1)
    assert list(runs) == [0]  # seeds below --seeds only
    X, y, acquisition = runs[0]
    assert X.shape == (3, 2) and y.tolist() == [3.0, 2.0, 1.0] and acquisition["raw_samples"] == 16
    # a GP fitted to a noise-free bowl: the incumbent has the best mean, and std grows away
    from botorch.fit import fit_gpytorch_mll
    from gpytorch.mlls import ExactMarginalLogLikelihood

    torch.manual_seed(0)
    X = torch.rand(30, 2, dtype=torch.float64)
    Y = -(X - 0.5).pow(2).sum(-1, keepdim=True)
    gp = SingleTaskGP(X, Y)
    fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
    gp.eval()
    best = int(Y.argmax())
    row = ip.neighbourhood(gp, X, Y, best, ip._directions(2, torch.Generator().manual_seed(0)))
    assert row["mean_best"]
    assert row["std0"] < row["std@0.3"]
    assert row["mean_drop@0.3"] > row["mean_drop@0.01"]
    # with the truth, the local rank correlation of a good fit's mean is high
    row = ip.neighbourhood(
        gp,
        X,
        Y,
        best,
        ip._directions(2, torch.Generator().manual_seed(0)),
        truth=lambda p: -(p - 0.5).pow(2).sum(-1),
    )
    assert row["local_corr@0.3"] > 0.9
    reversed_ranks = ip.rank_correlation(
        torch.tensor([1.0, 2.0, 3.0]), torch.tensor([9.0, 5.0, 0.0])
    )
    assert reversed_ranks == pytest.approx(-1.0)


def test_warp_noise_measures_the_models_noise_under_each_warp(tmp_path):
    wn = _load("warp_noise")
    torch.manual_seed(0)
    X = torch.rand(12, 2, dtype=torch.float64)
    y = -(X - 0.4).pow(2).sum(-1)
    for warp in wn.WARPS:  # a ratio of stds: the outcomes' scale and offset do not matter
        a, b = (
            wn.model_noise(2, X, y, warp, "default"),
            wn.model_noise(2, X, 5 * y - 3, warp, "default"),
        )
        assert 0 < a < 1 and a == pytest.approx(b, rel=1e-6)
    # the rank warp sees only the order: a monotone map of the outcomes leaves it unchanged
    rank = wn.model_noise(2, X, y, "rank", "default")
    assert rank == pytest.approx(wn.model_noise(2, X, torch.exp(4 * y), "rank", "default"))
    out = tmp_path / "w.json"
    wn.main(["--dims", "2", "--sizes", "8", "--tasks", "2", "--problems", "--out", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["data"] == "prior" and row["d"] == 2 and row["n"] == 8 and row["tasks"] == 2
    assert all(0 < row[w] < 1 for w in ("None", "rank", "power"))
