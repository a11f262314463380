"""Profile one BO step of the benchmark's default ``cmanp`` surrogate on hartmann6 at n = 300.

    python experiments/step_profile.py [--n 300] [--top 25] [--problem hartmann6_long]
        [--run DB ID] [--repeats 1]

300 (``--n``) uniform points of hartmann6_long (``--problem``; seed 0), or the first n points
a stored run evaluated (``--run``: its results database and run id), the long suite's
acquisition settings (2 restarts, 128 raw samples), one torch thread; the model is built on
all but the last point, then one ``ask`` on all of them is profiled (cProfile, cumulative
time, top 25), with the step's peak RSS (reset just before it; Linux). ``--repeats k`` times
k more asks on the same points (each a new step: the acquisition is reseeded) and prints
their median. An ad-hoc diagnostic: nothing is written.
"""

import argparse
import cProfile
import json
import pstats
import sqlite3
import statistics
import time

import torch

from cmanp_bo.bench.problems import get_problem
from cmanp_bo.bench.runner import _peak_rss_mb, _reset_peak_rss
from surrogates.registry import AcquisitionOptions, make_surrogate


def stored_points(db: str, run_id: int, n: int) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The problem of run ``run_id`` in ``db`` and its first ``n`` points and values."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        row = con.execute("SELECT problem FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise SystemExit(f"no run {run_id} in {db}")
        steps = con.execute(
            "SELECT x, value FROM steps WHERE run_id = ? ORDER BY step LIMIT ?", (run_id, n)
        ).fetchall()
    if len(steps) < n:
        raise SystemExit(f"run {run_id} holds {len(steps)} points, fewer than --n {n}")
    X = torch.tensor([json.loads(x) for x, _ in steps], dtype=torch.float64)
    return row[0], X, torch.tensor([v for _, v in steps], dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="observed points (>= 2)")
    parser.add_argument("--top", type=int, default=25, help="profile rows printed")
    parser.add_argument("--problem", default="hartmann6_long", help="uniform points on it")
    parser.add_argument("--run", nargs=2, metavar=("DB", "ID"), help="a stored run's points")
    parser.add_argument("--repeats", type=int, default=0, help="further timed asks")
    args = parser.parse_args()
    if args.n < 2:
        parser.error("--n must be >= 2")
    n = args.n
    torch.set_num_threads(1)
    if args.run:
        name, X, y = stored_points(args.run[0], int(args.run[1]), n)
    else:
        name = args.problem
        g = torch.Generator().manual_seed(0)
        X = torch.rand(n, get_problem(name).dim, generator=g, dtype=torch.float64)
        y = get_problem(name).evaluate(X)
    p = get_problem(name)
    s = make_surrogate("cmanp", p.dim, 0, AcquisitionOptions(num_restarts=2, raw_samples=128))
    s.ask(X[:-1], y[:-1])  # build
    if not _reset_peak_rss():
        raise SystemExit("the step's peak RSS needs Linux /proc/self/clear_refs")
    pr = cProfile.Profile()
    t = time.perf_counter()
    pr.enable()
    s.ask(X, y)
    pr.disable()
    seconds, peak = time.perf_counter() - t, _peak_rss_mb(reset=True)
    print(f"{name}, n = {n}: ask {seconds:.3f} s, the step's peak RSS {peak:.0f} MB")
    pstats.Stats(pr).sort_stats("cumulative").print_stats(args.top)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        s.ask(X, y)
        times.append(time.perf_counter() - t)
    if times:
        print(f"median of {len(times)} more asks: {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
