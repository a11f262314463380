"""Write a copy of a CMANP checkpoint whose hypothesis memory reads its context otherwise.

Neither setting changes a learned weight:

* ``--exact-points N`` (``CMANPConfig.hypothesis_exact_points``): while the context holds at most
  N points, ``HypothesisMemory`` keeps them and computes its readout in kernel form instead of on
  its random features (``cmanp_bo.nn.regression.HypothesisMemory.exact_readout``).
* ``--prior-dim D`` (``CMANPConfig.hypothesis_prior_dim``): the bank's draws scaled to the
  lengthscale hyperprior of D dimensions (the bank is redrawn by the warm start; stop 35's pilot
  sets D to each problem's d).
* ``--task-dim`` (``CMANPConfig.hypothesis_task_dim``): the same draws scaled to each task's own
  dimension, which the model knows (``CMANP.for_task_dim``); excludes ``--prior-dim``.

The copy is written with a model card that records the source, its checksum and the command.

    python experiments/exact_readout_checkpoint.py bo-d3-6-hyp64 runs/exact/hyp64-x128.pt \\
        --exact-points 128
    python experiments/exact_readout_checkpoint.py bo-d3-6-resid runs/exact/resid-p2.pt \\
        --prior-dim 2
    python experiments/exact_readout_checkpoint.py bo-d3-6-resid runs/exact/resid-task.pt \
        --task-dim
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from cmanp_bo import pretrained
from cmanp_bo.checkpoint import load_checkpoint, read_card, save_checkpoint, sha256_of
from cmanp_bo.nn.cmanp import CMANP
from cmanp_bo.train import TrainConfig, _warm_start


def source_path(name: str) -> Path:
    """A shipped checkpoint's name or a path to a ``.pt`` file."""
    if name in pretrained.available():
        return pretrained.path_of(name)
    return Path(name)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="a shipped checkpoint name or a .pt path (CMANP)")
    p.add_argument("out", type=Path, help="the .pt file to write (its card beside it)")
    p.add_argument("--exact-points", type=int, help="hypothesis_exact_points (default: kept)")
    p.add_argument("--prior-dim", type=int, help="hypothesis_prior_dim (default: kept)")
    p.add_argument("--task-dim", action="store_true", default=None, help="hypothesis_task_dim=True")
    args = p.parse_args(argv)
    src = source_path(args.source)
    net = load_checkpoint(src)
    if not isinstance(net, CMANP) or not net.cfg.hypothesis_count:
        raise SystemExit(f"{src} is not a CMANP with a hypothesis memory")
    changes = {
        "hypothesis_exact_points": args.exact_points,
        "hypothesis_prior_dim": args.prior_dim,
        "hypothesis_task_dim": args.task_dim,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        p.error("pass --exact-points, --prior-dim and/or --task-dim")
    cfg = dataclasses.replace(net.cfg, **changes)
    with torch.random.fork_rng():
        out = CMANP(cfg)
    _warm_start(out, TrainConfig(init_from=str(src)))  # redraws the bank if prior_dim changed
    card = read_card(src)
    for key in ("sha256", "file", "config", "num_parameters", "format", "arch"):
        card.pop(key, None)
    card["source"] = {"checkpoint": str(src), "sha256": sha256_of(src)}
    card["derived"] = f"the source's weights with {changes}: " + " ".join(["python", *sys.argv])
    card.pop("eval", None)  # the source's numbers are not this network's
    save_checkpoint(out.eval(), args.out, card)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
