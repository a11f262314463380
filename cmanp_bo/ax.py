"""Ax integration: CMANP as a drop-in surrogate inside an ``ax.Client`` loop.

Usage::

    from ax import Client
    from cmanp_bo.ax import cmanp_generation_strategy

    client = Client()
    client.configure_experiment(parameters=[...])
    client.configure_optimization(objective="-loss")
    client.set_generation_strategy(cmanp_generation_strategy(dim=2))

Importing this module registers what Ax needs:

- ``fit_botorch_model`` for ``CMANPModel``: a no-op (the network is pretrained);
- ``CMANPModel`` in Ax's model registry and ``NonFiniteY`` in its transform registry, so
  ``Client.save_to_json_file`` / ``load_from_json_file`` work with a CMANP generation strategy
  (import ``cmanp_bo.ax`` before loading a snapshot in a new process);
- an Ax input constructor for ``CMANPModel`` that drops the observed noise variances (the network
  infers noise from the data and cannot use them) and hands the model the process-level
  ``StateCache`` of this module.

Constant cost in the loop. Ax rebuilds the surrogate from the FULL data set at every generation
call. The CMANP node therefore

1. builds each ``CMANPModel`` through a process-level ``StateCache``: the data Ax passes are
   matched (exact bytes, via a hash of the prefix) against the data sets absorbed at earlier
   calls, and only the trials completed since then go through the network; a mismatch (data
   changed, reordered, other process) falls back to encoding everything, which gives the same
   model up to rounding;
2. keeps the model's own outcome frame, which moves only on a fixed doubling schedule
   (see ``cmanp_bo.botorch_model.StateCache``);
3. runs Ax's adapter WITHOUT the y-rescaling transforms ``Winsorize`` and ``StandardizeY``
   (``CMANP_TRANSFORMS``): both are recomputed from all data at every call, so they would change
   every old observation and invalidate the absorbed state. ``Derelativize`` (relative
   constraints) and ``BilogY`` (a fixed function of each value, magnifying outcome-constraint
   boundaries) are kept because they never change an old observation. The model thus sees
   outcomes in raw units and standardises them in its frozen frame.

``embed_stats()`` reports, for every model built, how many points were embedded and how many were
taken over from the cache.

Bad observations: NaN or infinite metric values are skipped with a warning naming the trial and
metric (``NonFiniteY``); failed and abandoned trials are left out, as Ax does.

``cmanp_generation_strategy(warp="rank")`` adds ``CopulaY``: the objective's observations are
replaced by the Gaussian copula transform of their ranks (``cmanp_bo.warp``), and the acquisition
works on that scale; ``warp="power"`` adds ``PowerY``, the smooth Yeo-Johnson alternative.
Each new trial changes the warped value of every old one, so the state cache misses and every
call encodes all points again (one at a time, as on any cache miss).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
from ax.adapter.registry import Generators, MBM_X_trans
from ax.adapter.transforms.base import Transform
from ax.adapter.transforms.bilog_y import BilogY
from ax.adapter.transforms.derelativize import Derelativize
from ax.core.experiment_status import ExperimentStatus
from ax.core.parameter import FixedParameter
from ax.core.trial_status import TrialStatus
from ax.generation_strategy.generation_strategy import GenerationNode, GenerationStrategy
from ax.generation_strategy.generator_spec import GeneratorSpec
from ax.generation_strategy.transition_criterion import MaxTrialsAwaitingData, MinTrials
from ax.generators.torch.botorch_modular.acquisition import Acquisition
from ax.generators.torch.botorch_modular.surrogate import (
    ModelConfig,
    SurrogateSpec,
    _submodel_input_constructor_base,
    submodel_input_constructor,
)
from ax.generators.torch.botorch_modular.utils import fit_botorch_model
from ax.storage.botorch_modular_registry import register_acquisition, register_model
from ax.storage.transform_registry import register_transform
from botorch.acquisition.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.monte_carlo import qNoisyExpectedImprovement
from botorch.models.model import Model

from cmanp_bo.acquisition import DEFAULT_MAX_BASELINE, best_baseline
from cmanp_bo.botorch_model import CMANPModel, EmbedRecord, StateCache
from cmanp_bo.warp import check_warp, warp_outcomes

logger = logging.getLogger(__name__)


class NonFiniteY(Transform):
    """Skips observations whose reported mean is NaN or infinite, with a warning.

    Ax stores such values as the user reports them. Without ``Winsorize`` an infinite mean would
    reach the model (which rejects it loudly, at every later call); a NaN mean is dropped by Ax
    without a word. This transform turns infinite means into missing values (dropped like NaN)
    and warns once per trial and metric, naming them, so a bad evaluation is neither silent nor
    able to corrupt or block the model.
    """

    no_op_for_experiment_data = False

    def transform_experiment_data(self, experiment_data: Any) -> Any:
        obs = experiment_data.observation_data
        if obs.empty or "mean" not in obs.columns.get_level_values(0):
            return experiment_data
        for metric in obs["mean"].columns:
            values = obs["mean", metric].astype(float)
            inf = np.isinf(values.to_numpy())
            if inf.any():
                obs["mean", metric] = values.where(~inf)
                if ("sem", metric) in obs.columns:
                    obs["sem", metric] = obs["sem", metric].where(~inf)
        self._warn_reported_non_finite()
        return type(experiment_data)(arm_data=experiment_data.arm_data, observation_data=obs)

    def _warn_reported_non_finite(self) -> None:
        experiment = getattr(self.adapter, "_experiment", None)
        if experiment is None:
            return
        df = experiment.lookup_data().df
        if df.empty:
            return
        bad = df[~np.isfinite(df["mean"].astype(float).to_numpy())]
        new = [
            (int(t), str(m))
            for t, m in zip(bad["trial_index"], bad["metric_name"], strict=True)
            if (id(experiment), int(t), str(m)) not in _WARNED_NON_FINITE
        ]
        if not new:
            return
        _WARNED_NON_FINITE.update((id(experiment), t, m) for t, m in new)
        listed = ", ".join(f"trial {t} metric {m!r}" for t, m in new)
        warnings.warn(
            f"skipping non-finite (NaN or inf) metric values reported for {listed}: the model is "
            "built without them. Report failed evaluations with mark_trial_failed instead (Ax's "
            "own get_best_parameterization fails once a NaN value is stored)",
            RuntimeWarning,
            stacklevel=2,
        )


_WARNED_NON_FINITE: set[tuple[int, int, str]] = set()


class WarpY(Transform):
    """A monotone warp of the objective's observations (``cmanp_bo.warp``; ``WARP`` names it).

    Fitted on the data the adapter is built from: each observed mean becomes its warped value
    among the n observations of its metric (``CopulaY``: ``Phi^-1((rank - 1/2) / n)``, ties
    sharing the average rank; ``PowerY``: the standardised Yeo-Johnson transform), and SEMs are
    dropped (the network cannot use them). Any other value, e.g. a prediction to untransform,
    goes through the monotone piecewise-linear map between the observed values and their warped
    values, continued linearly beyond them with the slopes of the end segments; covariances
    scale with the local slopes (``Cov[i, j]`` by ``s_i s_j``). Monotone increasing, so the
    objective's direction holds. Only single-objective experiments; outcome-constraint metrics
    are left in raw units.
    """

    WARP = "rank"
    requires_data_for_initialization = True

    def __init__(
        self,
        search_space: Any = None,
        experiment_data: Any = None,
        adapter: Any = None,
        config: Any = None,
    ) -> None:
        super().__init__(
            search_space=search_space,
            experiment_data=experiment_data,
            adapter=adapter,
            config=config,
        )
        optimization_config = getattr(adapter, "_optimization_config", None)
        metrics = self.config.get("metrics")
        if metrics is None:
            if optimization_config is None:
                raise ValueError(
                    f"{type(self).__name__} needs an optimization config or config['metrics']"
                )
            if optimization_config.is_moo_problem:
                raise NotImplementedError(
                    f"warp={self.WARP!r} supports a single objective; for several objectives "
                    "use the default warp=None"
                )
            metrics = list(optimization_config.objective.metric_signatures)
        means = experiment_data.observation_data["mean"]
        self.knots: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for metric in metrics:
            if metric not in means.columns:
                continue
            values = means[metric].astype(float).to_numpy()
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            scores = warp_outcomes(torch.as_tensor(values, dtype=torch.float64), self.WARP)
            scores = scores.numpy()
            y, first = np.unique(values, return_index=True)  # ties share their score
            self.knots[metric] = (y, scores[first])

    def _map_array(
        self, metric: str, values: np.ndarray, inverse: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """The warped (or, ``inverse``, raw) values and the map's local slopes there."""
        y, z = self.knots[metric]
        src, dst = (z, y) if inverse else (y, z)
        if src.size == 1:
            return values - src[0] + dst[0], np.ones_like(values)
        slopes = np.diff(dst) / np.diff(src)
        k = np.clip(np.searchsorted(src, values, side="right") - 1, 0, src.size - 2)
        return dst[k] + slopes[k] * (values - src[k]), slopes[k]

    def _map(self, metric: str, value: float, inverse: bool = False) -> tuple[float, float]:
        """``_map_array`` for one value."""
        mapped, slope = self._map_array(metric, np.array([value], dtype=float), inverse)
        return float(mapped[0]), float(slope[0])

    def transform_experiment_data(self, experiment_data: Any) -> Any:
        obs = experiment_data.observation_data
        for metric in self.knots:
            if ("mean", metric) not in obs.columns:
                continue
            values = obs["mean", metric].astype(float).to_numpy()
            finite = np.isfinite(values)
            warped = values.copy()
            warped[finite] = self._map_array(metric, values[finite])[0]
            obs["mean", metric] = warped
            if ("sem", metric) in obs.columns:
                obs["sem", metric] = np.nan
        return type(experiment_data)(arm_data=experiment_data.arm_data, observation_data=obs)

    def _transform_observation_data(self, observation_data: list[Any]) -> list[Any]:
        return self._map_observation_data(observation_data, inverse=False)

    def _untransform_observation_data(self, observation_data: list[Any]) -> list[Any]:
        return self._map_observation_data(observation_data, inverse=True)

    def _map_observation_data(self, observation_data: list[Any], inverse: bool) -> list[Any]:
        # the map is locally linear: y_i -> a_i + s_i * y_i, so Cov[i, j] -> s_i * s_j * Cov[i, j]
        # (metrics it leaves alone have s = 1; their covariance with a mapped one scales by s_i)
        for obsd in observation_data:
            slopes = np.ones(len(obsd.metric_signatures))
            for i, metric in enumerate(obsd.metric_signatures):
                if metric in self.knots and np.isfinite(obsd.means[i]):
                    obsd.means[i], slopes[i] = self._map(metric, obsd.means[i], inverse)
            obsd.covariance = obsd.covariance * np.outer(slopes, slopes)
        return observation_data


