"""The quality-report script experiments/prior_fit.py on a tiny random network and grid."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from cmanp_bo.checkpoint import save_checkpoint
from cmanp_bo.nn import CMANP, CMANPConfig

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "prior_fit.py"


@pytest.fixture(scope="module")
def pf():
    spec = importlib.util.spec_from_file_location("prior_fit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["prior_fit"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    cfg = CMANPConfig(
        dim_x=3,
        d_model=16,
        d_ff=32,
        embed_depth=2,
        num_layers=1,
        num_latents=8,
        num_block_latents=8,
        joint_head=True,
    )
    return CMANP(cfg).eval()


@pytest.fixture(scope="module")
def cell(pf, tiny_net):
    pool = pf.sample_pool(2, 12, targets=32, pool_n=64)
    rows, seconds = pf.evaluate_cell(tiny_net, 2, 16, 12, tasks_gp=2, targets=32, pool=pool)
    return rows, seconds


def _mean(rows, model, key="ll"):
    vals = [float(r[key]) for r in rows if r["model"] == model]
    return sum(vals) / len(vals)


def test_cell_rows_columns_and_coverage(pf, cell):
    rows, seconds = cell
    assert all(set(r) == set(pf.COLUMNS) for r in rows)
    counts = {m: sorted(r["task"] for r in rows if r["model"] == m) for m in pf.MODELS}
    for model in ("cmanp_marginal", "cmanp_joint", "exact_gp_marginal", "exact_gp_joint"):
        assert counts[model] == list(range(12)), model
    assert counts["fitted_gp_marginal"] == counts["fitted_gp_joint"] == [0, 1]
    assert seconds["tasks_gp"] == 2 and seconds["fitted_gp"] > 0
    for r in rows:
        assert (r["d"], r["n"]) == (2, 16) and math.isfinite(r["ll"])
        assert 1 <= r["relevant_dims"] <= 2 and r["noise_std"] > 0
        if r["model"].endswith("_joint"):
            assert r["cover50"] == r["cover90"] == ""
        else:
            assert 0 <= r["cover50"] <= r["cover90"] <= 1
    assert {r["fit_ok"] for r in rows if r["model"].startswith("fitted")} <= {0, 1}
    # every task draws its own kernel
    assert {r["kernel"] for r in rows} == {"rbf", "matern"}


def test_ceiling_beats_wrong_models_and_is_calibrated(cell):
    rows, _ = cell
    ceiling = _mean(rows, "exact_gp_marginal")
    # a random network and N(0, 1) ignoring x are trivially wrong models: far below the truth
    assert ceiling > _mean(rows, "cmanp_marginal") + 0.5
    assert ceiling > _mean(rows, "standard_normal") + 0.5
    by_task = {
        (r["model"], r["task"]): float(r["ll"]) for r in rows if r["model"].startswith("exact")
    }
    wins = sum(
        by_task["exact_gp_marginal", t] > _task(rows, "standard_normal", t) for t in range(12)
    )
    assert wins >= 10
    # the true posterior's intervals hold their nominal share (12 tasks x 32 targets)
    assert abs(_mean(rows, "exact_gp_marginal", "cover50") - 0.5) < 0.1
    assert abs(_mean(rows, "exact_gp_marginal", "cover90") - 0.9) < 0.07
    # the fitted GP cannot beat the truth by much on the same tasks
    for t in (0, 1):
        assert _task(rows, "fitted_gp_marginal", t) < by_task["exact_gp_marginal", t] + 0.3


def _task(rows, model, task):
    return next(float(r["ll"]) for r in rows if r["model"] == model and r["task"] == task)


def test_exact_gp_matches_conditioning_the_full_joint(pf):
    """The ceiling equals conditioning the generating joint Gaussian (context + targets)."""
    from cmanp_bo.priors import bo_kernel

    for batch in pf.sample_pool(3, 4, targets=5, seed=7, pool_n=10):
        mean, cov = pf.exact_gp_posterior(batch)
        x = torch.cat([batch.xc, batch.xt], 1)
        y = torch.cat([batch.yc, batch.yt], 1).squeeze(-1)
        s2 = batch.signal_std[:, None, None] ** 2
        eye = torch.eye(x.shape[1], dtype=torch.float64)
        full = s2 * (bo_kernel(batch.kernel, x, x, batch.lengthscales) + 1e-8 * eye)
        full = full + batch.noise_std[:, None, None] ** 2 * eye
        c, t = slice(0, 10), slice(10, 15)
        gain = torch.linalg.solve(full[:, c, c], full[:, c, t]).transpose(-1, -2)
        ref_mean = batch.mean[:, None] + (gain @ (y[:, c] - batch.mean[:, None])[..., None])[..., 0]
        ref_cov = full[:, t, t] - gain @ full[:, c, t]
        torch.testing.assert_close(mean, ref_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cov, ref_cov, rtol=1e-5, atol=1e-8)
        joint = pf.mvn_log_likelihood(mean, cov, y[:, t])
        ref = torch.distributions.MultivariateNormal(ref_mean, ref_cov).log_prob(y[:, t]) / 5
        torch.testing.assert_close(joint, ref)


@pytest.mark.parametrize("kind", ["rbf", "matern"])
def test_prior_kernel_matches_the_pairwise_definition(kind):
    from cmanp_bo.priors import bo_kernel

    g = torch.Generator().manual_seed(1)
    x1 = torch.rand(3, 40, 4, generator=g, dtype=torch.float64)
    x2 = torch.cat([x1[:, :5], torch.rand(3, 7, 4, generator=g, dtype=torch.float64)], 1)
    ls = torch.exp(torch.randn(3, 4, generator=g, dtype=torch.float64))
    ls[0, 1] = ls[2, 3] = math.inf
    r = ((x1.unsqueeze(-2) - x2.unsqueeze(-3)) / ls[:, None, None, :]).pow(2).sum(-1).sqrt()
    if kind == "rbf":
        ref = torch.exp(-0.5 * r**2)
    else:
        r = math.sqrt(5.0) * r
        ref = (1 + r + r**2 / 3) * torch.exp(-r)
    torch.testing.assert_close(bo_kernel(kind, x1, x2, ls), ref, rtol=0, atol=1e-13)
    assert (bo_kernel(kind, x1, x1, ls).diagonal(dim1=-2, dim2=-1) == 1).all()


def test_pool_is_a_prefix_stream_and_per_dim(pf):
    a = pf.sample_pool(2, 20, targets=4, pool_n=8)
    b = pf.sample_pool(2, 3, targets=4, pool_n=8)
    assert len(a) == 20 and len(b) == 3 and all(x.xc.shape == (1, 8, 2) for x in a)
    for x, y in zip(a, b):
        assert torch.equal(x.yc, y.yc) and torch.equal(x.xt, y.xt) and x.kernel == y.kernel
    assert {x.kernel for x in a} == {"rbf", "matern"}  # every task draws its kernel
    other = pf.sample_pool(3, 3, targets=4, pool_n=8)[0]
    assert not torch.equal(other.xc[..., :2], b[0].xc)


def test_context_prefix_is_the_same_task_in_its_own_frame(pf):
    """Smaller cells reuse the functions and targets of the pool, re-framed exactly: the
    ceiling on the prefix equals the ceiling in the pool's frame plus the log-Jacobian."""
    pool = pf.sample_pool(2, 6, targets=16, seed=3, pool_n=40)
    for full in pool:
        part = pf.context_prefix(full, 7)
        assert torch.equal(part.xc, full.xc[:, :7]) and torch.equal(part.xt, full.xt)
        torch.testing.assert_close(part.yc.mean(1), torch.zeros(1, 1, dtype=torch.float64))
        torch.testing.assert_close(part.yc.std(1), torch.ones(1, 1, dtype=torch.float64))
        scale = full.yc[:, :7].std(1).squeeze()  # the prefix frame in pool-frame units
        # the pool's task restricted to 7 context points, still in the pool's frame
        same = pf.BOBatch(
            full.xc[:, :7], full.yc[:, :7], full.xt, full.yt, 2, full.lengthscales,
            full.noise_std, full.kernel, full.signal_std, full.mean,
        )  # fmt: skip
        mean, cov = pf.exact_gp_posterior(part)
        mean0, cov0 = pf.exact_gp_posterior(same)
        ll = pf.gaussian_scores(mean, cov.diagonal(dim1=-2, dim2=-1).sqrt(), part.yt[..., 0])[0]
        ll0 = pf.gaussian_scores(mean0, cov0.diagonal(dim1=-2, dim2=-1).sqrt(), full.yt[..., 0])
        torch.testing.assert_close(ll, ll0[0] + scale.log())
        assert pf.context_prefix(full, 40) is full
    with pytest.raises(ValueError):
        pf.context_prefix(pool[0], 41)


