"""The benchmark suite: problems, surrogates by name, the resumable store, reports, the CLI."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
import torch

from cmanp_bo.bench import ResultStore, get_problem, run_replication, run_suite
from cmanp_bo.bench.report import write_report
from cmanp_bo.bench.runner import Suite, run_keys, suite_with
from cmanp_bo.cli import main as cli_main
from surrogates.registry import AcquisitionOptions, make_surrogate

FAST_ACQ = {"num_restarts": 2, "raw_samples": 32, "mc_samples": 32}


def tiny_suite(**kw) -> Suite:
    base = dict(problems=("branin",), surrogates=("sobol", "cmanp"), seeds=2, budget=7)
    base["acquisition"] = FAST_ACQ
    return Suite(**{**base, **kw})


# ------------------------------------------------------------------------------------ problems
def test_standard_problems_on_the_unit_cube_match_the_registry():
    p = get_problem("branin")
    assert (p.dim, p.budget, p.num_init) == (2, 30, 5)
    # Branin's minimiser (pi, 2.275) in its domain [-5, 10] x [0, 15]
    x = torch.tensor([[(math.pi + 5) / 15, 2.275 / 15]], dtype=torch.float64)
    assert p.evaluate(x).item() == pytest.approx(p.optimal_value, abs=1e-5)
    assert p.regret(p.optimal_value + 0.5) == pytest.approx(0.5)
    assert p.score(p.baseline_value) == pytest.approx(0.0)
    assert p.score(p.optimal_value) == pytest.approx(100.0)
    h6 = get_problem("hartmann6")
    assert (h6.dim, h6.num_init) == (6, 12)


def test_in_distribution_functions_are_fixed_draws_with_a_found_minimum():
    p, q = get_problem("prior2_3"), get_problem("prior2_3")
    X = torch.quasirandom.SobolEngine(2, scramble=True, seed=0).draw(64, dtype=torch.float64)
    assert torch.equal(p.evaluate(X), q.evaluate(X))  # the same function every time
    assert not torch.equal(p.evaluate(X), get_problem("prior2_4").evaluate(X))
    assert p.optimal_value <= p.evaluate(X).min().item()
    # a GP draw, not a constant (BoTorch's lengthscale prior makes many draws smooth on the cube)
    assert p.evaluate(X).std() > 1e-3


def test_hpo_problem_is_a_cross_validated_loss():
    p = get_problem("hpo_svm_breast_cancer")
    assert p.dim == 2 and p.optimal_value is None
    values = p.evaluate(torch.tensor([[0.7, 0.3], [0.0, 0.0]], dtype=torch.float64))
    assert ((values >= 0) & (values <= 1)).all()
    assert values[0] < values[1]  # C = 16, gamma ~ 1e-3 beats C = 1e-3, gamma = 1e-5


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown problem 'nope'"):
        get_problem("nope")
    with pytest.raises(ValueError, match="unknown surrogate 'nope'"):
        make_surrogate("nope", 2, 0)
    with pytest.raises(ValueError, match="no shipped 'tnp' checkpoint covers d=4"):
        make_surrogate("tnp", 4, 0)  # the shipped peers serve d <= 2
    with pytest.raises(ValueError, match="unknown suite"):
        suite_with("nope")


# ------------------------------------------------------------------------------------ surrogates
def test_sobol_continues_its_sequence_and_models_propose_in_the_cube():
    X = torch.quasirandom.SobolEngine(2, scramble=True, seed=3).draw(6, dtype=torch.float64)
    s = make_surrogate("sobol", 2, 3)
    assert torch.equal(s.ask(X[:5], torch.zeros(5)), X[5])
    y = (X - 0.3).pow(2).sum(-1)
    for name in ("gp", "gp-cheap", "cmanp"):
        x = make_surrogate(name, 2, 0, AcquisitionOptions(**FAST_ACQ)).ask(X, y)
        assert x.shape == (2,) and ((x >= 0) & (x <= 1)).all(), name


def test_stateful_surrogates_absorb_only_new_points():
    X = torch.rand(9, 2, dtype=torch.float64)
    y = X.sum(-1)
    s = make_surrogate("cmanp", 2, 0, AcquisitionOptions(**FAST_ACQ))
    s.ask(X[:6], y[:6])
    first = s.model
    s.ask(X[:8], y[:8])
    assert s.model.num_points == 8 and s.model.num_embedded == 2 and s.model is not first
    g = make_surrogate("gp-cheap", 2, 0, AcquisitionOptions(**FAST_ACQ), refit_every=2)
    g.ask(X[:6], y[:6])
    fitted = g.model
    g.ask(X[:7], y[:7])  # conditioned, same hyperparameters
    assert g.model.train_inputs[0].shape[-2] == 7
    assert torch.equal(g.model.covar_module.lengthscale, fitted.covar_module.lengthscale)
    g.ask(X[:8], y[:8])  # refit after 2 steps
    assert g.model is not fitted and g.model.train_inputs[0].shape[-2] == 8


# ------------------------------------------------------------------------------------ runner
def test_replications_are_paired_and_reproducible():
    keys = run_keys("t", tiny_suite())
    by = {(k.surrogate, k.seed): k for k in keys}
    _, run_s, steps_s = run_replication(by["sobol", 0])
    _, run_c, steps_c = run_replication(by["cmanp", 0])
    _, _, steps_c2 = run_replication(by["cmanp", 0])
    init = get_problem("branin").num_init
    assert [s["x"] for s in steps_s[:init]] == [s["x"] for s in steps_c[:init]]  # paired design
    assert [s["x"] for s in steps_c] == [s["x"] for s in steps_c2]  # seeded
    assert run_c["num_evals"] == 7 and len(steps_c) == 7 and run_c["stopped"] is None
    assert [s["best"] for s in steps_c] == sorted((s["best"] for s in steps_c), reverse=True)
    assert run_c["best_value"] == min(s["value"] for s in steps_c)
    assert all(s["surrogate_s"] == 0 for s in steps_c[:init])
    assert all(s["surrogate_s"] > 0 for s in steps_c[init:])
    _, _, steps_1 = run_replication(by["cmanp", 1])
    assert steps_1[0]["x"] != steps_c[0]["x"]  # another seed, another design


def test_peak_rss_is_the_runs_own_when_runs_share_a_process():
    """In-process runs (``--workers 1``) each record their own peak RSS, not the process's
    high-water mark so far."""
    from cmanp_bo.bench import runner

    if not runner._reset_peak_rss():
        pytest.skip("needs Linux /proc/self/clear_refs")
    (key,) = [k for k in run_keys("t", tiny_suite()) if k.surrogate == "sobol" and k.seed == 0]
    big = torch.ones(600 * 2**20 // 8, dtype=torch.float64)  # ~600 MiB, then freed
    del big
    before = runner._peak_rss_mb(reset=False)  # the process's peak: includes the 600 MiB
    _, run, steps = run_replication(key)
    assert run["peak_rss_mb"] < before - 300
    assert run["peak_rss_mb"] >= max(s["rss_mb"] for s in steps) - 1  # but still a peak


def test_time_cap_stops_a_run_and_says_where():
    (key,) = [k for k in run_keys("t", tiny_suite(time_cap_s=0.0)) if k.surrogate == "cmanp"][:1]
    _, run, steps = run_replication(key)
    assert run["num_evals"] == get_problem("branin").num_init == len(steps)
    assert "cap" in run["stopped"] and "5 evaluations" in run["stopped"]


def test_store_resumes_after_a_crash_without_duplicates(tmp_path, monkeypatch):
    import cmanp_bo.bench.runner as runner

    store = ResultStore(tmp_path / "r.sqlite")
    real = runner.run_replication
    calls = []

    def crash_on_third(key, threads=1):
        calls.append(key)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies mid-suite
        return real(key, threads)

    monkeypatch.setattr(runner, "run_replication", crash_on_third)
    suite = tiny_suite()
    with pytest.raises(KeyboardInterrupt):
        run_suite(store, "t", suite, progress=False)
    assert len(store.runs("t")) == 2  # the finished ones are kept
    store.close()
    store = ResultStore(tmp_path / "r.sqlite")  # reopen, as a new process would
    monkeypatch.setattr(runner, "run_replication", real)
    assert run_suite(store, "t", suite, progress=False) == 2  # only the missing ones
    runs = store.runs("t")
    assert len(runs) == 4
    assert sorted((r["surrogate"], r["seed"]) for r in runs) == sorted(
        (s, seed) for s in ("sobol", "cmanp") for seed in (0, 1)
    )
    assert all(len(store.steps(r["id"])) == 7 for r in runs)
    assert run_suite(store, "t", suite, progress=False) == 0
    store.close()


def test_process_pool_gives_the_same_results(tmp_path):
    suite = tiny_suite(surrogates=("sobol",), budget=6)
    serial, pooled = ResultStore(tmp_path / "a.sqlite"), ResultStore(tmp_path / "b.sqlite")
    run_suite(serial, "t", suite, progress=False)
    run_suite(pooled, "t", suite, workers=2, progress=False)
    xs = lambda st: sorted(  # noqa: E731
        (r["seed"], [s["x"] for s in st.steps(r["id"])]) for r in st.runs()
    )
    assert xs(serial) == xs(pooled) and len(xs(serial)) == 2


def test_ray_runtime_runs_replications(tmp_path):
    ray = pytest.importorskip("ray")
    store = ResultStore(tmp_path / "r.sqlite")
    try:
        n = run_suite(
            store,
            "t",
            tiny_suite(surrogates=("sobol",), budget=6),
            ray_address="local",
            progress=False,
        )
    finally:
        ray.shutdown()
    assert n == 2 and {r["seed"] for r in store.runs()} == {0, 1}


def test_network_runs_are_keyed_by_their_weights(tmp_path):
    from cmanp_bo import pretrained
    from cmanp_bo.checkpoint import save_checkpoint

    keys = {k.surrogate: json.loads(k.settings) for k in run_keys("t", tiny_suite())}
    assert "network" not in keys["sobol"]
    assert keys["cmanp"]["network"] == pretrained.network_identity("default", 2)
    assert keys["cmanp"]["network"].startswith(f"default:d=2:{pretrained.default_bo_name(2)}@")
    net = pretrained.load("bo-default")
    save_checkpoint(net, tmp_path / "a.pt")
    options = {"cmanp": {"checkpoint": str(tmp_path / "a.pt")}}
    first = [k for k in run_keys("t", tiny_suite(), options) if k.surrogate == "cmanp"]
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    save_checkpoint(net, tmp_path / "a.pt")  # same path, other weights: other runs
    second = [k for k in run_keys("t", tiny_suite(), options) if k.surrogate == "cmanp"]
    assert {k.settings for k in first}.isdisjoint({k.settings for k in second})


def test_suite_option_defaults_are_stored_and_overridable():
    from cmanp_bo import pretrained
    from cmanp_bo.bench.runner import SUITES

    # cmanp runs on the warp its network's card recommends ("auto", resolved in the key: none
    # for the d = 2..6 default), the peers on the copula warp (issue 6); gp stays Ax's default
    warped = {"warp": "rank"}
    assert pretrained.recommended_warp("default", 2) is None
    assert pretrained.recommended_warp("default", 1) == "rank"  # bo-d1-2-reg's card
    expected = {
        "quick": {"sobol": {}, "gp": {}, "cmanp": {"warp": None}},
        "standard": {"sobol": {}, "gp": {}, "gp-cheap": {}, "cmanp": {"warp": None}, "tnp": warped},
    }
    for name, wanted in expected.items():
        keys = [k for k in run_keys(name, SUITES[name], {}) if k.surrogate in wanted]
        assert {k.surrogate: json.loads(k.settings)["options"] for k in keys} == wanted, name
    # "auto" follows the network: another checkpoint's card, here the rank warp's bo-d3-6-reg
    suite = tiny_suite(surrogate_options={"cmanp": {"warp": "auto"}})
    keys = run_keys("t", suite, {"cmanp": {"checkpoint": "bo-d3-6-reg"}})
    options = [json.loads(k.settings)["options"] for k in keys if k.surrogate == "cmanp"]
    assert options == [{"checkpoint": "bo-d3-6-reg", "warp": "rank"}] * 2
    # and so does the surrogate itself, given "auto"
    from surrogates.registry import make_surrogate

    assert make_surrogate("cmanp", 2, 0, warp="auto").warp is None
    assert make_surrogate("cmanp", 2, 0, warp="auto", checkpoint="bo-d3-6-reg").warp == "rank"
    net = pretrained.load("bo-d1-2-reg")  # an instance has no card: no warp
    assert make_surrogate("cmanp", 2, 0, warp="auto", checkpoint=net).warp is None
    with pytest.raises(ValueError, match="unknown warp"):
        make_surrogate("cmanp", 2, 0, warp="ranks")
    assert SUITES["long"].surrogate_options == {}  # benchmarked without the warp
    # --surrogate-options entries override the suite's defaults key by key
    suite = tiny_suite(surrogate_options={"cmanp": {"warp": "rank", "cache_baseline": False}})
    keys = [k for k in run_keys("t", suite, {"cmanp": {"warp": None}}) if k.surrogate == "cmanp"]
    for key in keys:
        assert json.loads(key.settings)["options"] == {"warp": None, "cache_baseline": False}


def test_problem_dim_matches_the_built_problems():
    from cmanp_bo.bench.problems import HPO, LONG, LONG_D2, STANDARD, problem_dim

    for name in (*STANDARD, *LONG, *LONG_D2, *HPO, "prior2_0", "prior8_3"):
        expected = int(name[5]) if name.startswith("prior") else get_problem(name).dim
        assert problem_dim(name) == expected, name
    with pytest.raises(ValueError, match="unknown problem"):
        problem_dim("nope")


def test_long_d2_problems_are_the_long_functions_at_d2_and_not_suite_defaults():
    from botorch.test_functions import Ackley, Levy, Rosenbrock

    from cmanp_bo.bench.problems import LONG_D2, problem_family
    from cmanp_bo.bench.runner import SUITES

    assert set(LONG_D2).isdisjoint(SUITES["long"].problems)
    fns = {"ackley2_long": Ackley(dim=2), "levy2_long": Levy(dim=2)}
    fns["rosenbrock2_long"] = Rosenbrock(dim=2)
    for name, fn in fns.items():
        problem = get_problem(name)
        assert problem_family(name) == "long" and problem.budget == 1000
        assert problem.optimal_value == pytest.approx(fn.optimal_value)
        # the known minimiser, mapped onto the unit cube, evaluates to the optimal value
        lo, hi = fn.bounds.to(torch.float64)
        x_star = (torch.tensor(fn.optimizers[0], dtype=torch.float64) - lo) / (hi - lo)
        assert problem.evaluate(x_star[None]).item() == pytest.approx(fn.optimal_value, abs=1e-9)
        assert problem.regret(problem.optimal_value + 0.5) == pytest.approx(0.5)


def test_report_shows_only_the_current_settings_of_a_cell(tmp_path):
    from cmanp_bo.bench.report import collect

    store = ResultStore(tmp_path / "r.sqlite")
    suite = tiny_suite(surrogates=("sobol",), seeds=2, budget=6)
    run_suite(store, "t", suite, progress=False)
    run_suite(store, "t", tiny_suite(surrogates=("sobol",), seeds=1, budget=7), progress=False)
    assert len(store.runs("t")) == 3
    (runs,) = collect(store, "t")["branin"].values()
    assert [r["budget"] for r in runs] == [7]  # the latest settings' single run
    text = write_report(store, tmp_path)
    assert "2 earlier runs made under other settings" in text and "(n=1)" in text


# ------------------------------------------------------------------------------------ report, cli
def test_report_tables_and_plots(tmp_path):
    store = ResultStore(tmp_path / "results.sqlite")
    run_suite(
        store,
        "t",
        tiny_suite(surrogates=("sobol", "gp", "cmanp"), seeds=5, budget=6),
        progress=False,
    )
    text = write_report(store, tmp_path)
    assert "| branin | log10 regret |" in text and "| sobol | gp | cmanp |" in text
    assert "(n=5)" in text and "median s/step" in text
    for png in ("t_regret.png", "t_regret_wallclock.png", "t_cost.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert (tmp_path / "report.md").read_text() == text


def test_cli_bench_and_report(tmp_path, capsys):
    out = tmp_path / "q"
    argv = [
        "bench",
        "--suite",
        "quick",
        "--out",
        str(out),
        "--problems",
        "branin",
        "--surrogates",
        "sobol,cmanp",
        "--seeds",
        "1",
        "--budget",
        "6",
        "--acquisition",
        json.dumps(FAST_ACQ),
    ]
    cli_main(argv)
    printed = capsys.readouterr().out
    assert "2 new runs" in printed and "| branin | log10 regret |" in printed
    cli_main(argv)  # resumes: nothing new
    assert "0 new runs" in capsys.readouterr().out
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
        settings = json.loads(db.execute("SELECT settings FROM runs").fetchone()[0])
    assert settings["budget"] == 6 and settings["acquisition"] == FAST_ACQ
    cli_main(["report", "--out", str(out)])
    assert "## Suite `quick`" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown problem"):
        cli_main(["bench", "--out", str(out), "--problems", "branin,nope"])
    with pytest.raises(SystemExit, match="--acquisition is not valid JSON"):
        cli_main(["bench", "--out", str(out), "--acquisition", "{num_restarts: 2}"])
    with pytest.raises(SystemExit, match="--acquisition: .*unexpected keyword.*restarts"):
        cli_main(["bench", "--out", str(out), "--acquisition", '{"restarts": 2}'])
    with pytest.raises(SystemExit, match="--surrogate-options must map"):
        cli_main(["bench", "--out", str(out), "--surrogate-options", '{"cmanp": 3}'])
    with pytest.raises(SystemExit, match="no results database"):
        cli_main(["report", "--out", str(tmp_path / "empty")])


def test_cost_table_leaves_out_runs_without_a_peak_rss():
    from cmanp_bo.bench.report import cost_table

    def run(peak):
        return {"steps": [{"surrogate_s": 0.5}], "surrogate_s": 0.5, "peak_rss_mb": peak}

    table = cost_table({"p": {"cmanp": [run(100.0), run(None), run(300.0)], "tnp": [run(None)]}})
    assert "| cmanp | 0.500 | 0.5 | 200 | 3 |" in table
    assert "| tnp | 0.500 | 0.5 | - | 1 |" in table
