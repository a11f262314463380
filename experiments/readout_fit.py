"""How much of its hypothesis memory's readout a network keeps (issue 4 diagnostic, stop 35).

A network with a ``HypothesisMemory`` receives, per target, the memory's model-averaged mean,
function std and noise std. The readout on its own is a predictive distribution,
``N(mean, f_std^2 + noise_std^2)``. This script scores both on the same held-out tasks of the
networks' training prior (``BOPriorSampler(max_dim=6, min_dim=2, short_share=0.5)``, the
d = 3..6 recipe's, without near-context targets): the mean log-likelihood per target point of
the readout alone and of the network, with the readout on its random features and, where the
network allows it (``--exact-points``), exact in kernel form. A network below its own readout
discards what the memory gives it.

    python experiments/readout_fit.py runs/chain19/bo-d36-hyp-short64/model.pt \\
        runs/chain19/bo-d36-hyp-resid64/model.pt --out experiments/results/readout_fit.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from cmanp_bo.checkpoint import load_checkpoint
from cmanp_bo.priors.bo import BOPriorSampler


def score(base, batches, n: int) -> tuple[float, float]:
    """Mean LL per target point of the readout alone and of the network."""
    readout, network = [], []
    for b in batches:
        xc, yc, xt, yt = (t.double() for t in (b.xc, b.yc, b.xt, b.yt))
        net = base.for_task_dim(b.dim)  # its bank for the task's own d, where it asks for that
        with torch.no_grad():
            state = net.encode(xc, yc)
            out = net.hypothesis.readout(state.hypothesis, n, xt)
            var = out[..., 1].exp().pow(2) + out[..., 2].exp().pow(2)
            ll = -0.5 * (
                (yt[..., 0] - out[..., 0]).pow(2) / var + var.log() + math.log(2 * math.pi)
            )
            readout.append(ll.mean().item())
            network.append(net.log_likelihood(state, xt, yt).mean().item())
    return sum(readout) / len(readout), sum(network) / len(network)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", help="CMANP checkpoints with a hypothesis memory")
    p.add_argument("--dims", nargs="+", type=int, default=[4, 6])
    p.add_argument("--sizes", nargs="+", type=int, default=[16, 64])
    p.add_argument("--batches", type=int, default=4, help="batches of 16 tasks per cell")
    p.add_argument("--exact-points", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for d in args.dims:
        for n in args.sizes:
            sampler = BOPriorSampler(max_dim=6, min_dim=2, pad_dim=6, short_share=0.5)
            sampler.gen.manual_seed(1000 + 10 * d + n)
            batches = [sampler.sample(16, dim=d, num_context=n) for _ in range(args.batches)]
            for path in args.checkpoints:
                net = load_checkpoint(path, dtype=torch.float64)
                for exact in sorted({0, args.exact_points}):
                    net.hypothesis.exact_points = exact
                    readout, network = score(net, batches, n)
                    row = dict(checkpoint=path, d=d, n=n, exact_points=exact)
                    row.update(readout_ll=round(readout, 4), network_ll=round(network, 4))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.out is not None:
        protocol = dict(tasks_per_cell=16 * args.batches, prior="BOPriorSampler(max_dim=6, "
                        "min_dim=2, pad_dim=6, short_share=0.5), seed 1000 + 10 d + n")  # fmt: skip
        args.out.write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