def _rows(cells):
    """Synthetic rows: ``{(d, n, model): (ll per task, cover50, cover90)}``."""
    out = []
    for (d, n, model), (lls, c50, c90) in cells.items():
        for task, ll in enumerate(lls):
            marginal = model.endswith("marginal")
            out.append(
                {
                    "d": d,
                    "n": n,
                    "task": task,
                    "model": model,
                    "ll": ll,
                    "cover50": c50 if marginal else "",
                    "cover90": c90 if marginal else "",
                    "seconds": 0.0,
                    "fit_ok": 1 if model.startswith("fitted") else "",
                }
            )
    return out


def test_target_checks_pass_fail_and_shortfall(pf):
    good = (0.5, 0.9)
    rows = _rows(
        {
            (1, 16, "cmanp_marginal"): ([1.0, 1.2, 1.1, 0.9], *good),
            (1, 16, "exact_gp_marginal"): ([1.2, 1.4, 1.3, 1.1], *good),  # gap 0.2 > 0.15
            (1, 16, "fitted_gp_marginal"): ([0.8, 1.3], 0.52, 0.84),  # only 2 tasks, paired
            (1, 256, "cmanp_marginal"): ([2.0, 2.0], *good),
            (1, 256, "exact_gp_marginal"): ([2.5, 2.5], *good),
            (1, 1024, "cmanp_marginal"): ([1.9, 1.9], *good),  # drops by 0.1 > 0.05
            (1, 1024, "exact_gp_marginal"): ([3.0, 3.0], *good),
        }
    )
    checks = pf.target_checks(rows, dims=(1, 2), sizes=(16, 256, 1024))
    beat = checks["cmanp_ge_fitted_gp"]
    assert beat["pass"] is True  # paired on tasks 0, 1: (1.0 - 0.8 + 1.2 - 1.3) / 2 = 0.05
    assert beat["cells"][0]["tasks"] == 2 and beat["cells"][0]["diff"] == pytest.approx(0.05)
    assert beat["not_evaluated"] == [[2, 16]]
    near = checks["cmanp_near_ceiling"]
    assert near["pass"] is False and near["worst_shortfall"] == pytest.approx(0.05)
    collapse = checks["no_collapse_beyond_training"]
    assert collapse["pass"] is False and collapse["worst_shortfall"] == pytest.approx(0.05)
    assert collapse["cells"][0]["ceiling_diff"] == pytest.approx(0.5)
    cover = checks["coverage"]  # judged on CMANP only; the fitted GP's miss is for reference
    assert cover["pass"] is True and cover["worst_shortfall"] == 0
    failing = [
        (c["d"], c["n"], c["model"], c["reference"]) for c in cover["cells"] if not c["pass"]
    ]
    assert failing == [(1, 16, "fitted_gp_marginal", True)]
    rows[0]["cover90"] = 0.5  # one CMANP task: mean over 4 tasks 0.8, 0.05 beyond tolerance
    cover = pf.target_checks(rows, dims=(1, 2), sizes=(16, 256, 1024))["coverage"]
    assert cover["pass"] is False and cover["worst_shortfall"] == pytest.approx(0.05)
    summary = {(e["d"], e["n"], e["model"]): e for e in pf.summarize(rows)}
    entry = summary[(1, 16, "cmanp_marginal")]
    assert entry["tasks"] == 4 and entry["ll"] == pytest.approx(1.05)
    assert entry["ll_gp_tasks"] == pytest.approx(1.1)  # the fitted GP's 2 tasks
    # the GP's mean on all tasks estimated as ceiling (1.25) + paired difference (-0.25)
    assert summary[(1, 16, "fitted_gp_marginal")]["ll_paired"] == pytest.approx(1.0)
    assert "ll_paired" not in summary[(1, 16, "exact_gp_marginal")]
    # with a better CMANP the same checks pass
    rows = _rows(
        {
            (1, 16, "cmanp_marginal"): ([1.2, 1.4], *good),
            (1, 16, "exact_gp_marginal"): ([1.2, 1.4], *good),
            (1, 16, "fitted_gp_marginal"): ([0.8, 1.3], *good),
        }
    )
    checks = pf.target_checks(rows, dims=(1,), sizes=(16,))
    assert checks["cmanp_near_ceiling"]["pass"] and checks["coverage"]["pass"]
    assert checks["no_collapse_beyond_training"]["pass"] is None


