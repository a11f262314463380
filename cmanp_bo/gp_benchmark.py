"""The paper's 1-D GP meta-regression benchmark (mean target log-likelihood per point).

Every model is scored on the same fixed, seeded evaluation set; the exact GP with the true
hyperparameters is the ceiling (per-point marginals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from cmanp_bo.nn import CMANP
from cmanp_bo.priors import GPSampler, exact_gp_log_likelihood

EVAL_SEED = 20240721  # disjoint from training seeds 0.. and the held-out curve seed 10_000


@dataclass
class Score:
    mean: float
    se: float
    tasks: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} +- {self.se:.3f}"


def _score(values: list[torch.Tensor]) -> Score:
    v = torch.cat(values).double()
    return Score(v.mean().item(), (v.std() / math.sqrt(len(v))).item(), len(v))


def evaluate_models(
    models: dict[str, CMANP],
    kernels: tuple[str, ...] = ("rbf", "matern"),
    batches: int = 3000,
    batch_size: int = 16,
    seed: int = EVAL_SEED,
    progress: bool = True,
) -> dict[str, dict[str, Score]]:
    """Score ``models`` (name -> network) on ``batches x batch_size`` tasks per kernel.

    A network with a joint head contributes two rows: ``NAME (joint)`` (joint LL per target,
    all targets of a task as one block) and ``NAME (marginal)``.

    Returns:
        ``{row name: {kernel: Score}}`` including ``"Exact GP, true hyperparameters"``.
    """
    results: dict[str, dict[str, Score]] = {}
    for kernel in kernels:
        sampler = GPSampler(kernel, seed=seed)
        values: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for _ in tqdm(
                range(batches), desc=f"GP benchmark {kernel}", disable=not progress, mininterval=2
            ):
                batch = sampler.sample(batch_size)
                values.setdefault("Exact GP, true hyperparameters", []).append(
                    exact_gp_log_likelihood(kernel, batch)
                )
                for name, net in models.items():
                    xc, yc, xt, yt = (
                        t.to(net.dtype) for t in (batch.xc, batch.yc, batch.xt, batch.yt)
                    )
                    state = net.encode(xc, yc)
                    if net.cfg.joint_head:
                        values.setdefault(f"{name} (joint)", []).append(
                            net.joint_log_likelihood(state, xt, yt)
                        )
                        values.setdefault(f"{name} (marginal)", []).append(
                            net.log_likelihood(state, xt, yt)
                        )
                    else:
                        values.setdefault(name, []).append(net.log_likelihood(state, xt, yt))
        for row, vals in values.items():
            results.setdefault(row, {})[kernel] = _score(vals)
    return results


PAPER = {
    "CMANP (paper Table 4)": {"rbf": "1.24 +- 0.01", "matern": "0.80 +- 0.01"},
    "CMANP-AND (paper Table 4, joint)": {"rbf": "1.48 +- 0.03", "matern": "0.96 +- 0.01"},
}


def markdown_table(results: dict[str, dict[str, Score]], with_paper: bool = True) -> str:
    kernels = list(next(iter(results.values())).keys())
    names = {"rbf": "RBF", "matern": "Matern-5/2", "periodic": "Periodic"}
    lines = [
        "| target LL (higher is better) | " + " | ".join(names[k] for k in kernels) + " |",
        "|---|" + "---|" * len(kernels),
    ]
    for row, scores in results.items():
        lines.append(f"| {row} | " + " | ".join(str(scores[k]) for k in kernels) + " |")
    if with_paper:
        for row, scores in PAPER.items():
            lines.append(f"| {row} | " + " | ".join(scores.get(k, "-") for k in kernels) + " |")
    tasks = next(iter(next(iter(results.values())).values())).tasks
    lines.append(
        f"\n{tasks} evaluation tasks per kernel (seed {EVAL_SEED}); +- is the standard "
        "error over tasks."
    )
    return "\n".join(lines)
