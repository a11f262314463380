"""Write a copy of a CMANP checkpoint whose hypothesis memory reads small contexts exactly.

``CMANPConfig.hypothesis_exact_points`` changes no weight: while the context holds at most that
many points, ``HypothesisMemory`` keeps them and computes its readout in kernel form instead of on
its random features (``cmanp_bo.nn.regression.HypothesisMemory.exact_readout``). This script sets
it on a trained network and writes the copy with a model card that records the source, its
checksum and the command.

    python experiments/exact_readout_checkpoint.py bo-d3-6-hyp64 runs/exact/hyp64-x128.pt \\
        --exact-points 128
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


def source_path(name: str) -> Path:
    """A shipped checkpoint's name or a path to a ``.pt`` file."""
    if name in pretrained.available():
        return pretrained.path_of(name)
    return Path(name)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", help="a shipped checkpoint name or a .pt path (CMANP)")
    p.add_argument("out", type=Path, help="the .pt file to write (its card beside it)")
    p.add_argument("--exact-points", type=int, required=True)
    args = p.parse_args(argv)
    src = source_path(args.source)
    net = load_checkpoint(src)
    if not isinstance(net, CMANP) or not net.cfg.hypothesis_count:
        raise SystemExit(f"{src} is not a CMANP with a hypothesis memory")
    cfg = dataclasses.replace(net.cfg, hypothesis_exact_points=args.exact_points)
    with torch.random.fork_rng():
        out = CMANP(cfg)
    out.load_state_dict(net.state_dict())
    card = read_card(src)
    for key in ("sha256", "file", "config", "num_parameters", "format", "arch"):
        card.pop(key, None)
    card["source"] = {"checkpoint": str(src), "sha256": sha256_of(src)}
    card["derived"] = (
        f"the source's weights with hypothesis_exact_points={args.exact_points}: "
        + " ".join(["python", *sys.argv])
    )
    card.pop("eval", None)  # the source's numbers are not this network's
    save_checkpoint(out.eval(), args.out, card)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
