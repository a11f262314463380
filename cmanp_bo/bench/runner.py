"""Run BO replications: suites, one replication, and the fan-out over processes or Ray.

A replication is ``(problem, surrogate, seed, settings)``: a Sobol initial design drawn from the
seed (the same points for every surrogate), then one point per step from the surrogate until the
budget or the wall-clock cap. Replications are independent, so they run in any order, in any
process; the parent alone writes the database.
"""

from __future__ import annotations

import datetime
import os
import resource
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch

from cmanp_bo.bench.problems import (
    HPO,
    INDIST,
    LONG,
    STANDARD,
    get_problem,
    problem_dim,
    problem_family,
)
from cmanp_bo.bench.store import ResultStore, RunKey


@dataclass
class Suite:
    """Problems x surrogates x seeds with shared settings."""

    problems: tuple[str, ...]
    surrogates: tuple[str, ...]
    seeds: int
    budget: int | None = None  # None: each problem's own budget
    time_cap_s: float | None = None  # per run, on cumulative wall-clock
    acquisition: dict = field(default_factory=dict)  # AcquisitionOptions overrides
    # per-surrogate option defaults (``--surrogate-options`` entries override them key by key)
    surrogate_options: dict = field(default_factory=dict)


SURROGATES_ALL = ("sobol", "gp", "gp-cheap", "cmanp", "tnp", "lbanp")
NETWORK_SURROGATES = ("cmanp", "tnp", "lbanp")  # their run keys name the network's weights
# ... and the revision of the model code where it changed what a run measures. 2 (2026-12-02):
# CMANPModel caches qLogNEI's baseline (``cache_baseline``): the same proposals up to rounding,
# cheaper steps, so more evaluations within a wall-clock cap. Keys without it are revision 1.
# 3 (2026-12-08): the hypothesis memory's random-feature readout sums only the components
# holding at least 1e-12 of the heaviest one's weight, and the kept-component sums drop slots
# no task keeps: the same outputs to 1e-9, a step of the d = 2..6 default 2-3x cheaper
# beyond 128 points (experiments/step_profile.py). 4 (2026-12-08): the same outputs to
# rounding in less memory (the memory's R x B Cholesky factors made one ratio at a time and
# remade only for the kept components; ``best_baseline`` decodes 256 points at a time, not
# 1024): a step's working memory at n = 2000-4000 at d = 2 about halves
# (experiments/peer_step_cost.py). 5 (2026-12-08): the exact readout's factors (n <= 128)
# likewise, one ratio at a time, the kept ones remade: a step's peak near n = 128 at d = 2
# from 682 to 443 MB (experiments/step_profile.py --problem ackley2_long --n 128).
MODEL_REVISION = 5

# The networks on the outcome warp (``cmanp_bo.warp``) their model cards recommend: the copula
# (rank) warp for the networks it was benchmarked best with (stop 19: on the standard suite it
# beat the unwarped bo-d1-2-reg / bo-d3-6-reg on 4 of the 10 problems and was level on 6), none
# for bo-d3-6-resid, the d = 2..6 default since stop 36 (README, issue 6). ``"auto"`` is
# resolved before a run key is made, so a key records the warp a run used. The peers get the
# rank warp, as the networks they are compared with did (gp stays Ax's default).
WARPED_NETWORKS = {"cmanp": {"warp": "auto"}, "tnp": {"warp": "rank"}, "lbanp": {"warp": "rank"}}

SUITES: dict[str, Suite] = {
    # the README's main job: a few minutes on 2 cores
    "quick": Suite(
        ("branin", "six_hump_camel"),
        ("sobol", "gp", "cmanp"),
        seeds=3,
        budget=20,
        acquisition={"num_restarts": 4, "raw_samples": 256},
        surrogate_options=WARPED_NETWORKS,
    ),
    "standard": Suite(STANDARD, SURROGATES_ALL, seeds=20, surrogate_options=WARPED_NETWORKS),
    "long": Suite(LONG, SURROGATES_ALL, seeds=5, time_cap_s=3600.0),
    "indist": Suite(INDIST, SURROGATES_ALL, seeds=1),
    "hpo": Suite(HPO, SURROGATES_ALL, seeds=5),
}


