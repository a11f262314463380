"""Profile one BO step of the benchmark's default ``cmanp`` surrogate on hartmann6 at n = 300.

    python experiments/step_profile.py

300 uniform points of hartmann6_long (seed 0), the long suite's acquisition settings (2
restarts, 128 raw samples), one torch thread; the model is built on the first 299 points, then
one ``ask`` on all 300 is profiled (cProfile, cumulative time, top 25). An ad-hoc diagnostic:
nothing is written.
"""

import cProfile
import pstats
import time

import torch

from cmanp_bo.bench.problems import get_problem
from surrogates.registry import AcquisitionOptions, make_surrogate


def main() -> None:
    torch.set_num_threads(1)
    p = get_problem("hartmann6_long")
    g = torch.Generator().manual_seed(0)
    X = torch.rand(300, 6, generator=g, dtype=torch.float64)
    y = p.evaluate(X)
    s = make_surrogate("cmanp", 6, 0, AcquisitionOptions(num_restarts=2, raw_samples=128))
    s.ask(X[:299], y[:299])  # build
    pr = cProfile.Profile()
    t = time.perf_counter()
    pr.enable()
    s.ask(X, y)
    pr.disable()
    print("ask s", time.perf_counter() - t)
    pstats.Stats(pr).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
