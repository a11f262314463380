"""Find (and with ``--apply`` clear) committed runs whose peak RSS is not their own.

Before stop 27 the runner read a run's peak RSS with ``getrusage(RUSAGE_SELF).ru_maxrss``: the
peak of the whole process so far. Runs that shared a process (``--workers 1``, which runs the
replications one after another in the calling process) therefore recorded
``max(own peak, every earlier run's peak in that process)``. Where a run's own peak was the
lower, its recorded value is exactly the earlier run's: the same number of KiB. Two runs in
separate processes landing on the same KiB is not impossible, but clearing such a value loses a
measurement and never keeps a wrong one.

This script takes every run of every ``results.sqlite`` under ``--root`` (runs copied into
several databases, the same key and finish time, count once), orders them by finish time and
flags each run whose peak equals that of a run that finished earlier on the same hardware.
``--apply`` sets the flagged runs' ``peak_rss_mb`` to NULL in every database that holds them (the
report leaves NULL peaks out) and writes the list to ``--record``.

    python experiments/shared_peak_rss.py            # list what would be cleared
    python experiments/shared_peak_rss.py --apply    # clear it; then re-run `cmanp-bo report`
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "experiments" / "results" / "bench"
COLUMNS = "suite, problem, surrogate, seed, settings, finished, hardware, peak_rss_mb"


def _shown(db: Path) -> str:
    """``db`` relative to the repository where it lies in it, else as given."""
    db = db.resolve()
    return str(db.relative_to(ROOT)) if db.is_relative_to(ROOT) else str(db)


def shared_peaks(dbs: list[Path]) -> list[dict]:
    """The runs (one dict per distinct run, with the databases holding it) whose peak RSS equals
    the peak of a run that finished earlier on the same hardware."""
    runs: dict[tuple, dict] = {}
    for db in dbs:
        with sqlite3.connect(db) as con:
            query = f"SELECT {COLUMNS} FROM runs WHERE peak_rss_mb IS NOT NULL"
            for row in con.execute(query):
                key = row[:6]
                run = runs.setdefault(
                    key,
                    {
                        **dict(zip(COLUMNS.split(", "), row)),
                        "databases": [],
                    },
                )
                run["databases"].append(_shown(db))
    flagged: list[dict] = []
    first: dict[tuple, dict] = {}
    for run in sorted(runs.values(), key=lambda r: r["finished"]):
        peak = (run["hardware"], run["peak_rss_mb"])
        if peak in first:
            earlier = first[peak]
            flagged.append(
                {
                    **{k: run[k] for k in ("suite", "problem", "surrogate", "seed", "finished")},
                    "peak_rss_mb": run["peak_rss_mb"],
                    "same_as": {
                        k: earlier[k] for k in ("suite", "problem", "surrogate", "seed", "finished")
                    },
                    "settings": run["settings"],
                    "databases": run["databases"],
                }
            )
        else:
            first[peak] = run
    return flagged


def clear(flagged: list[dict]) -> int:
    """Set the flagged runs' peak RSS to NULL; returns the number of rows changed."""
    changed = 0
    for run in flagged:
        for db in run["databases"]:
            with sqlite3.connect(ROOT / db) as con:
                cur = con.execute(
                    "UPDATE runs SET peak_rss_mb = NULL WHERE suite = ? AND problem = ? AND "
                    "surrogate = ? AND seed = ? AND settings = ? AND finished = ?",
                    tuple(run[k] for k in ("suite", "problem", "surrogate", "seed"))
                    + (
                        run["settings"],
                        run["finished"],
                    ),
                )
                changed += cur.rowcount
    return changed


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", type=Path, default=BENCH)
    p.add_argument("--apply", action="store_true", help="set the flagged peaks to NULL")
    p.add_argument("--record", type=Path, default=ROOT / "experiments/results/shared_peak_rss.json")
    args = p.parse_args(argv)
    dbs = sorted(args.root.glob("*/results.sqlite"))
    flagged = shared_peaks(dbs)
    per_db: dict[str, int] = {}
    for run in flagged:
        for db in run["databases"]:
            per_db[db] = per_db.get(db, 0) + 1
    for db, count in sorted(per_db.items()):
        print(f"{count:5d}  {db}")
    print(f"{len(flagged)} distinct runs whose peak RSS equals an earlier run's")
    if args.apply:
        changed = clear(flagged)
        record = {
            "command": "python experiments/shared_peak_rss.py --apply",
            "why": (
                "recorded with the process's peak RSS (ru_maxrss) while sharing a process with "
                "earlier runs: each equals an earlier run's peak to the KiB, so it is that run's"
            ),
            "rows_cleared": changed,
            "runs": flagged,
        }
        args.record.write_text(json.dumps(record, indent=1) + "\n")
        print(f"cleared {changed} rows; list in {args.record}")
    return flagged


if __name__ == "__main__":
    main()
