"""Pilot (issue 6): the hypothesis memory's own Bayesian model average as the BO surrogate.

The d = 3..6 networks read the context through ``HypothesisMemory`` (a constant-memory average of
random-feature GP regressions over lengthscale hypotheses) and then decode with a learned head
that infers noise std 0.2-0.3 of the data's spread on noise-free problems and does not refine the
incumbent (``incumbent_probe.py``). This pilot skips the head: the posterior is the memory's own
evidence-weighted mixture, moment-matched jointly over the q + baseline points, so it asks
whether the memory alone refines where the decoder does not.

``exact``: the same hypotheses in ``cmanp_bo.hypothesis_gp.HypothesisAveragedGP`` (kernel form, no
random features); ``short_every=k``: every k-th hypothesis 16 times shorter (exact mode only);
``features``: random features per hypothesis and kernel. ``bank_dim=D`` (exact mode only): the
hypotheses drawn from the hyperprior of D dimensions, as a network padded to ``dim_x = D`` draws
its bank, and their first d entries used (stop 35: the d = 3..6 networks' banks are D = 6 draws).

Runs the standard suite's replications (same problems, budgets, paired Sobol designs, qLogNEI with
the suite's settings) with this model, and writes one JSON per run to ``--out``.

    python experiments/memory_head_pilot.py --problems hartmann3 ackley4 --seeds 5 --out runs/mh
    python experiments/memory_head_pilot.py --out runs/mh --summary   # the table
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from pathlib import Path

import torch
from botorch.models.model import Model
from torch import Tensor

from cmanp_bo.hypothesis_gp import HypothesisAveragedGP, moment_match
from cmanp_bo.nn.regression import HypothesisMemory
from cmanp_bo.warp import warp_outcomes


class MemoryBMAModel(HypothesisAveragedGP):
    """The hypothesis memory's posterior on ``(X, Y)`` (one output, maximised), moment-matched.

    Components (noise ratio, bank) whose evidence weight is below ``1e-4`` of the total are
    dropped (at most ``max_components`` kept); the scale grid is summed out exactly as in
    ``HypothesisMemory.readout``. ``posterior`` is ``HypothesisAveragedGP``'s.
    """

    def __init__(self, X: Tensor, Y: Tensor, memory: HypothesisMemory, max_components=32):
        Model.__init__(self)
        self.memory = memory
        self._dtype, self._train_X = X.dtype, X.double()
        self._offset, self._scale = Y.mean(), Y.std().clamp_min(1e-9)
        Yf = ((Y - self._offset) / self._scale).double()
        stats = memory.stats(X.double(), Yf, torch.Size([]))
        chol, alpha, w_rb, noise_w = memory._posterior(stats, X.shape[0])
        R, B = w_rb.shape
        w = w_rb.reshape(-1)
        keep = torch.argsort(w, descending=True)[:max_components]
        keep = keep[w[keep] >= 1e-4 * w.sum()]
        self.r_idx, self.b_idx = keep // B, keep % B
        wk = w[keep]
        self.w = wk / wk.sum()
        self.lam = noise_w.reshape(-1)[keep] / wk  # expected noise variance given (r, b)
        self.chol = chol[self.r_idx, self.b_idx]  # K x m x m
        self.alpha = alpha[self.r_idx, self.b_idx]  # K x m
        self.noise_variance = (self.w * self.lam).sum()

    def moments(self, X: Tensor) -> tuple[Tensor, Tensor]:
        phi = self.memory.features(X.double())[..., self.b_idx, :, :]  # ... x K x N x m
        mean_k = (phi @ self.alpha.unsqueeze(-1)).squeeze(-1)  # ... x K x N
        half = torch.linalg.solve_triangular(self.chol, phi.transpose(-1, -2), upper=False)
        cov_k = self.lam[:, None, None] * (half.transpose(-1, -2) @ half)  # ... x K x N x N
        return moment_match(self.w, mean_k.movedim(-2, 0), cov_k.movedim(-3, 0))


def make_surrogate_class():
    from surrogates.registry import Surrogate

    class MemoryHeadSurrogate(Surrogate):
        name = "memory-bma"

        def __init__(
            self,
            dim,
            seed,
            acquisition=None,
            warp=None,
            hypotheses=64,
            features=64,
            exact=False,
            short_every=0,
            bank_dim=None,
        ):
            super().__init__(dim, seed, acquisition)
            self.warp = warp
            self.exact = exact
            if bank_dim is not None and not exact:
                raise ValueError("bank_dim needs exact=true")
            self.memory = HypothesisMemory(bank_dim or dim, hypotheses, features, seed=0)
            if short_every:  # every k-th hypothesis 16 times shorter (the training prior's)
                self.memory.lengthscales[::short_every] /= 16.0
            self.lengthscales = self.memory.lengthscales[:, :dim]

        def ask(self, X, y):
            Y = warp_outcomes(-y, self.warp)[:, None]
            if self.exact:  # the same hypotheses, exact (cmanp_bo.hypothesis_gp)
                model = HypothesisAveragedGP(X, Y, hypotheses=self.lengthscales)
            else:
                model = MemoryBMAModel(X, Y, self.memory)
            return self._optimize(model, X, y)

    return MemoryHeadSurrogate


def run_one(args):
    problem, seed, options, out = args
    from cmanp_bo.bench import runner
    from cmanp_bo.bench.store import RunKey
    from surrogates import registry

    cls = make_surrogate_class()
    registry.SURROGATES[cls.name] = cls
    settings = {
        "budget": None,
        "acquisition": {"num_restarts": 5, "raw_samples": 256},
        "options": options,
        "time_cap_s": None,
    }
    key = RunKey.make("standard", problem, cls.name, seed, settings)
    t0 = time.time()
    _, run, steps = runner.run_replication(key, threads=1)
    run["seconds"] = time.time() - t0
    run["steps"] = [{k: s[k] for k in ("value", "best", "regret", "x")} for s in steps]
    path = Path(out) / f"{problem}_{seed}.json"
    path.write_text(json.dumps(run))
    return problem, seed, run["best_value"], run["seconds"]


STANDARD_DB = Path(__file__).resolve().parent / "results" / "bench" / "standard" / "results.sqlite"
# the suite's runs the pilot is read against: Ax's GP, the warped default network, Sobol
REFERENCES = {"gp": {}, "cmanp": {"warp": "rank"}, "sobol": {}}


def summarise(out: str | Path, db: Path = STANDARD_DB) -> dict:
    """Per problem: the mean final log10 regret of the pilot's runs in ``out`` and of the
    reference runs of ``db`` on the same seeds (what the README's pilot table quotes)."""
    import math
    import sqlite3
    import statistics

    pilot: dict[str, dict[int, float]] = {}
    for path in Path(out).glob("*.json"):
        run = json.loads(path.read_text())
        problem, seed = path.stem.rsplit("_", 1)
        pilot.setdefault(problem, {})[int(seed)] = math.log10(
            run["best_value"] - run["optimal_value"]
        )
    con = sqlite3.connect(db)
    table = {}
    for problem, by_seed in sorted(pilot.items()):
        row = {"seeds": sorted(by_seed), "pilot": statistics.mean(by_seed.values())}
        for surrogate, options in REFERENCES.items():
            ref = {}
            for seed, settings, best, opt in con.execute(
                "SELECT seed, settings, best_value, optimal_value FROM runs "
                "WHERE suite = 'standard' AND problem = ? AND surrogate = ?",
                (problem, surrogate),
            ):
                settings = json.loads(settings)
                current = surrogate != "cmanp" or settings.get("model_revision") == 2
                if settings["options"] == options and current and seed in by_seed:
                    ref[seed] = math.log10(best - opt)
            row[surrogate] = statistics.mean(ref.values()) if ref else None
        table[problem] = row
        print(problem, {k: v if k == "seeds" else round(v, 2) for k, v in row.items()})
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", nargs="+", help="standard problems to run (not with --summary)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--options", default="{}")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--summary", action="store_true", help="print the runs in --out against the suite's"
    )
    a = p.parse_args()
    if a.summary:
        summarise(a.out)
        return
    if not a.problems:
        p.error("--problems is required to run the pilot")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    jobs = [
        (prob, s, json.loads(a.options), a.out)
        for prob in a.problems
        for s in range(a.first_seed, a.first_seed + a.seeds)
        if not (Path(a.out) / f"{prob}_{s}.json").exists()
    ]
    with mp.get_context("fork").Pool(a.workers) as pool:
        for res in pool.imap_unordered(run_one, jobs):
            print(*res, flush=True)


if __name__ == "__main__":
    main()
