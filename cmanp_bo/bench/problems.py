"""Benchmark problems: every one is a function on the unit cube ``[0, 1]^d`` to MINIMISE.

Four families, all offline:

- ``standard``: the synthetic problems of Ax's benchmark registry (``ax.benchmark``) with their
  registry budgets, optimal values and baselines (for Ax's score);
- ``long``: BoTorch test functions at 1000 evaluations;
- ``indist``: functions drawn from the BO training prior (``cmanp_bo.priors.bo``), realised as
  random-Fourier-feature GP samples so they can be evaluated anywhere;
- ``hpo``: cross-validated loss of scikit-learn models on its bundled datasets.

``get_problem(name)`` builds one by name; ``PROBLEMS`` lists every name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass
class Problem:
    """A minimisation problem on ``[0, 1]^dim``.

    Attributes:
        name: registry name.
        dim: input dimension.
        budget: evaluations of a run (initial design included).
        evaluate: ``n x dim`` unit-cube points -> ``n`` values (float64).
        optimal_value: the known minimum, or ``None`` (then regret is not reported).
        baseline_value: Ax's baseline (best of a Sobol design) for the score, or ``None``.
        num_init: size of the Sobol initial design (paired across surrogates by seed).
    """

    name: str
    dim: int
    budget: int
    evaluate: Callable[[Tensor], Tensor] = field(repr=False)
    optimal_value: float | None = None
    baseline_value: float | None = None
    num_init: int = 0

    def __post_init__(self) -> None:
        if not self.num_init:
            self.num_init = max(5, 2 * self.dim)  # Ax's default Sobol initialisation
        if self.num_init >= self.budget:
            raise ValueError(f"{self.name}: num_init={self.num_init} >= budget={self.budget}")

    def regret(self, best: float) -> float | None:
        return None if self.optimal_value is None else max(best - self.optimal_value, 0.0)

    def score(self, best: float) -> float | None:
        """Ax's score: 0 at the baseline, 100 at the optimum."""
        if self.optimal_value is None or self.baseline_value is None:
            return None
        return 100.0 * (self.baseline_value - best) / (self.baseline_value - self.optimal_value)


# ------------------------------------------------------------------------------------ synthetic
def _botorch_on_cube(fn) -> Callable[[Tensor], Tensor]:
    bounds = fn.bounds.to(torch.float64)

    def evaluate(X: Tensor) -> Tensor:
        Z = bounds[0] + X.to(torch.float64) * (bounds[1] - bounds[0])
        return fn.evaluate_true(Z).to(torch.float64)

    return evaluate


STANDARD = (
    "branin",
    "hartmann3",
    "hartmann6",
    "ackley4",
    "levy4",
    "powell4",
    "rosenbrock4",
    "griewank4",
    "six_hump_camel",
    "three_hump_camel",
)


def _registry_problem(name: str) -> Problem:
    from ax.benchmark.problems.registry import get_benchmark_problem

    p = get_benchmark_problem(name)
    fn = p.test_function.botorch_problem
    return Problem(
        name=name,
        dim=fn.dim,
        budget=p.num_trials,
        evaluate=_botorch_on_cube(fn),
        optimal_value=float(p.optimal_value),
        baseline_value=float(p.baseline_value),
    )


def _long_problem(name: str) -> Problem:
    from botorch.test_functions import Ackley, Hartmann, Levy, Rosenbrock

    fn = {
        "hartmann6_long": lambda: Hartmann(dim=6),
        "ackley10": lambda: Ackley(dim=10),
        "levy10": lambda: Levy(dim=10),
        "rosenbrock8": lambda: Rosenbrock(dim=8),
        "ackley2_long": lambda: Ackley(dim=2),
        "levy2_long": lambda: Levy(dim=2),
        "rosenbrock2_long": lambda: Rosenbrock(dim=2),
    }[name]()
    return Problem(
        name=name,
        dim=fn.dim,
        budget=1000,
        evaluate=_botorch_on_cube(fn),
        optimal_value=float(fn.optimal_value),
    )


