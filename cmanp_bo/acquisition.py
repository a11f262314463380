"""Keeping the acquisition's cost bounded as a run grows.

qLogNEI's baseline is every observed point. Pruning it draws joint posterior samples over all of
them (cubic in n for any model), so the acquisition, not the model, makes a long loop's cost grow.
``best_baseline`` keeps the ``max_points`` observed points with the best posterior mean under the
acquisition's objective: the incumbent and its plausible rivals are among them, and the cost of
pruning and of every acquisition evaluation no longer depends on n.
"""

from __future__ import annotations

import torch
from botorch.acquisition.objective import MCAcquisitionObjective, PosteriorTransform
from botorch.models.model import Model
from torch import Tensor

DEFAULT_MAX_BASELINE = 256


def best_baseline(
    model: Model,
    X: Tensor,
    max_points: int = DEFAULT_MAX_BASELINE,
    objective: MCAcquisitionObjective | None = None,
    posterior_transform: PosteriorTransform | None = None,
    chunk: int = 256,
) -> Tensor:
    """The ``max_points`` rows of ``X`` with the highest objective of the posterior mean.

    Args:
        model: the acquisition's model.
        X: ``n x d`` observed points (returned unchanged when ``n <= max_points``).
        max_points: how many to keep.
        objective: the acquisition's MC objective, applied to the mean as to one sample.
        posterior_transform: the acquisition's posterior transform.
        chunk: points per marginal posterior call (memory stays O(chunk)).

    Returns:
        ``min(n, max_points) x d``, in their original order.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    if X.dim() != 2:
        raise ValueError(f"X must be n x d, got shape {tuple(X.shape)}")
    if X.shape[0] <= max_points:
        return X
    values = []
    with torch.no_grad():
        for start in range(0, X.shape[0], chunk):
            Xc = X[start : start + chunk].unsqueeze(-2)  # marginals: chunk x 1 x d
            mean = model.posterior(Xc, posterior_transform=posterior_transform).mean
            if objective is not None:
                value = objective(mean.unsqueeze(0), X=Xc).reshape(-1)
            else:
                value = mean.reshape(-1) if mean.shape[-1] == 1 else mean.sum(-1).reshape(-1)
            values.append(value)
    keep = torch.cat(values).topk(max_points).indices.sort().values
    return X[keep]
