"""Outcome warping: the Gaussian copula (rank) transform, or a Yeo-Johnson power transform, of
the observed outcomes.

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

The rank transform has a second price: it moves the outcomes of a smooth function by their ranks'
spacing, which makes it look rougher. On noise-free draws of the network's own prior (d = 3..6,
n = 20-40) the default network's predicted noise std is 0.06-0.15 of the outcomes' std without
the warp and 0.09-0.25 with it (README, issue 6, stop 23). ``"power"`` is the smooth
alternative: the outcomes, standardised, go through the Yeo-Johnson transform whose exponent
maximises the Gaussian likelihood (``scipy.stats.yeojohnson``; Yeo and Johnson, Biometrika 2000;
Ax's ``PowerTransformY`` uses the same family), and are standardised again. It removes skew
(three-hump camel's long tail) without moving a smooth function's neighbours apart, and a GP
draw, already about Gaussian, passes through almost unchanged (the exponent is close to 1).
Like the rank transform it is refitted to all points at every step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

WARPS = ("rank", "power")


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


def power_warp(Y: Tensor) -> Tensor:
    """The standardised Yeo-Johnson transform of each column of ``Y``, its exponent fitted by
    maximum likelihood to the standardised column.

    Args:
        Y: ``n`` or ``batch_shape x n x m`` outcomes, finite, ``n >= 1``.

    Returns:
        The same shape and dtype, mean 0 and std 1 along the ``n`` dimension (``n = 1`` or a
        constant column: zeros). Strictly increasing in each column, so ties stay ties and the
        order, hence the optimum, is unchanged; shifting or scaling a column does not change
        its result (it is standardised before the exponent is fitted).
    """
    from scipy import stats

    if Y.dim() == 0 or Y.shape[-2 if Y.dim() > 1 else -1] < 1:
        raise ValueError(f"need at least one outcome, got shape {tuple(Y.shape)}")
    if not torch.isfinite(Y).all():
        raise ValueError("power_warp needs finite outcomes (drop NaN or infinite values first)")
    axis = -2 if Y.dim() > 1 else -1
    a = np.ascontiguousarray(np.moveaxis(Y.detach().cpu().numpy().astype(np.float64), axis, -1))
    out = np.zeros(a.shape)
    res = out.reshape(-1, a.shape[-1])  # a view: out is contiguous
    for i, col in enumerate(a.reshape(-1, a.shape[-1])):
        std = col.std()
        if col.size < 2 or not std > 0:
            continue
        z = stats.yeojohnson((col - col.mean()) / std)[0]
        z_std = z.std()
        res[i] = (z - z.mean()) / z_std if z_std > 0 else 0.0
    return torch.as_tensor(np.moveaxis(out, -1, axis), dtype=Y.dtype, device=Y.device)


def warp_outcomes(Y: Tensor, warp: str | None) -> Tensor:
    """``Y`` under the named warp (``None``: unchanged); ``ValueError`` for an unknown name."""
    check_warp(warp)
    if warp is None:
        return Y
    return copula_warp(Y) if warp == "rank" else power_warp(Y)


def check_warp(warp: str | None) -> None:
    """``ValueError`` unless ``warp`` is ``None`` or one of ``WARPS``."""
    if warp is not None and warp not in WARPS:
        raise ValueError(f"unknown warp {warp!r}; choose from {list(WARPS)} or None")