def run_keys(
    suite_name: str, suite: Suite, surrogate_options: dict[str, dict] | None = None
) -> list[RunKey]:
    """Every replication of a suite, in a seed-major order (early seeds of all cells first)."""
    keys = []
    networks: dict[tuple[str, int], str] = {}
    for seed in range(suite.seeds):
        for problem in suite.problems:
            for surrogate in suite.surrogates:
                options = {
                    **suite.surrogate_options.get(surrogate, {}),
                    **(surrogate_options or {}).get(surrogate, {}),
                }
                settings = {
                    "budget": suite.budget,
                    "time_cap_s": suite.time_cap_s,
                    "acquisition": suite.acquisition,
                    "options": options,
                }
                if surrogate in NETWORK_SURROGATES:
                    dim = problem_dim(problem)
                    if options.get("warp") == "auto":  # the warp its card recommends
                        from surrogates.registry import AUTO_WARP, default_checkpoint, resolve_warp

                        checkpoint = options.get("checkpoint") or default_checkpoint(surrogate, dim)
                        options = {**options, "warp": resolve_warp(AUTO_WARP, checkpoint, dim)}
                        settings["options"] = options
                    if (surrogate, dim) not in networks:
                        networks[surrogate, dim] = _network_identity(surrogate, options, dim)
                    settings["network"] = networks[surrogate, dim]
                    settings["model_revision"] = MODEL_REVISION
                keys.append(RunKey.make(suite_name, problem, surrogate, seed, settings))
    return keys


def _network_identity(surrogate: str, options: dict, dim: int) -> str:
    """Identity of the weights a network surrogate will load (``cmanp``: the shipped defaults
    unless ``checkpoint`` is given; a peer: its shipped checkpoint for ``dim``, and without one
    it fails later, with its own error)."""
    from cmanp_bo.pretrained import network_identity
    from surrogates.registry import default_checkpoint

    checkpoint = options.get("checkpoint")
    if checkpoint is None:
        checkpoint = default_checkpoint(surrogate, dim)
    if checkpoint is None:
        return "missing"
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise ValueError(f"{surrogate}: checkpoint must be a shipped name or a path")
    return network_identity(checkpoint, dim)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``VmHWM``, via ``/proc/self/clear_refs``) so that the
    next ``_peak_rss_mb`` is the run's own even when runs share a process (``--workers 1``, Ray
    actors). ``False`` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(reset: bool) -> float:
    """The peak RSS since ``_reset_peak_rss`` (``reset``), else the process's (``ru_maxrss``)."""
    if reset:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _hardware() -> str:
    from cmanp_bo.train import hardware

    return hardware()


