"""``cmanp-bo bench`` and ``cmanp-bo report``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DB_NAME = "results.sqlite"


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _json_arg(text: str, flag: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"{flag} is not valid JSON ({e}): {text!r}") from None


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    from cmanp_bo.bench.runner import SUITES

    p.add_argument("--suite", default="quick", choices=sorted(SUITES))
    p.add_argument("--out", required=True, help=f"results folder ({DB_NAME}, report.md, plots)")
    p.add_argument("--problems", help="comma-separated problems (default: the suite's)")
    p.add_argument("--surrogates", help="comma-separated surrogates (default: the suite's)")
    p.add_argument("--seeds", type=int, help="replications per cell (default: the suite's)")
    p.add_argument("--budget", type=int, help="evaluations per run (default: each problem's)")
    p.add_argument("--time-cap", type=float, help="wall-clock cap per run, seconds")
    p.add_argument(
        "--acquisition",
        default=None,
        help="JSON overrides of the acquisition settings, e.g. '{\"num_restarts\": 10}'",
    )
    p.add_argument(
        "--surrogate-options",
        default="{}",
        help='JSON per surrogate, e.g. \'{"cmanp": {"checkpoint": "run/model.pt"}}\'',
    )
    p.add_argument("--workers", type=int, default=1, help="local worker processes")
    p.add_argument("--ray", default=None, help="Ray address ('local' starts one here)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per replication")
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")


def run_bench(args: argparse.Namespace) -> None:
    from cmanp_bo.bench.report import write_report
    from cmanp_bo.bench.runner import run_suite, suite_with, validate_names
    from cmanp_bo.bench.store import ResultStore

    acquisition = _json_arg(args.acquisition, "--acquisition") if args.acquisition else None
    options = _json_arg(args.surrogate_options, "--surrogate-options")
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise SystemExit("--surrogate-options must map surrogate names to option objects")
    if acquisition is not None:
        from surrogates.registry import AcquisitionOptions

        try:
            AcquisitionOptions(**acquisition)
        except TypeError as e:
            raise SystemExit(f"--acquisition: {e}") from None
    suite = suite_with(
        args.suite,
        problems=_csv(args.problems),
        surrogates=_csv(args.surrogates),
        seeds=args.seeds,
        budget=args.budget,
        time_cap_s=args.time_cap,
        acquisition=acquisition,
    )
    validate_names(suite.problems, suite.surrogates)
    out = Path(args.out)
    store = ResultStore(out / DB_NAME)
    try:
        ran = run_suite(
            store,
            args.suite,
            suite,
            options,
            workers=args.workers,
            ray_address=args.ray,
            threads=args.threads,
        )
        print(f"{ran} new runs in {out / DB_NAME}")
        if not args.no_report:
            print(write_report(store, out))
    finally:
        store.close()


def run_report(args: argparse.Namespace) -> None:
    from cmanp_bo.bench.report import write_report
    from cmanp_bo.bench.store import ResultStore

    db = Path(args.out) / DB_NAME
    if not db.exists():
        raise SystemExit(f"no results database at {db}; run `cmanp-bo bench --out {args.out}`")
    store = ResultStore(db)
    try:
        print(write_report(store, args.out))
    finally:
        store.close()