LONG = ("hartmann6_long", "ackley10", "levy10", "rosenbrock8")
# The long suite's functions at d = 2, where the neural peers (shipped for d <= 2 only) can run:
# family "long", not among the suite's default problems
LONG_D2 = ("ackley2_long", "levy2_long", "rosenbrock2_long")


# ------------------------------------------------------------------------------- in-distribution
INDIST_DIMS = (2, 4, 8)
INDIST_FUNCTIONS = 50


def _indist_problem(name: str) -> Problem:
    """``prior{d}_{k}``: the k-th function drawn from the training prior at dimension d."""
    from cmanp_bo.priors.bo import BOPriorSampler

    d, k = (int(v) for v in name[len("prior") :].split("_"))
    sampler = BOPriorSampler(seed=1_000_003 * d + k, max_dim=d)
    gen = sampler.gen
    kernel, lengthscales = sampler.hyperparameters(1, d)
    lengthscales = lengthscales[0]
    num_features = 2048
    # spectral density: Gaussian for RBF, Student-t with 2 nu = 5 dof for Matern-5/2
    omega = torch.randn(num_features, d, generator=gen, dtype=torch.float64)
    if kernel == "matern":
        # Student-t frequencies: Gaussian / sqrt(chi2_5 / 5); chi2_5 as a sum of 5 squared normals
        chi2 = torch.randn(num_features, 5, generator=gen, dtype=torch.float64).pow(2).sum(-1, True)
        omega = omega / (chi2 / 5.0).sqrt()
    omega = omega / lengthscales.to(torch.float64)
    phase = 2 * math.pi * torch.rand(num_features, generator=gen, dtype=torch.float64)
    weight = torch.randn(num_features, generator=gen, dtype=torch.float64)
    scale = math.sqrt(2.0 / num_features)

    def evaluate(X: Tensor) -> Tensor:
        return scale * torch.cos(X.to(torch.float64) @ omega.T + phase) @ weight

    optimum = _estimate_minimum(evaluate, d, seed=k)
    return Problem(name=name, dim=d, budget=20 * d + 20, evaluate=evaluate, optimal_value=optimum)


def _estimate_minimum(evaluate: Callable[[Tensor], Tensor], d: int, seed: int) -> float:
    """Dense Sobol search refined by L-BFGS-B from the best points (the true minimum is unknown)."""
    from scipy.optimize import minimize

    X = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed).draw(2**14, dtype=torch.float64)
    values = evaluate(X)
    best = values.min().item()
    for i in values.argsort()[:10].tolist():
        res = minimize(
            lambda z: evaluate(torch.as_tensor(z)[None]).item(),
            X[i].numpy(),
            bounds=[(0.0, 1.0)] * d,
            method="L-BFGS-B",
        )
        best = min(best, float(res.fun))
    return best


# ------------------------------------------------------------------------------------ hpo
HPO = (
    "hpo_gb_breast_cancer",
    "hpo_gb_wine",
    "hpo_svm_digits",
    "hpo_svm_breast_cancer",
    "hpo_gb_diabetes",
    "hpo_svm_diabetes",
)