def test_main_writes_outputs_and_resumes(pf, tiny_net, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(tiny_net, ckpt)
    base = ["--checkpoint", str(ckpt), "--dims", "1", "--tasks", "3", "--tasks-gp", "1"]
    base += ["--targets", "8", "--threads", "1", "--out", str(tmp_path), "--name", "t"]
    base += ["--gp-max-n", "4", "--tasks-gp-above", "0", "--pool-n", "16"]  # no GP at n = 8
    first = pf.main([*base, "--sizes", "4"])
    assert first["complete"] and first["cells_done"] == [[1, 4]]
    with open(tmp_path / "t.csv") as f:
        before = list(csv.DictReader(f))
    assert len(before) == 3 * 5 + 2  # 5 models on every task (joint head), the GP on one
    second = pf.main([*base, "--sizes", "4", "8"])
    assert second["cells_done"] == [[1, 4], [1, 8]]
    assert list(second["timings"]) == ["d=1,n=4", "d=1,n=8"]
    with open(tmp_path / "t.csv") as f:
        after = list(csv.DictReader(f))
    assert after[: len(before)] == before and len(after) == 2 * len(before) - 2
    assert not [r for r in after if r["n"] == "8" and r["model"].startswith("fitted")]
    stored = json.loads((tmp_path / "t.json").read_text())
    assert len(stored["notes"]) == 2 and stored["network"]["source"] == str(ckpt)
    assert stored["timings"]["d=1,n=4"]["fitted_gp_cpu"] > 0
    assert (tmp_path / "t.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="tasks"):  # other settings need --fresh
        pf.main([*base, "--sizes", "4", "--tasks", "4"])


def test_reuse_gp_takes_the_earlier_fits_for_another_network(pf, tiny_net, tmp_path, monkeypatch):
    first_ckpt, second_ckpt = tmp_path / "net_a.pt", tmp_path / "net_b.pt"
    save_checkpoint(tiny_net, first_ckpt)
    torch.manual_seed(1)
    save_checkpoint(CMANP(tiny_net.cfg), second_ckpt)
    base = ["--dims", "1", "--sizes", "4", "--tasks", "3", "--tasks-gp", "2", "--targets", "8"]
    base += ["--threads", "1", "--out", str(tmp_path), "--pool-n", "16"]
    pf.main([*base, "--checkpoint", str(first_ckpt), "--name", "a"])

    import botorch.fit

    def refuse(*args, **kwargs):
        raise AssertionError("the GP must not be fitted again")

    monkeypatch.setattr(botorch.fit, "fit_gpytorch_mll", refuse)
    second = pf.main(
        [
            *base,
            "--checkpoint",
            str(second_ckpt),
            "--name",
            "b",
            "--reuse-gp",
            str(tmp_path / "a.csv"),
        ]
    )
    assert second["timings"]["d=1,n=4"]["fitted_gp_reused"] == 1.0
    with open(tmp_path / "a.csv") as f, open(tmp_path / "b.csv") as g:
        a, b = list(csv.DictReader(f)), list(csv.DictReader(g))
    fitted = lambda rows: [r for r in rows if r["model"].startswith("fitted")]  # noqa: E731
    assert fitted(a) == fitted(b) and len(fitted(b)) == 4
    cmanp = lambda rows: [r["ll"] for r in rows if r["model"] == "cmanp_marginal"]  # noqa: E731
    assert cmanp(a) != cmanp(b)  # the network's own rows are new
    with pytest.raises(SystemExit, match="tasks_gp"):
        pf.main([*base, "--tasks-gp", "1", "--checkpoint", str(second_ckpt), "--name", "c",
                 "--reuse-gp", str(tmp_path / "a.csv")])  # fmt: skip


def test_failed_gp_fits_are_recorded_not_fatal(pf, tiny_net, monkeypatch):
    import botorch.fit
    from botorch.exceptions.errors import ModelFittingError
    from botorch.models import SingleTaskGP

    def refuse(mll, **kwargs):
        raise ModelFittingError("All attempts to fit the model have failed.")

    pool = pf.sample_pool(1, 2, targets=8, pool_n=8)
    monkeypatch.setattr(botorch.fit, "fit_gpytorch_mll", refuse)
    rows, _ = pf.evaluate_cell(tiny_net, 1, 8, 2, tasks_gp=1, targets=8, pool=pool)
    fitted = [r for r in rows if r["model"] == "fitted_gp_marginal"]
    assert len(fitted) == 1 and fitted[0]["fit_ok"] == 0
    assert fitted[0]["note"] == "ModelFittingError" and math.isfinite(fitted[0]["ll"])

    def broken(self, *args, **kwargs):
        raise RuntimeError("not positive definite")

    monkeypatch.setattr(SingleTaskGP, "posterior", broken)
    rows, _ = pf.evaluate_cell(tiny_net, 1, 8, 2, tasks_gp=1, targets=8, pool=pool)
    fitted = [r for r in rows if r["model"].startswith("fitted_gp")]
    assert all(math.isnan(r["ll"]) and r["fit_ok"] == 0 for r in fitted)
    assert fitted[0]["cover50"] == "" and "RuntimeError" in fitted[0]["note"]
    summary = {e["model"]: e for e in pf.summarize(rows)}
    assert summary["fitted_gp_marginal"]["nonfinite"] == 1
    assert summary["fitted_gp_marginal"]["failed_fits"] == 1
    cover = pf.target_checks(rows, dims=(1,), sizes=(8,))["coverage"]["cells"]
    assert [c["model"] for c in cover] == ["cmanp_marginal"]


def test_routed_targets_take_each_d_from_its_network_report(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "prior_fit_routed", SCRIPT.parent / "prior_fit_routed.py"
    )
    routed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(routed)

    def report(cells_by_d: dict[int, tuple[bool, float]]) -> dict:
        cells = [
            {"d": d, "n": 16, "pass": ok, "shortfall": short}
            for d, (ok, short) in cells_by_d.items()
        ]
        reference = {"d": 1, "n": 16, "pass": False, "shortfall": 9.0, "reference": True}
        return {
            "targets": {
                "t": {"description": "x", "cells": [*cells, reference], "not_evaluated": [[4, 64]]}
            }
        }

    # a.json fails d = 4, which d routes elsewhere; b.json passes d = 4 and fails d = 1
    (tmp_path / "a.json").write_text(json.dumps(report({1: (True, 0.0), 4: (False, 2.0)})))
    (tmp_path / "b.json").write_text(json.dumps(report({1: (False, 1.0), 4: (True, 0.0)})))
    out = routed.routed_targets({1: ("a.json", "n1"), 4: ("b.json", "n4")}, tmp_path)
    t = out["t"]
    assert t["pass"] is True and t["cells_judged"] == 2 and t["cells_missed"] == 0
    assert t["worst_shortfall"] == 0.0  # the reference row (shortfall 9) is not judged
    assert {(c["d"], c["network"]) for c in t["cells"] if not c.get("reference")} == {
        (1, "n1"),
        (4, "n4"),
    }
    assert t["not_evaluated"] == [[4, 64]]
    out = routed.routed_targets({1: ("b.json", "n4"), 4: ("a.json", "n1")}, tmp_path)
    assert out["t"]["pass"] is False and out["t"]["cells_missed"] == 2
    assert out["t"]["worst_shortfall"] == 2.0


def test_routed_sources_name_the_networks_the_model_routes_to():
    spec = importlib.util.spec_from_file_location(
        "prior_fit_routed", SCRIPT.parent / "prior_fit_routed.py"
    )
    routed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(routed)
    from cmanp_bo import pretrained

    for d, (report, network) in routed.SOURCES.items():
        assert pretrained.default_bo_name(d) == network, d
        cells = json.loads((routed.RESULTS / report).read_text())["summary"]
        assert any(c["d"] == d for c in cells), (d, report)
