"""Does a BO checkpoint's predictive mean track the truth? A quick diagnostic per (d, n).

For held-out tasks of the BO prior (seed 777), the median over tasks of the correlation between
the predicted mean and the observed targets (64 per task), the RMSE (targets are in the context's
frame, std ~ 1) and the median predicted std. A useful surrogate has correlation near 1 once n is
a few dozen points; 0 means the mean ignores x.

    python experiments/mean_correlation.py [--checkpoint default|bo-default|PATH] [--tasks 64]

``default`` (the default) scores, per d, the shipped checkpoint ``CMANPModel`` uses for that d.

Writes experiments/results/mean_correlation.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cmanp_bo.botorch_model import resolve_network
from cmanp_bo.pretrained import default_bo_name
from cmanp_bo.priors.bo import BOPriorSampler

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default="default")
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--dims", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--out", default=str(RESULTS / "mean_correlation.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    nets = {d: resolve_network(args.checkpoint, d, cpu).float().for_task_dim(d) for d in args.dims}
    # the tasks do not depend on the padding width: every network sees the same functions
    sampler = BOPriorSampler(seed=777, max_dim=max(args.dims))
    pad = lambda x, net: torch.nn.functional.pad(x[..., :d], (0, net.cfg.dim_x - d))  # noqa: E731
    rows = []
    print(
        "| d | n | median corr(mean, y) | RMSE | median predicted std | context std ratio "
        "(true noise) |\n|---|---|---|---|---|---|"
    )
    for d in args.dims:
        for n in args.sizes:
            b = sampler.sample(args.tasks, dim=d, num_context=n)
            net = nets[d]
            with torch.no_grad():
                state = net.encode(pad(b.xc, net), b.yc)
                pred = net.predict(state, pad(b.xt, net))
                at_context = net.predict(state, pad(b.xc, net))  # its own observations
            mean, y = pred.mean[..., 0], b.yt[..., 0]
            spread = b.yc[..., 0].std(-1)  # per task: the context's std
            corr = torch.stack([torch.corrcoef(torch.stack([m, t]))[0, 1] for m, t in zip(mean, y)])
            row = {
                "checkpoint": default_bo_name(d)
                if args.checkpoint == "default"
                else args.checkpoint,
                "d": d,
                "n": n,
                "median_corr": round(corr.median().item(), 3),
                "rmse": round((mean - y).pow(2).mean().sqrt().item(), 3),
                "median_std": round(pred.stddev.median().item(), 3),
                # predictive std at the context points / the context's std, against the
                # true noise std / the context's std (what an exact posterior approaches)
                "context_std_ratio": round(
                    (at_context.stddev[..., 0].median(-1).values / spread).median().item(),
                    3,
                ),
                "true_noise_ratio": round((b.noise_std / spread.double()).median().item(), 3),
            }
            rows.append(row)
            print(
                f"| {d} | {n} | {row['median_corr']} | {row['rmse']} | {row['median_std']} | "
                f"{row['context_std_ratio']} ({row['true_noise_ratio']}) |"
            )
    Path(args.out).write_text(
        json.dumps({"checkpoint": args.checkpoint, "tasks": args.tasks, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
