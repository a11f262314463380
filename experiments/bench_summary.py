"""Figures the README quotes that the benchmark report does not print, read from results databases.

    python experiments/bench_summary.py            # all of them, from experiments/results/bench/*
    python experiments/bench_summary.py --rebuild  # also time a state-cache rebuild (bo-default)

- boundary share: the fraction of model proposals with a coordinate at 0 or 1, per suite and
  surrogate;
- long suite: median surrogate seconds per step in a window of +-10 around n, and the simple
  regret at n;
- best values to 4 digits (the report rounds to 2), for suites without a known optimum;
- ``--rebuild``: seconds to rebuild the Ax state of n points one at a time (what the state cache
  does on a restart or a re-base) vs one blocked encode, with the shipped checkpoint, one thread.

Writes experiments/results/bench/summary.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "results" / "bench"


def _db(suite: str) -> sqlite3.Connection | None:
    path = BENCH / suite / "results.sqlite"
    return sqlite3.connect(path) if path.exists() else None


def boundary_share(db: sqlite3.Connection) -> dict[str, float]:
    out = {}
    for (s,) in db.execute("SELECT DISTINCT surrogate FROM runs WHERE surrogate != 'sobol'"):
        xs = [
            json.loads(x)
            for (x,) in db.execute(
                "SELECT st.x FROM steps st JOIN runs r ON r.id = st.run_id "
                "WHERE r.surrogate = ? AND st.surrogate_s > 0",
                (s,),
            )
        ]
        on_edge = sum(any(v <= 1e-6 or v >= 1 - 1e-6 for v in x) for x in xs)
        out[s] = round(on_edge / len(xs), 3)
    return out


def long_profile(db: sqlite3.Connection, ns=(50, 100, 200, 400)) -> dict[str, dict]:
    out = {}
    for run_id, s in db.execute("SELECT id, surrogate FROM runs"):
        steps = db.execute(
            "SELECT step, surrogate_s, regret FROM steps WHERE run_id = ? ORDER BY step", (run_id,)
        ).fetchall()
        out[s] = {
            "s_per_step_near_n": {
                n: round(statistics.median(t for k, t, _ in steps if abs(k - n) <= 10 and t > 0), 3)
                for n in ns
            },
            "regret_at_n": {n: round(r, 4) for k, _, r in steps for n in ns if k == n},
        }
    return out


def best_values(db: sqlite3.Connection) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for p, s, v in db.execute(
        "SELECT problem, surrogate, AVG(best_value) FROM runs GROUP BY problem, surrogate"
    ):
        out.setdefault(p, {})[s] = round(v, 4)
    return out


def rebuild_cost(ns=(200, 2000)) -> dict[int, dict[str, float]]:
    import torch

    from cmanp_bo.botorch_model import ENCODE_BLOCK, _absorb_canonically, resolve_network

    torch.set_num_threads(1)
    net = resolve_network("default", 1, torch.device("cpu"))
    out = {}
    for n in ns:
        Z = torch.rand(n, net.cfg.dim_x, dtype=torch.float64)
        Y = torch.randn(n, 1, dtype=torch.float64)
        t0 = time.perf_counter()
        _absorb_canonically(net, net.empty_state(), Z, Y)
        t1 = time.perf_counter()
        net.encode(Z, Y, block_size=ENCODE_BLOCK)
        t2 = time.perf_counter()
        out[n] = {"one_at_a_time_s": round(t1 - t0, 3), "blocked_encode_s": round(t2 - t1, 4)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rebuild", action="store_true")
    args = p.parse_args()
    summary: dict = {"boundary_share": {}}
    for suite in ("standard", "long", "indist", "hpo"):
        db = _db(suite)
        if db is None:
            continue
        summary["boundary_share"][suite] = boundary_share(db)
        if suite == "long":
            summary["long_profile"] = long_profile(db)
        if suite == "hpo":
            summary["hpo_best_values"] = best_values(db)
    if args.rebuild:
        summary["state_cache_rebuild"] = rebuild_cost()
    text = json.dumps(summary, indent=1)
    (BENCH / "summary.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
