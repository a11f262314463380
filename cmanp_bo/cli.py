"""The ``cmanp-bo`` command.

cmanp-bo bench --suite quick --out DIR    BO benchmark: CMANP vs GP vs peers (resumable)
cmanp-bo report --out DIR                 tables and plots from a results folder
cmanp-bo gp-benchmark [--batches 300]     score the shipped 1-D checkpoints (paper protocol)
cmanp-bo train --out DIR [--arch tnp]     meta-train a CMANP or a peer (resumable)
cmanp-bo checkpoints                      list the shipped checkpoints and their cards
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def _gp_benchmark(args: argparse.Namespace) -> None:
    from cmanp_bo import pretrained
    from cmanp_bo.gp_benchmark import evaluate_models, markdown_table

    torch.set_num_threads(args.threads)
    models = {
        "CMANP (shipped)": pretrained.load("gp1d-rbf-cmanp"),
        "CMANP-AND (shipped)": pretrained.load("gp1d-rbf-cmanp-and"),
    }
    results = evaluate_models(models, batches=args.batches, batch_size=16)
    print(markdown_table(results))


def _checkpoints(args: argparse.Namespace) -> None:
    from cmanp_bo import pretrained

    keys = (
        "prior",
        "steps",
        "wall_time_s",
        "hardware",
        "default_for_dims",
        "warp",
        "known_weakness",
    )
    for name in pretrained.available():
        card = pretrained.card(name)
        summary = {k: card.get(k) for k in (*keys, "eval") if k in card}
        print(name, json.dumps(summary, indent=2))
    routing = {d: pretrained.default_bo_name(d) for d in range(1, 11)}
    print("CMANPModel(checkpoint='default') loads, per input dimension d:")
    for d, name in routing.items():
        print(f"  d={d}: {name or 'an UNTRAINED placeholder (no shipped BO checkpoint)'}")
    for arch in ("tnp", "lbanp"):
        peers = {d: pretrained.default_bo_name(d, arch) for d in range(1, 11)}
        served = ", ".join(f"d={d}: {n}" for d, n in peers.items() if n) or "none shipped"
        print(f"benchmark peer {arch!r} (cmanp-bo bench --surrogates {arch}) loads: {served}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="cmanp-bo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    from cmanp_bo.bench.cli import add_bench_arguments, run_bench, run_report

    p = sub.add_parser("bench", help="run a BO benchmark suite (resumable) and report it")
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)

    p = sub.add_parser("report", help="markdown tables and plots from a results folder")
    p.add_argument("--out", required=True, help="the folder given to `cmanp-bo bench --out`")
    p.set_defaults(func=run_report)

    p = sub.add_parser("gp-benchmark", help="score the shipped 1-D checkpoints on the GP benchmark")
    p.add_argument("--batches", type=int, default=300, help="batches of 16 tasks per kernel")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=_gp_benchmark)

    from cmanp_bo.train import add_arguments, run_from_args

    p = sub.add_parser("train", help="meta-train a CMANP or a peer on a GP prior (resumable)")
    add_arguments(p)
    p.set_defaults(func=run_from_args)

    p = sub.add_parser("checkpoints", help="list the shipped checkpoints")
    p.set_defaults(func=_checkpoints)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
