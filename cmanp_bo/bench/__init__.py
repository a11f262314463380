"""BO benchmarks: problems, surrogates by name, a resumable runner and reports.

``cmanp-bo bench --suite quick --out DIR`` runs a suite into ``DIR/results.sqlite`` and writes
``DIR/report.md`` and plots; ``cmanp-bo report --out DIR`` rebuilds the report.
"""

from cmanp_bo.bench.problems import PROBLEMS, Problem, get_problem
from cmanp_bo.bench.runner import SUITES, Suite, run_replication, run_suite
from cmanp_bo.bench.store import ResultStore, RunKey

__all__ = [
    "PROBLEMS",
    "Problem",
    "ResultStore",
    "RunKey",
    "SUITES",
    "Suite",
    "get_problem",
    "run_replication",
    "run_suite",
]