class CopulaY(WarpY):
    """``WarpY`` with the Gaussian copula (rank) transform: ``warp="rank"``."""

    WARP = "rank"


class PowerY(WarpY):
    """``WarpY`` with the standardised Yeo-Johnson transform: ``warp="power"``."""

    WARP = "power"


#: the Ax transform of each warp name
WARP_TRANSFORMS: dict[str, type[WarpY]] = {"rank": CopulaY, "power": PowerY}


#: Adapter transforms of the CMANP node: Ax's defaults for BoTorch (``MBM_X_trans + Y_trans``)
#: without ``Winsorize`` and ``StandardizeY``, whose data-dependent re-scaling of every old
#: observation would invalidate the absorbed state (the model owns its outcome frame instead),
#: and with ``NonFiniteY`` first (skips NaN and infinite metric values with a warning).
CMANP_TRANSFORMS: list[type[Transform]] = [NonFiniteY, *MBM_X_trans, Derelativize, BilogY]

#: Sobol trials when neither ``initialization_trials`` nor ``dim`` is given (Ax's own default).
DEFAULT_INITIALIZATION_TRIALS = 5

# Models of one process share this cache: Ax builds a new adapter, surrogate and model at every
# generation call, so only a process-level cache survives between calls.
_STATE_CACHE = StateCache(max_entries=32)


