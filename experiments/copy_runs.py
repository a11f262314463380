"""Copy benchmark runs, with their steps, from one results database into another.

    python experiments/copy_runs.py SRC.sqlite DEST.sqlite [--surrogates gp,sobol] [--problems a,b]

This is how a network benchmarked in a database of its own is compared with the rest:
``bench/standard_bo_d3_6_near/`` received the gp and sobol runs of ``bench/standard/`` for its
report, and ``bench/standard/`` the bo-d3-6-near runs once that network became the default.
A run already in DEST (same suite, problem, surrogate, seed and settings) is skipped; the copies
get DEST's own ids, so the report's newest-settings rule (``current_runs``) treats them as the
latest runs of their cells.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cmanp_bo.bench.store import ResultStore, RunKey


def copy_runs(
    src: Path, dest: Path, surrogates: set[str] | None = None, problems: set[str] | None = None
) -> int:
    """Copy the matching runs of ``src`` into ``dest``; returns how many were added."""
    if not src.exists():
        raise FileNotFoundError(f"no results database at {src}")
    source, target = ResultStore(src), ResultStore(dest)
    added = 0
    try:
        for run in source.runs():
            if (surrogates and run["surrogate"] not in surrogates) or (
                problems and run["problem"] not in problems
            ):
                continue
            key = RunKey(
                run["suite"], run["problem"], run["surrogate"], run["seed"], run["settings"]
            )
            if target.done(key):
                continue
            steps = [{**s, "x": json.loads(s["x"])} for s in source.steps(run["id"])]
            target.add(key, run, steps)
            added += 1
    finally:
        source.close()
        target.close()
    return added


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dest", type=Path)
    p.add_argument("--surrogates", help="comma-separated (default: all)")
    p.add_argument("--problems", help="comma-separated (default: all)")
    args = p.parse_args(argv)
    split = lambda s: set(s.split(",")) if s else None  # noqa: E731
    n = copy_runs(args.src, args.dest, split(args.surrogates), split(args.problems))
    print(f"copied {n} runs from {args.src} into {args.dest}")


if __name__ == "__main__":
    main()
