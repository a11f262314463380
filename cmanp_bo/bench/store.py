"""The results database: one SQLite file, one row per run and one per evaluation.

A run's rows are written in one transaction when the run ends, so a killed benchmark loses at
most the runs in flight and ``pending`` skips every run already stored.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    suite TEXT NOT NULL,
    problem TEXT NOT NULL,
    surrogate TEXT NOT NULL,
    seed INTEGER NOT NULL,
    settings TEXT NOT NULL,          -- JSON: budget, acquisition, surrogate options, caps
    dim INTEGER NOT NULL,
    budget INTEGER NOT NULL,
    num_evals INTEGER NOT NULL,
    stopped TEXT,                    -- NULL: ran to budget; else why it stopped early
    best_value REAL NOT NULL,
    optimal_value REAL,
    wall_s REAL NOT NULL,
    surrogate_s REAL NOT NULL,
    peak_rss_mb REAL,
    hardware TEXT NOT NULL,
    finished TEXT NOT NULL,
    UNIQUE (suite, problem, surrogate, seed, settings)
);
CREATE TABLE IF NOT EXISTS steps (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,           -- 1-based evaluation index
    x TEXT NOT NULL,                 -- JSON list, unit cube
    value REAL NOT NULL,
    best REAL NOT NULL,
    regret REAL,
    score REAL,
    surrogate_s REAL NOT NULL,       -- model update + acquisition for this point (0 for the design)
    cum_surrogate_s REAL NOT NULL,
    cum_wall_s REAL NOT NULL,        -- surrogate + evaluations
    rss_mb REAL,
    PRIMARY KEY (run_id, step)
);
"""


@dataclass(frozen=True)
class RunKey:
    """What identifies a replication; ``settings`` is canonical JSON."""

    suite: str
    problem: str
    surrogate: str
    seed: int
    settings: str

    @staticmethod
    def make(suite: str, problem: str, surrogate: str, seed: int, settings: dict) -> RunKey:
        return RunKey(suite, problem, surrogate, seed, json.dumps(settings, sort_keys=True))


class ResultStore:
    """``ResultStore(path)`` opens (or creates) the database; safe to reopen after a crash."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def done(self, key: RunKey) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM runs WHERE suite=? AND problem=? AND surrogate=? AND seed=? "
            "AND settings=?",
            (key.suite, key.problem, key.surrogate, key.seed, key.settings),
        ).fetchone()
        return row is not None

    def pending(self, keys: list[RunKey]) -> list[RunKey]:
        return [k for k in keys if not self.done(k)]

    def add(self, key: RunKey, run: dict, steps: list[dict]) -> int:
        """Store a finished run and its steps atomically; returns the run id."""
        with self.db:
            cur = self.db.execute(
                "INSERT INTO runs (suite, problem, surrogate, seed, settings, dim, budget, "
                "num_evals, stopped, best_value, optimal_value, wall_s, surrogate_s, peak_rss_mb, "
                "hardware, finished) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    key.suite,
                    key.problem,
                    key.surrogate,
                    key.seed,
                    key.settings,
                    run["dim"],
                    run["budget"],
                    run["num_evals"],
                    run["stopped"],
                    run["best_value"],
                    run["optimal_value"],
                    run["wall_s"],
                    run["surrogate_s"],
                    run["peak_rss_mb"],
                    run["hardware"],
                    run["finished"],
                ),
            )
            run_id = cur.lastrowid
            self.db.executemany(
                "INSERT INTO steps (run_id, step, x, value, best, regret, score, surrogate_s, "
                "cum_surrogate_s, cum_wall_s, rss_mb) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        run_id,
                        s["step"],
                        json.dumps(s["x"]),
                        s["value"],
                        s["best"],
                        s["regret"],
                        s["score"],
                        s["surrogate_s"],
                        s["cum_surrogate_s"],
                        s["cum_wall_s"],
                        s["rss_mb"],
                    )
                    for s in steps
                ],
            )
        return run_id

    def runs(self, suite: str | None = None) -> list[dict]:
        q = "SELECT * FROM runs" + (" WHERE suite=?" if suite else "") + " ORDER BY id"
        cur = self.db.execute(q, (suite,) if suite else ())
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def steps(self, run_id: int) -> list[dict]:
        cur = self.db.execute("SELECT * FROM steps WHERE run_id=? ORDER BY step", (run_id,))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