def run_replication(key: RunKey, threads: int | None = 1) -> tuple[RunKey, dict, list[dict]]:
    """One BO run; returns ``(key, run row, step rows)`` for ``ResultStore.add``."""
    import json

    from cmanp_bo.bench.problems import Problem
    from surrogates.registry import AcquisitionOptions, make_surrogate

    if threads:
        torch.set_num_threads(threads)
    settings = json.loads(key.settings)
    problem: Problem = get_problem(key.problem)
    budget = settings["budget"] or problem.budget
    num_init = min(problem.num_init, budget - 1)
    surrogate = make_surrogate(
        key.surrogate,
        problem.dim,
        key.seed,
        AcquisitionOptions(**settings["acquisition"]),
        **settings["options"],
    )
    cap = settings["time_cap_s"]
    reset = _reset_peak_rss()
    design = torch.quasirandom.SobolEngine(problem.dim, scramble=True, seed=key.seed)
    X = design.draw(num_init, dtype=torch.float64)
    t_start = time.perf_counter()
    y = problem.evaluate(X)
    steps, best, cum_s = [], float("inf"), 0.0
    stopped = None

    def record(x: torch.Tensor, value: float, surrogate_s: float) -> None:
        nonlocal best
        best = min(best, value)
        steps.append(
            {
                "step": len(steps) + 1,
                "x": [round(v, 8) for v in x.tolist()],
                "value": value,
                "best": best,
                "regret": problem.regret(best),
                "score": problem.score(best),
                "surrogate_s": surrogate_s,
                "cum_surrogate_s": cum_s,
                "cum_wall_s": time.perf_counter() - t_start,
                "rss_mb": _rss_mb(),
            }
        )

    for i in range(num_init):
        record(X[i], y[i].item(), 0.0)
    while X.shape[0] < budget:
        if cap is not None and time.perf_counter() - t_start > cap:
            stopped = f"wall-clock cap {cap:g} s reached after {X.shape[0]} evaluations"
            break
        t0 = time.perf_counter()
        x = surrogate.ask(X, y).to(torch.float64).clamp(0, 1)
        dt = time.perf_counter() - t0
        cum_s += dt
        value = problem.evaluate(x[None])
        X, y = torch.cat([X, x[None]]), torch.cat([y, value])
        record(x, value.item(), dt)
    run = {
        "dim": problem.dim,
        "budget": budget,
        "num_evals": X.shape[0],
        "stopped": stopped,
        "best_value": best,
        "optimal_value": problem.optimal_value,
        "wall_s": time.perf_counter() - t_start,
        "surrogate_s": cum_s,
        "peak_rss_mb": _peak_rss_mb(reset),
        "hardware": _hardware(),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return key, run, steps


def _execute(
    keys: list[RunKey], workers: int, ray_address: str | None, threads: int
) -> Iterator[tuple[RunKey, dict, list[dict]]]:
    """Yield finished replications as they complete."""
    if ray_address is not None:
        yield from _execute_ray(keys, ray_address, threads)
    elif workers <= 1:
        for key in keys:
            yield run_replication(key, threads)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # one process per replication: its peak RSS is the run's own
        with ProcessPoolExecutor(
            workers, mp_context=mp.get_context("spawn"), max_tasks_per_child=1
        ) as pool:
            futures = [pool.submit(run_replication, k, threads) for k in keys]
            for fut in as_completed(futures):
                yield fut.result()


def _execute_ray(
    keys: list[RunKey], address: str, threads: int
) -> Iterator[tuple[RunKey, dict, list[dict]]]:
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            "--ray needs Ray: pip install 'cmanp-bo[ray]' (or pip install ray)"
        ) from None
    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, log_to_driver=False)
    remote = ray.remote(num_cpus=threads, max_calls=1)(run_replication)
    pending = [remote.remote(k, threads) for k in keys]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


def run_suite(
    store: ResultStore,
    suite_name: str,
    suite: Suite,
    surrogate_options: dict[str, dict] | None = None,
    workers: int = 1,
    ray_address: str | None = None,
    threads: int = 1,
    progress: bool = True,
) -> int:
    """Run every replication of ``suite`` not yet in ``store``; returns how many ran."""
    from tqdm.auto import tqdm

    keys = run_keys(suite_name, suite, surrogate_options)
    todo = store.pending(keys)
    validate_names({k.problem for k in todo}, {k.surrogate for k in todo})
    bar = tqdm(
        total=len(keys), initial=len(keys) - len(todo), disable=not progress, desc=suite_name
    )
    count = 0
    for key, run, steps in _execute(todo, workers, ray_address, threads):
        store.add(key, run, steps)
        count += 1
        bar.update(1)
        bar.set_postfix(last=f"{key.problem}/{key.surrogate}/{key.seed}", refresh=False)
    bar.close()
    return count


def suite_with(name: str, **overrides) -> Suite:
    """A named suite with some fields replaced (``None`` values keep the suite's own)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose from {sorted(SUITES)}")
    base = asdict(SUITES[name])
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Suite(**{k: tuple(v) if isinstance(v, list) else v for k, v in base.items()})


def validate_names(problems: Iterable[str], surrogates: Iterable[str]) -> None:
    from surrogates.registry import SURROGATES

    for s in surrogates:
        if s not in SURROGATES:
            raise ValueError(f"unknown surrogate {s!r}; choose from {sorted(SURROGATES)}")
    for p in problems:
        problem_family(p)
