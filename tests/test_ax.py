"""CMANP inside a real ``ax.Client`` loop (offline): search spaces, objectives, batches, bad data,
storage, best point and prediction, and the constant-cost state cache.

The default network is an untrained placeholder until the pretrained BO checkpoint ships, so these
tests check behaviour (shapes, types, constraints, counts, reproducibility), never prediction
quality. Optimizer settings are tiny to keep each test to a few seconds on one thread.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from ax import ChoiceParameterConfig, Client, RangeParameterConfig
from ax.adapter.transforms.standardize_y import StandardizeY
from ax.adapter.transforms.winsorize import Winsorize
from ax.core.trial_status import TrialStatus
from ax.generators.torch.botorch_modular.utils import fit_botorch_model
from ax.storage.botorch_modular_registry import CLASS_TO_REVERSE_REGISTRY
from ax.storage.transform_registry import REVERSE_TRANSFORM_REGISTRY
from ax.utils.common.random import with_rng_seed
from botorch.acquisition import qLogNoisyExpectedImprovement
from botorch.models.model import Model, ModelList

import cmanp_bo.ax as cax
from cmanp_bo.botorch_model import CMANPModel
from cmanp_bo.warp import copula_warp, power_warp

pytestmark = [
    pytest.mark.filterwarnings("ignore:no pretrained BO checkpoint:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::botorch.exceptions.warnings.OptimizationWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning:botorch.optim"),
]

FAST = {"num_restarts": 2, "raw_samples": 32, "optimizer_options": {"options": {"maxiter": 30}}}


@pytest.fixture(autouse=True)
def _fresh_cache():
    cax.clear_state_cache()
    yield
    cax.clear_state_cache()


def unit_params(d: int = 2) -> list[RangeParameterConfig]:
    return [
        RangeParameterConfig(name=f"x{i}", parameter_type="float", bounds=(0.0, 1.0))
        for i in range(d)
    ]


def make_client(
    objective: str = "-loss",
    constraints: list[str] | None = None,
    init: int = 4,
    seed: int = 0,
    parameters: list | None = None,
    parameter_constraints: list[str] | None = None,
    **gs_kwargs,
) -> Client:
    client = Client(random_seed=seed)
    client.configure_experiment(
        parameters=parameters or unit_params(),
        parameter_constraints=parameter_constraints,
    )
    client.configure_optimization(objective=objective, outcome_constraints=constraints)
    kwargs = {**FAST, **gs_kwargs}
    client.set_generation_strategy(
        cax.cmanp_generation_strategy(init, initialization_seed=seed, **kwargs)
    )
    return client


def quad(p: dict) -> dict[str, float]:
    x0, x1 = float(p["x0"]), float(p["x1"])
    return {
        "loss": (x0 - 0.3) ** 2 + (x1 - 0.6) ** 2,
        "a": (x0 - 0.2) ** 2 + x1,
        "b": (x0 - 0.8) ** 2 + (1 - x1),
    }


def step(client: Client, fn=quad, n: int = 1) -> dict[int, dict]:
    """Generate ``n`` trials and complete them with the metrics of the optimization config."""
    names = client._experiment.optimization_config.metric_names
    trials = client.get_next_trials(max_trials=n)
    for index, params in trials.items():
        client.complete_trial(index, {k: v for k, v in fn(params).items() if k in names})
    return trials


def node_of(client: Client, trial_index: int) -> str:
    return client._experiment.trials[trial_index].generator_runs[0]._generation_node_name


def surrogate_model(client: Client) -> Model:
    return client._generation_strategy.adapter.generator.surrogate.model


# ------------------------------------------------------------------------------------ setup
def test_generation_strategy_and_registration():
    gs = cax.cmanp_generation_strategy(dim=6)
    assert [n.name for n in gs._nodes] == ["Sobol", "CMANP"]
    assert gs._nodes[0].transition_criteria[0].threshold == 12  # max(5, 2 * dim)
    assert cax.cmanp_generation_strategy()._nodes[0].transition_criteria[0].threshold == 5
    assert [n.name for n in cax.cmanp_generation_strategy(0)._nodes] == ["CMANP"]
    spec = gs._nodes[1].generator_specs[0]
    (config,) = spec.generator_kwargs["surrogate_spec"].model_configs
    assert config.botorch_model_class is CMANPModel
    transforms = spec.generator_kwargs["transforms"]
    assert StandardizeY not in transforms and Winsorize not in transforms
    assert cax.NonFiniteY in transforms
    # Importing cmanp_bo.ax registered the no-op fit and the JSON storage classes.
    model = CMANPModel(torch.rand(3, 2, dtype=torch.float64), torch.rand(3, 1, dtype=torch.float64))
    assert fit_botorch_model(model, mll_class=None) is None
    assert CLASS_TO_REVERSE_REGISTRY[Model]["CMANPModel"] is CMANPModel
    assert REVERSE_TRANSFORM_REGISTRY["NonFiniteY"] is cax.NonFiniteY
    with pytest.raises(ValueError, match="initialization_trials"):
        cax.cmanp_generation_strategy(-1)
    with pytest.raises(TypeError, match="JSON"):
        cax.cmanp_generation_strategy(checkpoint=object())


def test_strategy_sized_from_client():
    client = Client()
    client.configure_experiment(parameters=unit_params(4))
    gs = cax.cmanp_generation_strategy_for(client, **FAST)
    assert gs._nodes[0].transition_criteria[0].threshold == 8


# ------------------------------------------------------------------------------------ loops
def test_mixed_search_space_with_constraint_minimize_and_counter():
    params = [
        RangeParameterConfig(name="x", parameter_type="float", bounds=(-5.0, 10.0)),
        RangeParameterConfig(name="k", parameter_type="int", bounds=(0, 15)),
        RangeParameterConfig(name="lr", parameter_type="float", bounds=(1e-4, 1e-1), scaling="log"),
        ChoiceParameterConfig(name="c", parameter_type="str", values=["a", "b", "c"]),
    ]

    def fn(p):
        offset = {"a": 0.0, "b": 1.0, "c": 2.0}[p["c"]]
        return {
            "loss": (p["x"] - 2) ** 2 + (p["k"] - 5) ** 2 / 10 + math.log10(p["lr"]) ** 2 + offset
        }

    client = make_client(
        init=5,
        parameters=params,
        parameter_constraints=["x + k <= 12"],
        optimizer_options={"options": {"maxiter_alternating": 2, "maxiter_continuous": 10}},
    )
    for _ in range(5):
        step(client, fn)
    seen = []
    for _ in range(3):
        before = len(cax.embed_stats())
        trials = step(client, fn)
        (index,) = trials
        assert node_of(client, index) == "CMANP"
        seen.append(cax.embed_stats()[before:])
    for p in [t.arm.parameters for t in client._experiment.trials.values()]:
        assert -5.0 <= p["x"] <= 10.0 and p["x"] + p["k"] <= 12 + 1e-9
        assert isinstance(p["k"], int) and 0 <= p["k"] <= 15
        assert 1e-4 * (1 - 1e-9) <= p["lr"] <= 1e-1 * (1 + 1e-9)
        assert p["c"] in ("a", "b", "c")
    # First CMANP call: all 5 Sobol points embedded; then exactly one new observation per call.
    assert [[r.embedded for r in recs] for recs in seen] == [[5], [1], [1]]
    assert [[r.num_points for r in recs] for recs in seen] == [[5], [6], [7]]
    generator = client._generation_strategy.adapter.generator
    assert generator.botorch_acqf_class is qLogNoisyExpectedImprovement
    model = surrogate_model(client)
    assert isinstance(model, CMANPModel) and model.num_points == 7 and model.num_embedded == 1


def test_maximize_outcome_constraint_and_batch_of_four_distinct_points():
    client = make_client(objective="a", constraints=["b <= 1.2"], init=8)
    for _ in range(8):
        step(client)
    step(client)  # Ax hands over from Sobol to CMANP with a single trial
    before = len(cax.embed_stats())
    trials = step(client, n=4)
    assert len(trials) == 4 and all(node_of(client, i) == "CMANP" for i in trials)
    X = torch.tensor([[p["x0"], p["x1"]] for p in trials.values()], dtype=torch.float64)
    assert torch.isfinite(X).all() and ((X >= 0) & (X <= 1)).all()
    dist = torch.cdist(X, X) + torch.eye(4, dtype=torch.float64)
    assert dist.min() > 1e-3  # four distinct, non-degenerate points
    # One CMANP per metric ("a" and "b"), each embedding the one new observation.
    assert [(r.num_points, r.embedded) for r in cax.embed_stats()[before:]] == [(9, 1)] * 2
    before = len(cax.embed_stats())
    step(client)
    # The next call embeds exactly the four new observations of the batch.
    assert [(r.num_points, r.embedded) for r in cax.embed_stats()[before:]] == [(13, 4)] * 2


def test_two_objectives_one_cmanp_per_metric(monkeypatch):
    from botorch.acquisition.multi_objective import logei

    # Skip botorch's one-off JIT compilation of a fused C++ kernel (about a minute on a fresh
    # machine); the pure-PyTorch qLogNEHVI path is the same computation.
    monkeypatch.setattr(logei, "_load_attempted", True)
    client = make_client(objective="-a, -b", init=4, num_restarts=1, raw_samples=16)
    for _ in range(5):
        step(client)
    trials = step(client, n=2)
    model = surrogate_model(client)
    assert isinstance(model, ModelList) and len(model.models) == 2
    assert all(isinstance(m, CMANPModel) for m in model.models)
    assert all(node_of(client, i) == "CMANP" for i in trials)
    before = len(cax.embed_stats())
    step(client)
    assert [(r.num_points, r.embedded) for r in cax.embed_stats()[before:]] == [(7, 2), (7, 2)]
    front = client.get_pareto_frontier()
    assert front and all(set(metrics) >= {"a", "b"} for _, metrics, _, _ in front)


def test_sem_failed_abandoned_and_non_finite_observations():
    client = make_client(init=3)
    step(client)
    (i,) = client.get_next_trials(max_trials=1)
    client.complete_trial(i, {"loss": (0.5, 0.1)})  # with SEM
    (i,) = client.get_next_trials(max_trials=1)
    client.complete_trial(i, {"loss": 0.4})  # without SEM
    (i,) = client.get_next_trials(max_trials=1)
    client.mark_trial_failed(i)
    (i,) = client.get_next_trials(max_trials=1)
    client.mark_trial_abandoned(i)
    nan_trial, inf_trial = client.get_next_trials(max_trials=2)
    client.complete_trial(nan_trial, {"loss": float("nan")})
    client.complete_trial(inf_trial, {"loss": float("inf")})
    with pytest.warns(RuntimeWarning, match="skipping non-finite") as record:
        trials = client.get_next_trials(max_trials=1)
    message = " ".join(str(w.message) for w in record)
    assert f"trial {nan_trial} " in message and f"trial {inf_trial} " in message
    (i,) = trials
    assert node_of(client, i) == "CMANP"
    assert surrogate_model(client).num_points == 3  # the three finite observations
    assert client._experiment.trials[nan_trial].status == TrialStatus.COMPLETED
    client.complete_trial(i, {"loss": 0.3})
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        client.get_next_trials(max_trials=1)
    assert not [w for w in later if "skipping non-finite" in str(w.message)]  # warned once
    assert surrogate_model(client).num_points == 4


def test_json_round_trip_continues_like_an_uninterrupted_run(tmp_path):
    path = tmp_path / "snapshot.json"
    client = make_client(objective="-loss", constraints=["a <= 1.5"], init=3, seed=7)
    for _ in range(5):
        step(client)
    assert node_of(client, 4) == "CMANP"
    client.save_to_json_file(str(path))
    assert "CMANPModel" in path.read_text() and json.loads(path.read_text())
    uninterrupted = client.get_next_trials(max_trials=1)
    # A fresh process: empty cache, and the Client snapshot does not store random_seed.
    cax.clear_state_cache()
    restored = Client.load_from_json_file(str(path))
    with with_rng_seed(7):
        continued = restored.get_next_trials(max_trials=1)
    assert list(continued) == list(uninterrupted)
    (a,), (b,) = uninterrupted.values(), continued.values()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-6)
    assert cax.embed_stats()[-1].embedded == 5  # rebuilt from scratch, same model
    # And in a genuinely new process.
    script = (
        "import json, sys, warnings; warnings.filterwarnings('ignore'); import cmanp_bo.ax;"
        "from ax import Client; from ax.utils.common.random import with_rng_seed;"
        "c = Client.load_from_json_file(sys.argv[1]); ctx = with_rng_seed(7); ctx.__enter__();"
        "print('RESULT' + json.dumps(c.get_next_trials(max_trials=1)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    ((other_index, c),) = json.loads(line[len("RESULT") :]).items()
    assert int(other_index) == list(uninterrupted)[0]
    for key in a:
        assert a[key] == pytest.approx(c[key], abs=1e-6)
    (index,) = continued
    restored.complete_trial(index, {k: quad(continued[index])[k] for k in ("loss", "a")})
    step(restored)
    assert cax.embed_stats()[-1].embedded == 1  # and incremental again


def test_best_parameterization_and_predict():
    client = make_client(init=3)
    for _ in range(5):
        step(client)
    params, prediction, trial_index, arm_name = client.get_best_parameterization()
    assert set(params) == {"x0", "x1"} and "loss" in prediction
    assert client._experiment.trials[trial_index].arm.name == arm_name
    (out,) = client.predict([{"x0": 0.3, "x1": 0.6}])
    mean, sem = out["loss"]
    assert math.isfinite(mean) and math.isfinite(sem) and sem > 0


def test_incremental_off_encodes_everything():
    client = make_client(init=3, incremental=False)
    for _ in range(5):
        step(client)
    model = surrogate_model(client)
    assert isinstance(model, CMANPModel) and model.num_embedded == model.num_points == 4
    assert cax.embed_stats() == []


# ------------------------------------------------------------------------------------ baseline
def test_noisy_ei_baseline_is_bounded_in_the_loop(monkeypatch):
    seen = []
    real = cax.best_baseline

    def spy(model, X, max_points, objective=None, posterior_transform=None):
        out = real(model, X, max_points, objective, posterior_transform)
        seen.append((X.shape[0], out.shape[0], model))
        return out

    monkeypatch.setattr(cax, "best_baseline", spy)
    client = make_client(init=5, max_baseline=4)
    for _ in range(8):
        step(client)
    # 5, 6 and 7 observed points, each cut to the 4 with the best posterior mean (Ax may build
    # the acquisition more than once per call)
    assert sorted({(n, k) for n, k, _ in seen}) == [(5, 4), (6, 4), (7, 4)]
    gs = cax.cmanp_generation_strategy(max_baseline=None)
    assert "acquisition_class" not in gs._nodes[1].generator_specs[0].generator_kwargs
    with pytest.raises(ValueError, match="max_baseline"):
        cax.cmanp_generation_strategy(max_baseline=0)
    from ax.storage.botorch_modular_registry import REVERSE_ACQUISITION_REGISTRY

    assert REVERSE_ACQUISITION_REGISTRY["BoundedBaselineAcquisition"] is (
        cax.BoundedBaselineAcquisition
    )


def test_the_acquisition_baseline_is_cached_in_the_loop(monkeypatch):
    """Ax's qLogNEI evaluates ``[X_baseline, X]`` with the observed points as baseline: the
    model serves it from its baseline cache (``cache_baseline``), batch after batch."""
    import cmanp_bo.botorch_model as bm

    prefixes = []
    real = bm.PrefixRootPosterior.__init__

    def spy(self, distribution, prefix_root, **blocks):
        prefixes.append(prefix_root.shape[-1])
        real(self, distribution, prefix_root, **blocks)

    monkeypatch.setattr(bm.PrefixRootPosterior, "__init__", spy)
    client = make_client(init=5)
    for _ in range(7):
        step(client)
    # two CMANP steps (after 5 Sobol trials), each with batched evaluations of raw samples and
    # restarts; the prefix is the pruned baseline of 5 or 6 observed points
    assert len(prefixes) >= 4 and all(1 <= k <= 6 for k in prefixes)
    model = surrogate_model(client)
    assert isinstance(model, CMANPModel) and model._prefix_cache is not None


# ------------------------------------------------------------------------------------ warp
def test_rank_warp_sees_only_the_order_of_the_objective():
    def squashed(p):  # the same order of the trials, another scale
        return {"loss": 5.0 * math.log1p(100.0 * quad(p)["loss"]) - 3.0}

    runs = []
    for fn in (quad, squashed):
        cax.clear_state_cache()
        client = make_client(init=3, warp="rank")
        with with_rng_seed(3):
            trials = [step(client, fn) for _ in range(6)]
        runs.append([t[k] for t in trials for k in t])
        assert node_of(client, 5) == "CMANP"
    assert runs[0] == runs[1]
    # predictions come back in the metric's units: the network's mean, mapped back
    x = runs[1][0]
    (out,) = client.predict([x])
    model, adapter = surrogate_model(client), client._generation_strategy.adapter
    z = model.posterior(torch.tensor([[x["x0"], x["x1"]]], dtype=torch.float64)).mean.item()
    assert adapter.transforms["CopulaY"]._map("loss", out["loss"][0])[0] == pytest.approx(z)
    # the model saw the copula scores of the observed losses, not the losses
    _, seen = model._history.concatenated()
    n = seen.shape[-2]
    losses = torch.tensor([squashed(p)["loss"] for p in runs[1][:n]], dtype=torch.float64)
    assert torch.allclose(seen.reshape(-1), copula_warp(losses), atol=1e-12)


def test_power_warp_models_the_yeo_johnson_of_the_objective():
    cax.clear_state_cache()
    client = make_client(init=3, warp="power")
    with with_rng_seed(3):
        trials = [t[k] for t in (step(client) for _ in range(6)) for k in t]
    assert node_of(client, 5) == "CMANP"
    model, adapter = surrogate_model(client), client._generation_strategy.adapter
    assert "PowerY" in adapter.transforms and "CopulaY" not in adapter.transforms
    # the model saw the power transform of the observed losses, not the losses
    _, seen = model._history.concatenated()
    n = seen.shape[-2]
    losses = torch.tensor([quad(p)["loss"] for p in trials[:n]], dtype=torch.float64)
    assert torch.allclose(seen.reshape(-1), power_warp(losses), atol=1e-9)
    # predictions come back in the metric's units
    x = trials[0]
    (out,) = client.predict([x])
    z = model.posterior(torch.tensor([[x["x0"], x["x1"]]], dtype=torch.float64)).mean.item()
    assert adapter.transforms["PowerY"]._map("loss", out["loss"][0])[0] == pytest.approx(z)


def test_copula_transform_round_trip_and_errors():
    from ax.core.observation import ObservationData

    from cmanp_bo.ax import CopulaY

    t = CopulaY.__new__(CopulaY)
    t.knots = {"m": (np.array([1.0, 2.0, 4.0]), np.array([-1.0, 0.0, 1.0]))}
    for y in (-3.0, 1.0, 1.5, 4.0, 9.0):
        z, slope = t._map("m", y)
        assert t._map("m", z, inverse=True)[0] == pytest.approx(y)
        assert slope > 0
    assert t._map("m", 3.0)[0] == pytest.approx(0.5)  # between the knots
    assert t._map("m", 6.0)[0] == pytest.approx(2.0)  # beyond: the end segment's slope
    obsd = ObservationData(["m"], np.array([3.0]), np.array([[0.25]]))
    (back,) = t._untransform_observation_data(t._transform_observation_data([obsd]))
    assert back.means[0] == pytest.approx(3.0) and back.covariance[0, 0] == pytest.approx(0.25)
    # with a second metric it leaves alone (a constraint in raw units): the cross-covariance
    # scales by the mapped metric's slope only, so the matrix stays a valid covariance
    cov = np.array([[0.25, 0.3], [0.3, 1.0]])
    obsd = ObservationData(["m", "c"], np.array([3.0, 7.0]), cov.copy())
    (warped,) = t._transform_observation_data([obsd])
    s = t._map("m", 3.0)[1]
    assert s == pytest.approx(0.5) and warped.means[1] == 7.0
    assert np.allclose(warped.covariance, [[0.25 * s**2, 0.3 * s], [0.3 * s, 1.0]])
    (back,) = t._untransform_observation_data([warped])
    assert np.allclose(back.covariance, cov) and back.means[0] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="unknown warp"):
        cax.cmanp_generation_strategy(warp="log")
    with pytest.raises(NotImplementedError, match="single objective"):
        client = make_client(objective="-a, -b", init=3, warp="rank")
        for _ in range(4):
            step(client)