def _hpo_problem(name: str) -> Problem:
    """Cross-validated loss of a scikit-learn model; hyperparameters on log or linear scales."""
    from sklearn import datasets
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, SVR

    _, model_kind, *data_parts = name.split("_")
    data_name = "_".join(data_parts)
    X, y = getattr(datasets, f"load_{data_name}")(return_X_y=True)
    regression = data_name == "diabetes"
    if data_name == "digits":
        X, y = X[::3], y[::3]  # a third of the data keeps one evaluation near a second
    # (name, low, high, log scale, integer)
    space = {
        "gb": [
            ("learning_rate", 1e-3, 1.0, True, False),
            ("n_estimators", 10, 200, True, True),
            ("max_depth", 1, 8, False, True),
            ("subsample", 0.3, 1.0, False, False),
        ],
        "svm": [("C", 1e-3, 1e3, True, False), ("gamma", 1e-5, 1e1, True, False)],
    }[model_kind]

    def params(z: np.ndarray) -> dict:
        out = {}
        for zi, (pname, lo, hi, log, integer) in zip(z, space):
            v = (
                math.exp(math.log(lo) + zi * (math.log(hi) - math.log(lo)))
                if log
                else lo + zi * (hi - lo)
            )
            out[pname] = int(round(v)) if integer else v
        return out

    def loss(z: np.ndarray) -> float:
        p = params(z)
        if model_kind == "gb":
            cls = GradientBoostingRegressor if regression else GradientBoostingClassifier
            est = cls(random_state=0, **p)
        else:
            est = make_pipeline(StandardScaler(), (SVR if regression else SVC)(**p))
        scoring = "neg_mean_squared_error" if regression else "accuracy"
        s = cross_val_score(est, X, y, cv=3, scoring=scoring).mean()
        # classification: error rate; regression: MSE in units of the target variance
        return float(-s / np.var(y)) if regression else float(1.0 - s)

    def evaluate(Z: Tensor) -> Tensor:
        return torch.tensor([loss(z) for z in Z.double().clamp(0, 1).numpy()], dtype=torch.float64)

    return Problem(name=name, dim=len(space), budget=10 * len(space) + 10, evaluate=evaluate)


# ------------------------------------------------------------------------------------ registry
INDIST: tuple[str, ...] = tuple(
    f"prior{d}_{k}" for d in INDIST_DIMS for k in range(INDIST_FUNCTIONS)
)
PROBLEMS: tuple[str, ...] = STANDARD + LONG + LONG_D2 + INDIST + HPO


def problem_family(name: str) -> str:
    """``"standard"``, ``"long"``, ``"hpo"`` or ``"indist"``; ``ValueError`` for an unknown name."""
    if name in STANDARD:
        return "standard"
    if name in LONG or name in LONG_D2:
        return "long"
    if name in HPO:
        return "hpo"
    if name in INDIST:
        return "indist"
    raise ValueError(
        f"unknown problem {name!r}; choose from the standard problems {list(STANDARD)}, the "
        f"long ones {list(LONG + LONG_D2)}, the hpo ones {list(HPO)} or prior<d>_<k> with d in "
        f"{list(INDIST_DIMS)} and k < {INDIST_FUNCTIONS}"
    )


_STANDARD_DIMS = {"branin": 2, "hartmann3": 3, "hartmann6": 6, "six_hump_camel": 2}
_STANDARD_DIMS |= {"three_hump_camel": 2} | {f"{f}4": 4 for f in ("ackley", "levy", "powell")}
_STANDARD_DIMS |= {"rosenbrock4": 4, "griewank4": 4}
_LONG_DIMS = {"hartmann6_long": 6, "ackley10": 10, "levy10": 10, "rosenbrock8": 8}
_LONG_DIMS |= {name: 2 for name in LONG_D2}


def problem_dim(name: str) -> int:
    """The input dimension of ``name`` without building the problem (an in-distribution one
    searches for its minimum, an HPO one loads data); ``ValueError`` for an unknown name."""
    family = problem_family(name)
    if family == "standard":
        return _STANDARD_DIMS[name]
    if family == "long":
        return _LONG_DIMS[name]
    if family == "hpo":
        return {"svm": 2, "gb": 4}[name.split("_")[1]]
    return int(name[len("prior") :].split("_")[0])


def get_problem(name: str) -> Problem:
    """The problem called ``name`` (see ``PROBLEMS``); ``ValueError`` for an unknown one."""
    build = {
        "standard": _registry_problem,
        "long": _long_problem,
        "hpo": _hpo_problem,
        "indist": _indist_problem,
    }[problem_family(name)]
    return build(name)