def initialization_trials_for(dim: int | None) -> int:
    """Sobol trials before CMANP takes over: ``max(5, 2 * dim)`` (5 when ``dim`` is unknown)."""
    if dim is None:
        return DEFAULT_INITIALIZATION_TRIALS
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return max(DEFAULT_INITIALIZATION_TRIALS, 2 * dim)


def cmanp_generation_strategy(
    initialization_trials: int | None = None,
    *,
    dim: int | None = None,
    checkpoint: str = "default",
    rebase_factor: float = 2.0,
    incremental: bool = True,
    botorch_acqf_class: type[AcquisitionFunction] | None = None,
    num_restarts: int | None = None,
    raw_samples: int | None = None,
    optimizer_options: dict[str, Any] | None = None,
    min_observed_initialization_trials: int | None = None,
    initialization_seed: int | None = None,
    torch_device: str | None = None,
    max_baseline: int | None = DEFAULT_MAX_BASELINE,
    warp: str | None = None,
) -> GenerationStrategy:
    """A Sobol -> CMANP generation strategy for ``ax.Client.set_generation_strategy``.

    Args:
        initialization_trials: Sobol trials before the CMANP node takes over (failed and
            abandoned trials do not count). ``None``: ``max(5, 2 * dim)``, or 5 when ``dim`` is
            not given either (use ``cmanp_generation_strategy_for(client)`` to size it from a
            configured experiment). ``0``: no Sobol node (needs data attached beforehand).
        dim: number of tunable parameters, used only to size the initialization.
        checkpoint: the CMANP checkpoint (``"default"``, a shipped name or a path to a ``.pt``);
            a string, so the strategy can be saved to JSON.
        rebase_factor: the outcome frame moves when the number of points reaches this factor
            times the count it was computed from (see ``CMANPModel``).
        incremental: build each model through the process-level state cache so that only the
            trials completed since the last call are embedded (``False``: encode all data at
            every call, as Ax does with a GP).
        botorch_acqf_class: ``None`` lets Ax choose: ``qLogNoisyExpectedImprovement`` for one
            objective (``qLogProbabilityOfFeasibility`` while no observed point is feasible),
            ``qLogNoisyExpectedHypervolumeImprovement`` for 2-4 objectives.
        num_restarts, raw_samples: acquisition optimizer settings (Ax's defaults when ``None``:
            20 and 1024); small values make each call cheaper.
        optimizer_options: further keyword arguments for the BoTorch optimizer (e.g.
            ``{"options": {"maxiter": 50}}``), merged with the two above.
        min_observed_initialization_trials: completed Sobol trials required before CMANP
            (default: half the initialization, at least 1).
        initialization_seed: seed of the Sobol sequence.
        torch_device: e.g. ``"cuda"``; ``None`` for Ax's default.
        max_baseline: the noisy-EI baseline keeps the observed points with the best posterior
            mean, at most this many (``cmanp_bo.acquisition``), so the acquisition's cost stops
            growing with the number of trials; ``None``: every observed point, as in Ax.
        warp: ``"rank"`` models the objective on the Gaussian copula transform of its
            observations (``CopulaY``; one objective only); ``"power"`` on their standardised
            Yeo-Johnson transform (``PowerY``, smooth; README, issue 6, stop 23). In the
            benchmark's standard suite (Ax's synthetic problems, run through the same warp in
            the BoTorch surrogate, not through this strategy) the rank warp beat the unwarped
            ``bo-d1-2-reg`` / ``bo-d3-6-reg`` on 4 of 10 and lost on none; the d = 2..6
            default since stop 36, ``bo-d3-6-resid``, was benchmarked without it (README,
            issue 6), so ``None`` suits it. Each call then encodes every point, a cost linear
            in the trials.

    Returns:
        A ``GenerationStrategy`` with a ``"Sobol"`` node (when ``initialization_trials > 0``)
        and a ``"CMANP"`` node using ``Generators.BOTORCH_MODULAR`` with ``CMANPModel``.
    """
    check_warp(warp)
    if initialization_trials is None:
        initialization_trials = initialization_trials_for(dim)
    if initialization_trials < 0:
        raise ValueError(f"initialization_trials must be >= 0, got {initialization_trials}")
    if not isinstance(checkpoint, str):
        raise TypeError(
            "checkpoint must be a string (a shipped name or a path) so that the generation "
            f"strategy can be saved to JSON; got {type(checkpoint).__name__}"
        )
    optimizer_kwargs = dict(optimizer_options or {})
    if num_restarts is not None:
        optimizer_kwargs["num_restarts"] = num_restarts
    if raw_samples is not None:
        optimizer_kwargs["raw_samples"] = raw_samples
    model_config = ModelConfig(
        botorch_model_class=CMANPModel,
        model_options={
            "checkpoint": checkpoint,
            "rebase_factor": rebase_factor,
            "incremental": incremental,
        },
        name="CMANP",
    )
    generator_kwargs: dict[str, Any] = {
        "surrogate_spec": SurrogateSpec(model_configs=[model_config]),
        "transforms": (
            CMANP_TRANSFORMS if warp is None else [*CMANP_TRANSFORMS, WARP_TRANSFORMS[warp]]
        ),
        "transform_configs": {
            "Derelativize": {"use_raw_status_quo": True},
            "BilogY": {"derelativize_with_raw_status_quo": True},
        },
    }
    if max_baseline is not None:
        if not isinstance(max_baseline, int) or isinstance(max_baseline, bool) or max_baseline < 1:
            raise ValueError(f"max_baseline must be a positive int or None, got {max_baseline!r}")
        generator_kwargs["acquisition_class"] = BoundedBaselineAcquisition
        generator_kwargs["acquisition_options"] = {"max_baseline": max_baseline}
    if optimizer_kwargs:
        generator_kwargs["default_model_gen_options"] = {"optimizer_kwargs": optimizer_kwargs}
    if botorch_acqf_class is not None:
        generator_kwargs["botorch_acqf_class"] = botorch_acqf_class
    if torch_device is not None:
        generator_kwargs["torch_device"] = torch.device(torch_device)
    cmanp_node = GenerationNode(
        name="CMANP",
        generator_specs=[
            GeneratorSpec(
                generator_enum=Generators.BOTORCH_MODULAR, generator_kwargs=generator_kwargs
            )
        ],
        should_deduplicate=True,
        suggested_experiment_status=ExperimentStatus.OPTIMIZATION,
    )
    if initialization_trials == 0:
        return GenerationStrategy(name="CMANP", nodes=[cmanp_node])
    min_observed = min_observed_initialization_trials
    if min_observed is None:
        min_observed = max(1, initialization_trials // 2)
    sobol_node = GenerationNode(
        name="Sobol",
        generator_specs=[
            GeneratorSpec(
                generator_enum=Generators.SOBOL,
                generator_kwargs={"seed": initialization_seed},
            )
        ],
        transition_criteria=[
            MinTrials(
                threshold=initialization_trials,
                transition_to="CMANP",
                use_all_trials_in_exp=False,
                not_in_statuses=[TrialStatus.FAILED, TrialStatus.ABANDONED],
            ),
            MinTrials(
                threshold=min_observed,
                transition_to="CMANP",
                use_all_trials_in_exp=True,
                only_in_statuses=[TrialStatus.COMPLETED],
                count_only_trials_with_data=True,
            ),
        ],
        pausing_criteria=[
            MaxTrialsAwaitingData(
                threshold=initialization_trials,
                not_in_statuses=[TrialStatus.FAILED, TrialStatus.ABANDONED],
                use_all_trials_in_exp=False,
            )
        ],
        should_deduplicate=True,
        suggested_experiment_status=ExperimentStatus.INITIALIZATION,
    )
    return GenerationStrategy(name="Sobol+CMANP", nodes=[sobol_node, cmanp_node])


def cmanp_generation_strategy_for(client: Any, **kwargs: Any) -> GenerationStrategy:
    """``cmanp_generation_strategy`` sized from a configured ``ax.Client``'s search space.

    ``dim`` is the number of non-fixed parameters of the client's experiment; other keyword
    arguments are passed on.
    """
    search_space = client._experiment.search_space
    dim = sum(not isinstance(p, FixedParameter) for p in search_space.parameters.values())
    return cmanp_generation_strategy(dim=dim, **kwargs)


# ------------------------------------------------------------------------------------ stats
def embed_stats() -> list[EmbedRecord]:
    """One record per ``CMANPModel`` built by Ax in this process through the state cache.

    ``embedded`` is the number of points that went through the network for that build (the new
    observations, or all of them on a cache miss or a scheduled re-base), ``reused`` the number
    taken over from the cache. A multi-output experiment builds one model per metric.
    """
    return _STATE_CACHE.records


def clear_state_cache() -> None:
    """Forget the cached states and the records (as in a fresh process)."""
    _STATE_CACHE.clear()


def state_cache() -> StateCache:
    """The process-level cache the CMANP node builds its models through."""
    return _STATE_CACHE


# ------------------------------------------------------------------------------------ acquisition
class BoundedBaselineAcquisition(Acquisition):
    """Ax's ``Acquisition`` whose noisy-EI baseline is at most ``options["max_baseline"]``
    points, those with the best posterior mean (``cmanp_bo.acquisition.best_baseline``).

    Other acquisition functions (hypervolume, feasibility) get every observed point as usual.
    """

    def _construct_botorch_acquisition(
        self,
        botorch_acqf_class: type[AcquisitionFunction],
        botorch_acqf_options: dict[str, Any],
        model: Model,
    ) -> AcquisitionFunction:
        X = self.X_observed
        limit = self.options.get("max_baseline", DEFAULT_MAX_BASELINE)
        noisy_ei = (qLogNoisyExpectedImprovement, qNoisyExpectedImprovement)
        if X is None or X.shape[-2] <= limit or not issubclass(botorch_acqf_class, noisy_ei):
            return super()._construct_botorch_acquisition(
                botorch_acqf_class, botorch_acqf_options, model
            )
        objective, posterior_transform = self.get_botorch_objective_and_transform(
            botorch_acqf_class=botorch_acqf_class,
            model=model,
            objective_weights=self._objective_weights,
            outcome_constraints=self._outcome_constraints,
            X_observed=X,
            learned_objective_preference_model=self._learned_objective_preference_model,
        )
        self.X_observed = best_baseline(model, X, limit, objective, posterior_transform)
        try:
            return super()._construct_botorch_acquisition(
                botorch_acqf_class, botorch_acqf_options, model
            )
        finally:
            self.X_observed = X


# ------------------------------------------------------------------------------------ registration
@fit_botorch_model.register(CMANPModel)
def _fit_cmanp(model: CMANPModel, mll_class: Any = None, mll_options: Any = None) -> None:
    """Nothing to fit: the network is pretrained and conditions on the data in context."""
    return None


@submodel_input_constructor.register(CMANPModel)
def _cmanp_input_constructor(
    botorch_model_class: type[CMANPModel],
    model_config: ModelConfig,
    dataset: Any,
    search_space_digest: Any,
    surrogate: Any,
) -> dict[str, Any]:
    """Ax's default inputs, without the noise variances, with the state cache."""
    inputs = _submodel_input_constructor_base(
        botorch_model_class,
        model_config=model_config,
        dataset=dataset,
        search_space_digest=search_space_digest,
        surrogate=surrogate,
    )
    if inputs.pop("train_Yvar", None) is not None:
        logger.debug("CMANPModel ignores observed SEMs: the network infers the noise level")
    if model_config.model_options.get("incremental", True):
        inputs["state_cache"] = _STATE_CACHE
    return inputs


register_model(CMANPModel)
register_acquisition(BoundedBaselineAcquisition)
register_transform(NonFiniteY)
register_transform(CopulaY)
register_transform(PowerY)


__all__ = [
    "CMANP_TRANSFORMS",
    "DEFAULT_INITIALIZATION_TRIALS",
    "BoundedBaselineAcquisition",
    "CopulaY",
    "NonFiniteY",
    "PowerY",
    "WARP_TRANSFORMS",
    "WarpY",
    "clear_state_cache",
    "cmanp_generation_strategy",
    "cmanp_generation_strategy_for",
    "embed_stats",
    "initialization_trials_for",
    "state_cache",
]
