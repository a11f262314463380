"""Outcome warping: the Gaussian copula (rank) transform of the observed outcomes.

A pretrained network has only ever seen outcomes of GP draws, which in its frame look roughly
standard normal. Many objectives do not: three-hump camel spans 0 to about 2000 on its domain,
so once standardised almost every point sits in a narrow band just above the minimum and the
region that matters is invisible at the network's resolution. The copula transform replaces each
outcome by the standard-normal quantile of its rank,

    z_i = Phi^-1((r_i - 1/2) / n),    r_i the rank of y_i among the n outcomes (ties: average),

so the network always sees n evenly spread standard-normal scores, the same for every objective
up to a monotone map. The order of the points, and so the location of the optimum, is unchanged;
the acquisition then works on the warped scale (as Ax does with its outcome transforms, and as in
Salinas et al., "A quantile-based approach for hyperparameter transfer learning", ICML 2020).

The price: every new observation changes the ranks, hence the warped value, of all old ones. A
warped model is therefore rebuilt from all n points at every step (``O(n)`` per step instead of
CMANP's constant-cost update; a blocked encode costs milliseconds at the sizes of a BO run), and
the posterior is in warped units, not the objective's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

WARPS = ("rank",)


def copula_warp(Y: Tensor) -> Tensor:
    """The Gaussian copula transform of each column of ``Y``.

    Args:
        Y: ``n`` or ``batch_shape x n x m`` outcomes, finite, ``n >= 1``.

    Returns:
        The same shape and dtype: ``Phi^-1((rank - 1/2) / n)`` along the ``n`` dimension,
        average ranks for ties. Monotone in each column (ties stay ties); a single point maps to 0.
    """
    from scipy import stats

    if Y.dim() == 0 or Y.shape[-2 if Y.dim() > 1 else -1] < 1:
        raise ValueError(f"need at least one outcome, got shape {tuple(Y.shape)}")
    if not torch.isfinite(Y).all():
        raise ValueError("copula_warp needs finite outcomes (drop NaN or infinite values first)")
    axis = -2 if Y.dim() > 1 else -1
    a = Y.detach().cpu().numpy().astype(np.float64)
    n = a.shape[axis]
    z = stats.norm.ppf((stats.rankdata(a, axis=axis) - 0.5) / n)
    return torch.as_tensor(z, dtype=Y.dtype, device=Y.device)


def warp_outcomes(Y: Tensor, warp: str | None) -> Tensor:
    """``Y`` under the named warp (``None``: unchanged); ``ValueError`` for an unknown name."""
    check_warp(warp)
    return Y if warp is None else copula_warp(Y)


def check_warp(warp: str | None) -> None:
    """``ValueError`` unless ``warp`` is ``None`` or one of ``WARPS``."""
    if warp is not None and warp not in WARPS:
        raise ValueError(f"unknown warp {warp!r}; choose from {list(WARPS)} or None")
